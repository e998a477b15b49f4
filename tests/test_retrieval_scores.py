"""RetrievalScores as a value: ranking, merging, frames, figures and files (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _close import assert_close

from headscope.errors import ModelMismatchError
from headscope.retrieval import RetrievalScores, RougeRecall
from headscope.tasks import Sample


def make(per_sample: torch.Tensor, n_samples: int | None = None, **kw) -> RetrievalScores:
    args = dict(model="m", mode="teacher_forced", settings={"span": "needle"}) | kw
    n = per_sample.shape[0]
    return RetrievalScores(per_sample.sum(0), n, n if n_samples is None else n_samples, per_sample=per_sample, **args)


@pytest.fixture
def per_sample() -> torch.Tensor:
    return torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 3


def test_scores_are_means_over_counted_samples(per_sample: torch.Tensor) -> None:
    scores = make(per_sample, n_samples=9)
    assert_close(scores.scores, per_sample.mean(0), short=True)
    assert scores.n_samples == 9


def test_top_and_above_rank_heads_best_first_with_layer_major_ties() -> None:
    grid = torch.tensor([[0.2, 0.5, 0.05], [0.5, 0.0, 0.1]], dtype=torch.float64)
    scores = RetrievalScores(grid * 2, 2, 2, "m", "generation")
    assert scores.top(3) == [((0, 1), 0.5), ((1, 0), 0.5), ((0, 0), 0.2)]
    assert scores.above(0.1) == [((0, 1), 0.5), ((1, 0), 0.5), ((0, 0), 0.2)]  # 0.1 itself is not above
    assert scores.above(0.3) == [((0, 1), 0.5), ((1, 0), 0.5)]


def test_no_counted_sample_gives_nan_scores_and_no_heads() -> None:
    scores = RetrievalScores(torch.zeros(2, 2), 0, 4, "m", "generation")
    assert scores.scores.isnan().all() and scores.top(3) == [] and scores.above() == []


def test_merging_adds_sums_and_counts_and_concatenates_samples(per_sample: torch.Tensor) -> None:
    a, b = make(per_sample[:2], n_samples=3), make(per_sample[2:])
    merged = a + b
    assert merged == RetrievalScores.merge([a, b])
    assert (merged.n_counted, merged.n_samples) == (5, 6)
    assert torch.equal(merged.per_sample, per_sample)
    assert_close(merged.scores, per_sample.mean(0), short=True)


def test_merging_drops_per_sample_scores_unless_every_part_has_them(per_sample: torch.Tensor) -> None:
    a = make(per_sample[:2])
    b = RetrievalScores(per_sample[2:].sum(0), 3, 3, "m", "teacher_forced", {"span": "needle"})
    assert (a + b).per_sample is None


@pytest.mark.parametrize(
    "change",
    [{"model": "other"}, {"mode": "generation"}, {"settings": {"span": "answer"}}, {"score": "mass"}],
)
def test_scores_of_different_runs_refuse_to_merge(per_sample: torch.Tensor, change: dict) -> None:
    with pytest.raises(ModelMismatchError, match="only scores of the same model, mode, score, shape and settings"):
        _ = make(per_sample) + make(per_sample, **change)


def test_merge_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RetrievalScores.merge([])


def test_scores_round_trip_through_save_and_load_exactly(per_sample: torch.Tensor, tmp_path: Path) -> None:
    scores = make(per_sample, n_samples=7, settings={"span": "answer", "require_prediction": True})
    loaded = RetrievalScores.load(scores.save(tmp_path / "s.json"))
    assert loaded == scores
    assert torch.equal(loaded.hit_sums, scores.hit_sums) and loaded.hit_sums.dtype == torch.float64
    bare = RetrievalScores(scores.hit_sums, 5, 7, "m", "generation")
    assert RetrievalScores.load(bare.save(tmp_path / "b.json")) == bare
    empty = make(torch.zeros(0, 3, 4, dtype=torch.float64), n_samples=2)
    assert RetrievalScores.load(empty.save(tmp_path / "e.json")) == empty


def test_the_score_a_result_holds_is_saved_loaded_and_compared(per_sample: torch.Tensor, tmp_path: Path) -> None:
    mass = make(per_sample, score="mass")
    loaded = RetrievalScores.load(mass.save(tmp_path / "m.json"))
    assert loaded.score == "mass" and loaded == mass
    assert mass != make(per_sample) and "mass" in repr(mass)
    older = mass.to_dict()
    del older["score"]  # files written before scores were named hold copy scores
    assert RetrievalScores.from_dict(older).score == "copy"
    with pytest.raises(ValueError, match="score must be 'copy' or 'mass'; got 'sum'"):
        make(per_sample, score="sum")


def test_loading_another_json_file_says_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "wu.json").write_text(json.dumps({"0-0": [0.5]}))
    with pytest.raises(ValueError, match=r"not a saved RetrievalScores.*from_wu_json"):
        RetrievalScores.load(tmp_path / "wu.json")


def test_wu_format_holds_per_sample_scores_by_layer_dash_head(per_sample: torch.Tensor, tmp_path: Path) -> None:
    scores = make(per_sample)
    data = json.loads(scores.to_wu_json(tmp_path / "wu.json").read_text())
    assert len(data) == 12 and data["2-3"] == per_sample[:, 2, 3].tolist()
    back = RetrievalScores.from_wu_json(tmp_path / "wu.json", model="m")
    assert torch.equal(back.per_sample, per_sample)
    assert_close(back.scores, scores.scores, short=True)
    assert back.mode == "wu"


def test_reading_a_hand_written_wu_file(tmp_path: Path) -> None:
    wu = {"0-0": [0.0, 1.0], "0-1": [0.25, 0.25], "1-0": [0.0, 0.0], "1-1": [0.5, 0.1]}
    (tmp_path / "wu.json").write_text(json.dumps(wu))
    scores = RetrievalScores.from_wu_json(tmp_path / "wu.json")
    assert scores.shape == (2, 2) and scores.n_counted == 2
    assert scores.scores.tolist() == [[0.5, 0.25], [0.0, 0.3]]


def test_malformed_wu_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"0-0": [1.0], "0-1": [1.0, 0.0]}))
    with pytest.raises(ValueError, match="different numbers of per-sample scores"):
        RetrievalScores.from_wu_json(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"0-0": [1.0], "1-1": [1.0]}))
    with pytest.raises(ValueError, match="holds 2 heads, expected all 2x2"):
        RetrievalScores.from_wu_json(tmp_path / "b.json")


def test_writing_wu_format_needs_per_sample_scores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep_per_sample=True"):
        RetrievalScores(torch.zeros(1, 1), 1, 1, "m", "generation").to_wu_json(tmp_path / "x.json")


def test_frame_has_one_row_per_head_in_long_format(per_sample: torch.Tensor) -> None:
    scores = make(per_sample)
    frame = scores.to_frame()
    assert list(frame.columns) == ["layer", "head", "label", "value", "hit_sum", "n_counted"]
    row = frame[frame.label == "L2H1"].iloc[0]
    assert (row["layer"], row["head"]) == (2, 1) and row["value"] == pytest.approx(float(per_sample[:, 2, 1].mean()))
    assert len(frame) == 12 and (frame.n_counted == 5).all()


def test_plot_is_a_head_map_with_sample_counts_on_hover(per_sample: torch.Tensor) -> None:
    fig = make(per_sample).plot()
    heat = fig.data[0]
    assert heat.z.shape == (3, 4) and "n samples" in heat.hovertemplate
    assert {str(v) for v in heat.customdata[..., 1].flatten()} == {"5"}


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[layer, head\] grid"):
        RetrievalScores(torch.zeros(3), 1, 1, "m", "generation")
    with pytest.raises(ValueError, match="n_counted <= n_samples"):
        RetrievalScores(torch.zeros(2, 2), 3, 2, "m", "generation")
    with pytest.raises(ValueError, match=r"per_sample must be \[n_counted, layer, head\]"):
        RetrievalScores(torch.zeros(2, 2), 1, 1, "m", "generation", per_sample=torch.zeros(2, 2, 2))


def test_default_success_rule_is_rouge1_recall_above_one_half() -> None:
    rule = RougeRecall()
    sample = Sample("p", " smoked paprika and salt")
    assert rule(sample, "It is smoked paprika, with salt!")  # 3 of 4 words
    assert not rule(sample, "Paprika and pepper")  # 2 of 4: not above 0.5
    assert str(rule) == "rouge1_recall > 0.5 and the value named as a whole word"
    assert str(RougeRecall(require_value=False)) == "rouge1_recall > 0.5"
