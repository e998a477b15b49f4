"""Published head sets in and out: Wu et al.'s / HeadKV's JSON, DuoAttention's TSV, QRHead's strings.

Files are written by hand here in each method's own layout (tiny-llama: 2 layers, 4 query heads
on 2 KV heads, so KV head g serves query heads 2g and 2g + 1), and every expected set and value
is computed beside the reader, not by it.
"""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from scipy import stats

import headscope as hs
from headscope.cli import main
from headscope.compare import LoadedHeads, detect_format, load_heads, qrhead_string, write_duo_tsv
from headscope.errors import ConfigError, HeadIndexError, ModelMismatchError


@pytest.fixture(scope="module")
def info():
    info = hs.model_info(hs.load_model("tiny-llama"))
    assert (info.n_layers, info.n_heads, info.n_kv_heads) == (2, 4, 2)
    return info


def _wu_file(path, data):
    path.write_text(json.dumps(data))
    return path


# Per-sample lists whose mean ranks the heads differently from their max, first or last value, so a
# reader that ranked by any of those would fail the ranking test.
WU = {
    "0-0": [0.0, 0.9, 0.0],  # mean 0.3, max 0.9
    "0-1": [0.5, 0.5, 0.5],  # mean 0.5
    "0-2": [0.05, 0.05, 0.05],
    "0-3": [0.4, 0.0, 0.4],  # mean 0.2667, last 0.4
    "1-0": [0.8, 0.6, 0.7],  # mean 0.7
    "1-1": [0.0, 0.0, 0.0],
    "1-2": [0.2, 0.2, 0.1],  # mean 0.1666...
    "1-3": [0.6, 0.0, 0.0],  # mean 0.2, first 0.6
}


# -- Wu et al. and HeadKV ------------------------------------------------------------------------


def test_wu_scores_are_the_mean_of_each_list_and_rank_heads_as_wu_does(tmp_path, info):
    loaded = load_heads(_wu_file(tmp_path / "llama.json", WU), info)
    assert loaded.format == "wu" and loaded.kv_scores is None
    for key, values in WU.items():
        layer, head = map(int, key.split("-"))
        assert loaded.scores[layer, head].item() == pytest.approx(statistics.fmean(values), rel=1e-12, abs=1e-15)
    # Wu's README: sorted(items, key=np.mean, reverse=True); every mean here is distinct
    by_mean = sorted(WU, key=lambda k: (-statistics.fmean(WU[k]), k))
    assert [f"{h.layer}-{h.head}" for h in load_heads(tmp_path / "llama.json", info, top_k=8).ranked] == by_mean
    # default set: Wu's retrieval heads, mean score above 0.1
    assert loaded.heads.labels == ("L0H0", "L0H1", "L0H3", "L1H0", "L1H2", "L1H3")
    assert loaded.ranked[:2] == ((1, 0), (0, 1))


def test_headkv_files_with_single_numbers_load_and_keep_their_name(tmp_path, info):
    data = {f"{layer}-{head}": 0.1 * (layer * 4 + head) for layer in range(2) for head in range(4)}
    loaded = load_heads(_wu_file(tmp_path / "head_score.json", data), info, format="headkv", threshold=0.45)
    assert loaded.format == "headkv"
    assert torch.equal(
        loaded.scores, torch.tensor([[0.1 * i for i in range(j, j + 4)] for j in (0, 4)], dtype=torch.float64)
    )
    assert loaded.heads.labels == ("L1H1", "L1H2", "L1H3")  # 0.5, 0.6, 0.7 (0.4 is not above 0.45)


def test_wu_files_say_their_own_shape_and_headscope_scores_load_too(tmp_path, info):
    assert load_heads(_wu_file(tmp_path / "w.json", WU)).shape == (2, 4)
    scores = hs.RetrievalScores(torch.tensor([[3.0, 0.0, 0.6, 0.3]] * 2, dtype=torch.float64), 3, 4, "m", "x")
    loaded = load_heads(scores.save(tmp_path / "scores.json"), info)
    assert loaded.format == "headscope" and torch.equal(loaded.scores, scores.scores)
    assert loaded.heads.labels == ("L0H0", "L0H2", "L1H0", "L1H2")  # 1.0 and 0.2 are above 0.1; 0.1 is not


def test_wu_json_written_by_retrieval_scores_reads_back_to_the_same_scores(tmp_path, info):
    per = torch.rand(5, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    scores = hs.RetrievalScores(per.sum(0), 5, 7, "m", "x", per_sample=per)
    loaded = load_heads(scores.to_wu_json(tmp_path / "wu.json"), info)
    torch.testing.assert_close(loaded.scores, per.mean(0), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ({**WU, "31-7": [1.0]}, HeadIndexError, ["llama.json", "outside a 2x4 model", "L31H7", "another model"]),
        ({k: v for k, v in WU.items() if k != "1-3"}, ConfigError, ["llama.json", "7 of the 8 heads", "L1H3"]),
        ({**WU, "0-1": "high"}, ConfigError, ["llama.json", "'0-1'", "not numbers"]),
        ({**WU, "0-1": []}, ConfigError, ["llama.json", "'0-1'", "non-empty lists"]),
        ({**WU, "zero-one": [0.1]}, ConfigError, ["llama.json", "'zero-one'", "'layer-head' pairs"]),
        ([0.1, 0.2], ConfigError, ["llama.json", "non-empty JSON object"]),
    ],
    ids=["out-of-range", "missing-head", "text-value", "empty-list", "bad-key", "not-an-object"],
)
def test_bad_wu_files_name_the_file_and_what_was_expected(tmp_path, info, data, error, words):
    path = _wu_file(tmp_path / "llama.json", data)
    with pytest.raises(error) as raised:
        load_heads(path, info, format="wu")
    assert all(w in str(raised.value) for w in words), str(raised.value)


def test_a_file_of_another_model_shape_is_refused(tmp_path, info):
    other = {f"{layer}-{head}": [0.5] for layer in range(2) for head in range(3)}  # a 2x3 model's file
    with pytest.raises(ConfigError, match=r"small\.json scores 6 of the 8 heads of a 2x4 model; missing L0H3"):
        load_heads(_wu_file(tmp_path / "small.json", other), info)
    scores = hs.RetrievalScores(torch.zeros(3, 4, dtype=torch.float64), 1, 1, "m", "x")
    with pytest.raises(ConfigError, match=r"scores\.json scores a 3x4 model .* the model is 2x4"):
        load_heads(scores.save(tmp_path / "scores.json"), info)


# -- DuoAttention -----------------------------------------------------------------------------------


def test_duo_values_map_to_every_query_head_of_their_kv_group(tmp_path, info):
    path = tmp_path / "full_attention_heads.tsv"
    path.write_text("9.0e-01\t2.0e-01\n4.5e-01\t5.0e-01\n")  # as np.savetxt(..., delimiter="\t") writes
    loaded = load_heads(path, info)
    assert loaded.format == "duo" and torch.equal(
        loaded.kv_scores, torch.tensor([[0.9, 0.2], [0.45, 0.5]], dtype=torch.float64)
    )
    assert torch.equal(loaded.scores, torch.tensor([[0.9, 0.9, 0.2, 0.2], [0.45, 0.45, 0.5, 0.5]], dtype=torch.float64))
    # DuoAttention keeps a KV head full at or above 0.5: KV 0 of layer 0 (query heads 0, 1) and KV 1 of layer 1
    assert loaded.heads.labels == ("L0H0", "L0H1", "L1H2", "L1H3")
    assert load_heads(path, info, top_k=1).heads.labels == ("L0H0", "L0H1")  # top_k counts KV heads
    assert load_heads(path, info, fraction=0.75).heads.labels == ("L0H0", "L0H1", "L1H0", "L1H1", "L1H2", "L1H3")


def test_duo_folders_load_and_values_outside_0_1_are_clipped_as_duo_does(tmp_path, info):
    folder = tmp_path / "lr=0.02-reg=0.05"
    folder.mkdir()
    (folder / "full_attention_heads.tsv").write_text("1.3\t-0.2\n0.5\t0.7\n")
    (folder / "config.json").write_text(json.dumps({"sink_size": 64, "recent_size": 256}))
    loaded = load_heads(folder, info)
    assert loaded.source.endswith("full_attention_heads.tsv") and detect_format(folder) == "duo"
    assert loaded.kv_scores.tolist() == [[1.0, 0.0], [0.5, 0.7]]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0.1\t0.2\n0.3\t0.4\n0.5\t0.6\n", ["3 rows (layers)", "2 layers"]),
        ("0.1\t0.2\t0.3\t0.4\n0.1\t0.2\t0.3\t0.4\n", ["4 columns", "one per query head", "2 KV heads"]),
        ("0.1\t0.2\n0.3\n", ["line 2 has 1 values", "line 1 2"]),
        ("0.1\t0.2\n0.3\tfull\n", ["line 2 is not numbers", "'0.3\\tfull'"]),
        ("0.1\tnan\n0.3\t0.4\n", ["NaN"]),
        ("\n\n", ["is empty"]),
    ],
    ids=["rows", "query-head-columns", "ragged", "text", "nan", "empty"],
)
def test_bad_duo_files_name_the_file_and_what_was_expected(tmp_path, info, text, words):
    path = tmp_path / "pattern.tsv"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_heads(path, info)
    assert "pattern.tsv" in str(raised.value) and all(w in str(raised.value) for w in words), str(raised.value)


def test_duo_needs_the_model_to_know_how_many_query_heads_share_a_kv_head(tmp_path, info):
    path = tmp_path / "d.tsv"
    path.write_text("1\t0\n0\t1\n")
    with pytest.raises(ConfigError, match=r"d\.tsv holds one value per layer and KV head.*pass the model"):
        load_heads(path)
    assert load_heads(path, (2, 4)).heads == load_heads(path, info).heads  # n_kv from the columns (4 / 2)
    assert load_heads(path, hs.load_model("tiny-llama")).heads == load_heads(path, info).heads


# -- QRHead -----------------------------------------------------------------------------------------


def test_qrhead_strings_and_configs_keep_their_order(tmp_path, info):
    loaded = load_heads("1-3,0-0,1-1,0-0,", info)  # a repeated head keeps its first place; a trailing comma is fine
    assert loaded.format == "qrhead" and loaded.scores is None
    assert loaded.ranked == ((1, 3), (0, 0), (1, 1)) and loaded.heads.labels == ("L0H0", "L1H1", "L1H3")
    config = tmp_path / "Tiny_qr_head_NQ.yaml"
    config.write_text('# Default configuration\n\nattn_head_set: "1-2,0-3" # top2\nmodel_base_class: "Tiny"\n')
    assert load_heads(config, info).ranked == ((1, 2), (0, 3))
    assert load_heads("full_heads", info).heads.labels == tuple(info.head_labels())
    assert load_heads("1-3,0-0,1-1", info, top_k=2).ranked == ((1, 3), (0, 0))


@pytest.mark.parametrize(
    ("source", "kwargs", "error", "words"),
    [
        ("1-3,2-0,0-4", {}, HeadIndexError, ["QRHead string '1-3,2-0,0-4'", "outside a 2x4 model", "2-0, 0-4"]),
        ("1-3,13-,0-0", {}, ConfigError, ["['13-']", "'layer-head' pairs"]),
        ("1-3,0-0", {"threshold": 0.1}, ConfigError, ["without scores", "top_k="]),
        ("1-3,0-0", {"model": None}, ConfigError, ["without the model's shape"]),
        ("results/nowhere.tsv", {}, FileNotFoundError, ["'results/nowhere.tsv'", "not a QRHead"]),
    ],
    ids=["out-of-range", "malformed", "threshold", "no-model", "missing-file"],
)
def test_bad_qrhead_input_is_a_clear_error(info, source, kwargs, error, words):
    model = kwargs.pop("model", info)
    with pytest.raises(error) as raised:
        load_heads(source, model, **kwargs)
    assert all(w in str(raised.value) for w in words), str(raised.value)


def test_unknown_format_and_non_text_files_are_refused(tmp_path, info):
    with pytest.raises(ConfigError, match="format must be one of"):
        load_heads("1-0", info, format="razor")
    binary = tmp_path / "heads.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ConfigError, match=r"heads\.bin is not a head file: it is not UTF-8"):
        load_heads(binary, info)
    prose = tmp_path / "notes.txt"
    prose.write_text("retrieval heads: L1H2, L3H4")  # text of no format: every format is named, not Duo's alone
    with pytest.raises(ConfigError) as raised:
        load_heads(prose, info)
    assert all(w in str(raised.value) for w in ("notes.txt", "RetrievalScores", "DuoAttention", "QRHead"))
    numbers = tmp_path / "duo.txt"
    numbers.write_text("0.9 0.1\n0.0 0.6\n")  # rows of numbers without the .tsv suffix still read as Duo's
    assert load_heads(numbers, info).format == "duo"


# -- exports round-trip -----------------------------------------------------------------------------


def _scores(grid):
    return hs.RetrievalScores(torch.tensor(grid, dtype=torch.float64), 1, 1, "tiny", "teacher_forced")


# One strong head in KV group 0 of layer 0 against two medium heads in group 1: max and mean disagree.
GRID = [[0.9, 0.0, 0.5, 0.5], [0.1, 0.2, 0.3, 0.05]]


def test_duo_export_of_scores_pools_by_max_and_reads_back_exactly(tmp_path, info):
    path = write_duo_tsv(_scores(GRID), info, tmp_path / "full_attention_heads.tsv")
    loaded = load_heads(path, info)
    by_hand = torch.tensor([[max(r[0], r[1]), max(r[2], r[3])] for r in GRID], dtype=torch.float64)
    assert torch.equal(loaded.kv_scores, by_hand)  # %.18e keeps every bit
    assert write_duo_tsv(loaded, info, tmp_path / "again.tsv").read_text() == path.read_text()
    mean = load_heads(write_duo_tsv(_scores(GRID), info, tmp_path / "mean.tsv", pool="mean"), info)
    by_mean = torch.tensor([[(r[0] + r[1]) / 2, (r[2] + r[3]) / 2] for r in GRID], dtype=torch.float64)
    assert torch.equal(mean.kv_scores, by_mean)


def test_duo_export_with_a_cut_keeps_the_best_kv_heads_full(tmp_path, info):
    half = load_heads(write_duo_tsv(_scores(GRID), info, tmp_path / "half.tsv", fraction=0.25), info)
    assert half.kv_scores.tolist() == [[1.0, 0.0], [0.0, 0.0]] and half.heads.labels == ("L0H0", "L0H1")
    by_mean = load_heads(write_duo_tsv(_scores(GRID), info, tmp_path / "m.tsv", fraction=0.25, pool="mean"), info)
    assert by_mean.heads.labels == ("L0H2", "L0H3")  # the two 0.5 heads outrank the lone 0.9 on average
    top = load_heads(write_duo_tsv(_scores(GRID), info, tmp_path / "t.tsv", threshold=0.3), info)
    assert top.heads.labels == ("L0H0", "L0H1", "L0H2", "L0H3", "L1H2", "L1H3")  # pooled 0.9, 0.5, 0.3 (at or above)


def test_duo_export_of_a_head_set_round_trips_and_widens_to_whole_groups(tmp_path, info):
    closed = hs.HeadSet.of(["L0H2", "L0H3", "L1H0", "L1H1"], info)
    assert load_heads(write_duo_tsv(closed, info, tmp_path / "a.tsv"), info).heads == closed
    partial = hs.HeadSet.of(["L0H3", "L1H0"], info)  # one query head of each group
    widened = load_heads(write_duo_tsv(partial, info, tmp_path / "b.tsv"), info).heads
    assert widened == closed and set(partial) <= set(widened)


def test_qrhead_export_round_trips_order_and_set(info):
    grid = torch.tensor(GRID, dtype=torch.float64)
    text = qrhead_string(_scores(GRID), top_k=5)
    flat = sorted(((-v, (l_, h)) for (l_, h), v in np.ndenumerate(np.array(GRID))))
    assert text == ",".join(f"{l_}-{h}" for _, (l_, h) in flat[:5]) == "0-0,0-2,0-3,1-2,1-1"
    loaded = load_heads(text, info)
    assert loaded.ranked == tuple(h for _, h in flat[:5]) and qrhead_string(loaded) == text
    assert qrhead_string(grid, threshold=0.25) == "0-0,0-2,0-3,1-2"
    assert qrhead_string(hs.HeadSet.of(["L1H0", "L0H1"], info)) == "0-1,1-0"  # a HeadSet is sorted


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda info, p: write_duo_tsv(_scores([[2.0, 0, 0, 0], [0] * 4]), info, p), ["[0, 2]", "top_k="]),
        (lambda info, p: write_duo_tsv(_scores([[np.nan] * 4] * 2), info, p), ["NaN"]),
        (lambda info, p: write_duo_tsv(["L0H1"], info, p, top_k=1), ["heads are written as they are"]),
        (lambda info, p: write_duo_tsv(_scores([[0.1] * 4] * 3), info, p), ["3x4", "2x4"]),
        (lambda info, p: write_duo_tsv(["L0H1"], (2, 4), p), ["KV heads"]),
        (lambda info, p: qrhead_string(_scores(GRID)), ["lists heads, not scores", "top_k="]),
        (lambda info, p: qrhead_string(["L0H1"], top_k=1), ["these heads have none"]),
        (lambda info, p: qrhead_string(_scores(GRID), top_k=1, fraction=0.5), ["one of top_k=", "fraction"]),
    ],
    ids=["outside-0-1", "nan", "cut-heads", "shape", "no-kv", "qr-no-cut", "qr-cut-heads", "two-cuts"],
)
def test_bad_exports_are_clear_errors(tmp_path, info, call, words):
    with pytest.raises(ConfigError) as raised:
        call(info, tmp_path / "x.tsv")
    assert all(w in str(raised.value) for w in words), str(raised.value)


# -- compare across formats -------------------------------------------------------------------------


def test_recall_and_jaccard_take_loaded_sets_of_any_format(tmp_path, info):
    qr = load_heads("1-0,0-1,1-3", info)
    duo_path = tmp_path / "d.tsv"
    duo_path.write_text("1\t0\n0\t1\n")
    duo = load_heads(duo_path, info)  # L0H0, L0H1, L1H2, L1H3
    detected = hs.HeadSet.of(["L0H1", "L1H3", "L0H2", "L1H1"], info)
    assert hs.recall(qr, detected) == pytest.approx(2 / 3)  # L0H1 and L1H3 of the three listed
    assert hs.recall(detected, qr) == pytest.approx(2 / 4)
    assert hs.jaccard(qr, duo) == pytest.approx(2 / 5)  # {L0H1, L1H3} of {L0H0, L0H1, L1H0, L1H2, L1H3}
    assert (detected & duo).labels == ("L0H1", "L1H3")
    with pytest.raises(ModelMismatchError):
        hs.recall(qr, hs.HeadSet([(0, 1)], (3, 4)))


def test_rank_correlation_reads_loaded_grids_and_detected_scores(tmp_path, info):
    duo_path = tmp_path / "d.tsv"
    duo_path.write_text("0.9\t0.1\n0.3\t0.6\n")
    duo, detected = load_heads(duo_path, info), _scores(GRID)
    agreement = hs.rank_correlation(duo, detected, top_k=3)
    expected = stats.spearmanr([0.9, 0.9, 0.1, 0.1, 0.3, 0.3, 0.6, 0.6], np.array(GRID).ravel()).statistic
    assert agreement.spearman == pytest.approx(expected, rel=1e-12)
    assert agreement.top_a == ((0, 0), (0, 1), (1, 2)) and hs.head_set(duo, top_k=2) == [(0, 0), (0, 1)]
    with pytest.raises(ConfigError, match=r"qrhead head list .* without scores; compare it as a set"):
        hs.rank_correlation(load_heads("1-0,0-1,1-3", info), detected)


def test_loaded_heads_save_load_and_frame(tmp_path, info):
    duo_path = tmp_path / "d.tsv"
    duo_path.write_text("0.9\t0.1\n0.3\t0.6\n")
    for loaded in (load_heads(duo_path, info), load_heads("1-3,0-0", info)):
        back = LoadedHeads.load(loaded.save(tmp_path / "loaded.json"))
        assert (back.format, back.source, back.shape, back.ranked, back.rule) == (
            loaded.format, loaded.source, loaded.shape, loaded.ranked, loaded.rule,
        )  # fmt: skip
        for a, b in ((back.scores, loaded.scores), (back.kv_scores, loaded.kv_scores)):
            assert (a is None and b is None) or torch.equal(a, b)
        frame = loaded.to_frame()
        assert list(frame.columns) == ["layer", "head", "label", "value", "selected"]
        assert frame.loc[frame["selected"], "label"].tolist() == list(loaded.heads.labels)


# -- command line -----------------------------------------------------------------------------------


def test_cli_compares_a_duo_file_with_a_qrhead_string_and_a_wu_file(tmp_path, capsys):
    duo_path = tmp_path / "full_attention_heads.tsv"
    duo_path.write_text("1\t0\n0\t1\n")  # L0H0, L0H1, L1H2, L1H3
    out = tmp_path / "o"
    assert (
        main(["compare", str(duo_path), "1-3,0-2,0-0", "--model", "tiny-llama", "--top-k", "4", "--out", str(out)]) == 0
    )
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["formats"] == ["duo", "qrhead"] and summary["spearman"] is None
    assert summary["shared_heads"] == ["L0H0", "L1H3"] and summary["recall"] == pytest.approx(2 / 4)
    assert "spearman: n/a" in capsys.readouterr().out
    wu = _wu_file(tmp_path / "wu.json", WU)  # says its shape, so the string needs no --model
    assert main(["compare", str(wu), "1-0,0-1", "--top-k", "2", "--out", str(out)]) == 0
    assert json.loads((out / "comparison.json").read_text())["recall"] == 1.0  # Wu's top 2: L1H0, L0H1
    assert main(["compare", str(duo_path), "1-0", "--out", str(out)]) == 2
    assert "pass --model" in capsys.readouterr().err
