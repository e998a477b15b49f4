"""Self-contained HTML reports: figures, tables and attention views in one offline file.

A report is a title and a list of sections: ``(heading, content)`` pairs or :class:`Section`
values, which add a one-line caption and a known element id (``figure-{key}``) for the figure.
plotly.js (about 4.7 MB) and circuitsvis's bundle (about 1.3 MB) are each embedded once, in the
first section that needs them, so the file opens anywhere without a network connection.
:func:`retrieval_report` lays out the sections of a retrieval-head run.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from headscope.errors import InputTypeError
from headscope.viz._attention import AttentionView

__all__ = ["Section", "html_report", "save_report"]


class Section(NamedTuple):
    """One section of a report: a heading, its content, a one-line caption, and the figure's id key."""

    heading: str
    content: Any
    caption: str = ""
    key: str = ""


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 40px; color: #222; }
h1 { font-size: 26px; } h2 { font-size: 19px; margin-top: 36px; border-bottom: 1px solid #ddd; }
table.frame { border-collapse: collapse; font-size: 13px; }
table.frame th, table.frame td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
nav li { font-size: 14px; }
p.caption { font-size: 14px; color: #444; max-width: 60em; }
details summary { cursor: pointer; font-size: 14px; margin: 8px 0; }
"""


def html_report(title: str, sections: Sequence[tuple[str, Any] | Section], *, max_rows: int = 200) -> str:
    """One HTML page with a heading and a contents list, then each section under its heading.

    Each section's content sits in a ``<div class="figure" id="figure-{key}">`` (``key``
    defaults to the section's number) with the caption, if any, below it. A content may be a
    plotly figure, a pandas ``DataFrame`` (shown as a table of at most ``max_rows`` rows), an
    :class:`~headscope.viz.AttentionView`, a circuitsvis ``RenderedHTML``, or a ``str`` of HTML
    inserted as is.

    >>> import pandas as pd, plotly.graph_objects as go
    >>> page = html_report("demo", [("a bar", go.Figure(go.Bar(y=[1, 2]))), ("a table", pd.DataFrame({"x": [1]}))])
    >>> page.startswith("<!DOCTYPE html>"), page.count("<h2")
    (True, 2)
    """
    sections = [Section(*s) for s in sections]
    bad = [
        f"section {i} ({s.heading!r}): {type(s.content).__name__}"
        for i, s in enumerate(sections)
        if _kind(s.content) is None
    ]
    if bad:
        raise InputTypeError(
            "report sections must hold a plotly figure, a pandas DataFrame, an AttentionView, "
            "a circuitsvis RenderedHTML or an HTML str; got " + "; ".join(bad)
        )
    loaded: set[str] = set()
    contents = "".join(f'<li><a href="#section-{i}">{html.escape(s.heading)}</a></li>' for i, s in enumerate(sections))
    body = "".join(
        f'<section id="section-{i}"><h2>{html.escape(s.heading)}</h2>'
        f'<div class="figure" id="figure-{html.escape(s.key or str(i))}">'
        f"{_content_html(s.content, loaded, max_rows)}</div>"
        + (f'<p class="caption">{html.escape(s.caption)}</p>' if s.caption else "")
        + "</section>"
        for i, s in enumerate(sections)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><nav><ol>{contents}</ol></nav>{body}</body></html>\n"
    )


def save_report(
    path: str | Path, title: str, sections: Sequence[tuple[str, Any] | Section], *, max_rows: int = 200
) -> Path:
    """Write :func:`html_report` to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(html_report(title, sections, max_rows=max_rows), encoding="utf-8")
    return path


def _kind(content: Any) -> str | None:
    if isinstance(content, AttentionView):
        return "attention"
    if isinstance(content, str):
        return "html"
    module = type(content).__module__
    if module.startswith("plotly") and hasattr(content, "to_html"):
        return "plotly"
    if module.startswith("pandas") and hasattr(content, "to_html") and hasattr(content, "columns"):
        return "frame"
    if module.startswith("circuitsvis") and hasattr(content, "local_src"):
        return "circuitsvis"
    return None


def _content_html(content: Any, loaded: set[str], max_rows: int) -> str:
    """HTML of one section; ``loaded`` records which JavaScript bundles the page already holds."""
    kind = _kind(content)
    if kind == "plotly":
        first = "plotly" not in loaded
        loaded.add("plotly")
        height = content.layout.height or 450
        return content.to_html(full_html=False, include_plotlyjs=first, default_height=f"{height}px")
    if kind == "frame":
        return content.to_html(max_rows=max_rows, border=0, classes="frame")
    if kind == "attention":
        first = "circuitsvis" not in loaded
        loaded.add("circuitsvis")
        return content.html(include_js=first)
    if kind == "circuitsvis":
        return content.local_src  # never .cdn_src or _repr_html_: those reach the network
    return content
