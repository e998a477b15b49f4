"""HTML reports: structure, one copy of each JavaScript bundle, tables, the retrieval run's sections
in order with their captions, and a real browser render that checks each figure's own region."""

from __future__ import annotations

import html
import importlib.util
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

import headscope as hs
from headscope.ablation import KnockoutCurve
from headscope.cli import main
from headscope.heads import Head
from headscope.models import tiny_tokenizer
from headscope.retrieval import SuccessLog, detect_retrieval_heads, record_attention
from headscope.tasks import needle_grid
from headscope.viz import attention_window, head_map, html_report, retrieval_report, save_report, top_heads_bar

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "wbr", "area", "base", "embed", "track"}


class _TagChecker(HTMLParser):
    """Records every element that is closed out of order or never closed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _tag_errors(page: str) -> list[str]:
    checker = _TagChecker()
    checker.feed(page)
    checker.close()
    return checker.errors + [f"<{tag}> never closed" for tag in checker.stack]


def _view(n_tokens: int = 12):
    """A view with a sharp pattern: each token attends to its predecessor (strong colour in the cells)."""
    pattern = torch.zeros(2, n_tokens, n_tokens)
    for q in range(n_tokens):
        pattern[:, q, max(q - 1, 0)] = 1.0
    return attention_window(pattern, [f"w{i}" for i in range(n_tokens)], (0, n_tokens), [n_tokens - 1])


def test_report_is_well_formed_html_with_one_copy_of_each_bundle():
    frame = pd.DataFrame({"layer": [0, 1], "head": [2, 3], "value": [0.25, 0.75]})
    sections = [
        ("map", head_map(torch.rand(3, 4))),
        ("bar", top_heads_bar(torch.rand(3, 4), 5)),
        ("view one", _view()),
        ("table", frame),
        ("view two", _view()),
        ("note", "<p>hand-written <b>HTML</b></p>"),
        ("scatter", go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))),
    ]
    page = html_report("Retrieval heads <of> SmolLM2", sections)
    assert page.startswith("<!DOCTYPE html>")
    assert _tag_errors(page) == []
    assert len(re.findall(r"\* plotly\.js v\d", page)) == 1  # plotly.js inlined once for three figures
    assert page.count("var CircuitsVis=") == 1  # circuitsvis's bundle once for two views
    assert page.count('class="plotly-graph-div"') == 3
    assert page.count("CircuitsVis.render(") == 2
    assert not re.search(r"<script[^>]*\ssrc=", page)  # nothing to fetch: the file works offline
    assert "<title>Retrieval heads &lt;of&gt; SmolLM2</title>" in page
    assert [h for h in re.findall(r"<h2>(.*?)</h2>", page)] == [h for h, _ in sections]
    assert page.index("var CircuitsVis=") < page.index("CircuitsVis.render(")
    assert "<p>hand-written <b>HTML</b></p>" in page


def test_report_shows_frames_as_tables_truncated_to_max_rows():
    frame = pd.DataFrame({"label": [f"L0H{i}" for i in range(50)], "value": np.linspace(0, 1, 50)})
    page = html_report("t", [("scores", frame)], max_rows=10)
    table = re.search(r"<table.*?</table>", page, re.S).group(0)
    assert "L0H0" in table and "L0H49" in table and "L0H20" not in table
    assert len(re.findall(r"<tr[\s>]", table)) == 1 + 10 + 1  # header, 10 rows, the "..." row
    full = html_report("t", [("scores", frame)])
    assert all(f"L0H{i}<" in full for i in range(50))


def test_report_embeds_circuitsvis_objects_without_their_cdn_script():
    import circuitsvis

    rendered = circuitsvis.attention.attention_heads(torch.rand(1, 3, 3), ["a", "b", "c"])
    page = html_report("cv", [("circuitsvis", rendered)])
    assert "unpkg.com" not in page
    assert "CircuitsVis.render" in page


def test_report_names_every_section_it_cannot_show():
    with pytest.raises(TypeError, match=r"section 1 \('b'\): int; section 2 \('c'\): ndarray"):
        html_report("t", [("a", "<p>ok</p>"), ("b", 3), ("c", np.ones(2))])


def test_save_report_writes_the_page(tmp_path):
    path = save_report(tmp_path / "report.html", "saved", [("map", head_map(torch.rand(2, 2)))])
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<h1>saved</h1>" in text


def _render_check():
    path = Path(__file__).resolve().parents[1] / "scripts" / "render_check.py"
    spec = importlib.util.spec_from_file_location("render_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hue_pixels(image: np.ndarray, hue: str) -> int:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    if hue == "green":  # plotly's Greens colour scale
        return int(((g - r > 40) & (g - b > 40)).sum())
    return int(((b > 200) & (r < 90) & (g < 90)).sum())  # circuitsvis's saturated blue cells


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_report_draws_figure_and_attention_view_in_chromium(tmp_path):
    rc = _render_check()
    grid = torch.linspace(0, 1, 6 * 8).reshape(6, 8)
    page = html_report("render check", [("view", _view()), ("map", head_map(grid, colorscale="Greens"))])
    drawn = tmp_path / "drawn.html"
    drawn.write_text(page, encoding="utf-8")
    # The same page with its scripts emptied: headings and text only. The check must tell them apart.
    inert = tmp_path / "inert.html"
    inert.write_text(re.sub(r"<script>.*?</script>", "<script></script>", page, flags=re.S), encoding="utf-8")
    shots = {}
    for page_file in (drawn, inert):
        png = rc.screenshot(page_file, tmp_path / f"{page_file.stem}.png", size=(1000, 2200), budget_ms=5000)
        shots[page_file.stem] = rc.read_png(png)
    assert shots["drawn"].shape == (2200, 1000, 3) or shots["drawn"].shape == (2200, 1000, 4)
    # The attention view: 12 sharp cells in the zoomed heatmap, each hundreds of blue pixels.
    assert _hue_pixels(shots["drawn"], "blue") > 5000
    # The heatmap: a green colour scale over a large plot area.
    assert _hue_pixels(shots["drawn"], "green") > 20000
    assert _hue_pixels(shots["inert"], "blue") < 5000 and _hue_pixels(shots["inert"], "green") < 20000
    assert rc.ink_fraction(shots["inert"]) < rc.ink_fraction(shots["drawn"])


def _answered_early(sample, output: str) -> bool:
    """A success rule with known verdicts: needles at depth 0 or 50 count, at depth 100 not."""
    return sample.meta["depth"] < 100


@pytest.fixture(scope="module")
def run():
    """A small detection run on tiny-llama with every result the report shows."""
    model = hs.load_model("tiny-llama")
    samples = needle_grid(tiny_tokenizer(), [120, 240], [0, 50, 100], needle="symbolic", haystack="symbolic")
    log = SuccessLog(_answered_early)
    scores = detect_retrieval_heads(model, samples, success=log, require_prediction=False, progress=False)
    attention = record_attention(model, samples[1], [h for h, _ in scores.top(3)], window=4)
    knockout = KnockoutCurve(
        ks=(1, 2), top=(0.5, 0.25), random=((0.9, 0.8), (1.0, 0.7)), baseline=1.0, seeds=(0, 1),
        ranking=(Head(0, 0), Head(1, 1)),
        random_sets=(((Head(0, 1),), (Head(0, 2), Head(1, 3))), ((Head(1, 2),), (Head(0, 3), Head(1, 0)))),
        exclude_top=2, mode="uniform", n_samples=6, model="tiny-llama",
    )  # fmt: skip
    return dict(model=model, samples=samples, log=log, scores=scores, attention=attention, knockout=knockout)


def test_success_log_records_detection_verdicts_without_changing_its_settings(run):
    frame = run["log"].to_frame()
    assert [(r.length, r.depth) for r in frame.itertuples()] == [
        (s.meta["length"], s.meta["depth"]) for s in run["samples"]
    ]
    assert frame["success"].tolist() == [s.meta["depth"] < 100 for s in run["samples"]]
    assert run["scores"].n_counted == 4 and run["scores"].n_samples == 6
    plain = detect_retrieval_heads(
        run["model"], run["samples"], success=_answered_early, require_prediction=False, progress=False
    )
    assert plain == run["scores"]  # same sums, counts and settings: the log changes nothing, so runs merge


def test_success_log_replays_the_models_own_words_before_the_answer(run):
    sample = run["samples"][0]
    value = sample.answer.strip()
    log = SuccessLog()
    for output in (f" The value is {value}.", f" {value}", " no idea"):
        log(sample, output)
    replayed = log.replay(0)
    assert replayed.prompt == sample.prompt + " The value is" and replayed.answer == sample.answer
    assert replayed.spans == sample.spans and replayed.text("needle") == [value]
    assert log.replay(1) is sample and log.replay(2) is sample  # nothing before the answer / no answer
    rows = record_attention(run["model"], replayed, [(0, 0)], window=1)
    enc = replayed.encode(tiny_tokenizer())
    assert rows.query_positions[0] == len(enc.input_ids) - 1  # the row after "The value is" predicts the answer


def test_retrieval_report_shows_the_sections_in_order_with_captions(run):
    scores, attention = run["scores"], run["attention"]
    sections = retrieval_report(
        scores, outcomes=run["log"].to_frame(), attention=attention, knockout=run["knockout"], label_top=2
    )
    assert [s.key for s in sections] == ["needle", "heads", "attention", "knockout", "table"]
    assert all(s.caption and "\n" not in s.caption for s in sections)
    captions = {s.key: s.caption for s in sections}
    assert "2 context lengths x 3 needle depths: 4 of 6 samples answered, teacher_forced mode" in captions["needle"]
    above = int((scores.scores > 0.1).sum())
    assert f"{above / 8:.1%} of heads ({above}) score above Wu et al.'s 0.1" in captions["heads"]
    assert "averaged over the 4 of 6 samples answered" in captions["heads"]
    assert f"{len(attention.positions)} of {attention.n_tokens} tokens" in captions["attention"]
    assert "mean ± std over 2 seeds" in captions["knockout"] and "(6 samples)" in captions["knockout"]
    heat = sections[0].content.data[0]
    assert heat.z.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]
    heads = sections[1].content
    assert [a.text for a in heads.layout.annotations] == [f"L{a}H{b}" for (a, b), _ in scores.top(2)]
    assert sections[2].content.heads == attention.labels
    page = html_report("run", sections)
    assert _tag_errors(page) == []
    ids = re.findall(r'<div class="figure" id="figure-(\w+)">', page)
    assert ids == ["needle", "heads", "attention", "knockout", "table"]
    assert all(f'<p class="caption">{html.escape(s.caption)}</p>' in page for s in sections)


def test_retrieval_report_leaves_out_what_the_run_lacks(run):
    sections = retrieval_report(run["scores"])
    assert [s.key for s in sections] == ["heads", "table"]
    outcomes = run["log"].to_frame().assign(length=np.nan)  # not needle samples
    assert [s.key for s in retrieval_report(run["scores"], outcomes=outcomes)] == ["heads", "table"]


def test_detect_writes_the_report_of_a_run_nothing_answered(run, tmp_path, capsys):
    out = tmp_path / "detect"
    out.mkdir()
    run["knockout"].save(out / "knockout.json")  # a knockout run written to the same folder joins the report
    args = ["detect", "--model", "tiny-llama", "--no-chat", "--needle", "symbolic", "--haystack", "symbolic"]
    args += ["--lengths", "120", "--depths", "0", "100", "--n-samples", "1", "--mode", "teacher_forced"]
    assert main([*args, "--out", str(out)]) == 1
    assert "no sample was answered" in capsys.readouterr().out
    outcomes = pd.read_csv(out / "outcomes.csv")
    assert outcomes[["length", "depth", "success"]].values.tolist() == [[120, 0.0, False], [120, 100.0, False]]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert re.findall(r'<div class="figure" id="figure-(\w+)">', page) == ["needle", "knockout", "table"]
    assert "0 of 2 samples answered" in page and not (out / "attention.json").exists()


def _without_scripts(page: str) -> str:
    return re.sub(r"<script>.*?</script>", "<script></script>", page, flags=re.S)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_retrieval_report_draws_the_heatmap_and_the_attention_view_in_their_regions(run, tmp_path):
    rc = _render_check()
    sections = retrieval_report(
        run["scores"], outcomes=run["log"].to_frame(), attention=run["attention"], knockout=run["knockout"]
    )
    drawn = save_report(tmp_path / "drawn.html", "render check", sections)
    inert = tmp_path / "inert.html"
    inert.write_text(_without_scripts(drawn.read_text(encoding="utf-8")), encoding="utf-8")
    ids = ["figure-needle", "figure-heads", "figure-attention", "figure-knockout"]
    counts = {f.stem: rc.region_pixels(f, ids, tmp_path / f"{f.stem}.png") for f in (drawn, inert)}
    print("coloured pixels per region:", {k: v["coloured"] for k, v in counts["drawn"].items()})
    for key in ids:
        area = counts["drawn"][key]["pixels"]
        assert area > 100_000, f"#{key} covers only {area} pixels"
        assert counts["inert"][key]["coloured"] < 0.002 * area  # no script, no colour: the check tells them apart
    # the heatmap's red-to-green cells and the attention view's blue cells, inside their own regions
    assert counts["drawn"]["figure-needle"]["coloured"] > 20_000
    assert counts["drawn"]["figure-attention"]["coloured"] > 5_000
    assert counts["drawn"]["figure-heads"]["coloured"] > 5_000


def test_png_reader_decodes_every_filter_type(tmp_path):
    """A PNG written here with each row under a different filter decodes to the original pixels."""
    import struct
    import zlib

    rc = _render_check()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(10, 7, 3), dtype=np.uint8)
    rows, prior = [], np.zeros(21, np.int64)
    for y in range(10):
        kind, line = y % 5, image[y].reshape(-1).astype(np.int64)
        left = np.concatenate([np.zeros(3, np.int64), line[:-3]])
        up_left = np.concatenate([np.zeros(3, np.int64), prior[:-3]])
        if kind == 4:
            pa, pb, pc = np.abs(prior - up_left), np.abs(left - up_left), np.abs(left + prior - 2 * up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, up_left))
        else:
            pred = [np.zeros(21, np.int64), left, prior, (left + prior) // 2][kind]
        rows.append(bytes([kind]) + ((line - pred) % 256).astype(np.uint8).tobytes())
        prior = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = tmp_path / "filters.png"
    header = struct.pack(">IIBBBBB", 7, 10, 8, 2, 0, 0, 0)
    png.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    np.testing.assert_array_equal(rc.read_png(png), image)
