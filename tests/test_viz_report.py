"""HTML reports: structure, one copy of each JavaScript bundle, tables, and a real browser render."""

from __future__ import annotations

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

from headscope.viz import attention_window, head_map, html_report, save_report, top_heads_bar

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
    for html in (drawn, inert):
        png = rc.screenshot(html, tmp_path / f"{html.stem}.png", size=(1000, 2200), budget_ms=5000)
        shots[html.stem] = rc.read_png(png)
    assert shots["drawn"].shape == (2200, 1000, 3) or shots["drawn"].shape == (2200, 1000, 4)
    # The attention view: 12 sharp cells in the zoomed heatmap, each hundreds of blue pixels.
    assert _hue_pixels(shots["drawn"], "blue") > 5000
    # The heatmap: a green colour scale over a large plot area.
    assert _hue_pixels(shots["drawn"], "green") > 20000
    assert _hue_pixels(shots["inert"], "blue") < 5000 and _hue_pixels(shots["inert"], "green") < 20000
    assert rc.ink_fraction(shots["inert"]) < rc.ink_fraction(shots["drawn"])


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
