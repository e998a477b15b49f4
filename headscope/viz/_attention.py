"""Attention views that stay readable at long context: draw what was recorded, run nothing.

:func:`headscope.retrieval.record_attention` runs the model and keeps a few tokens (a window
around the needle, the answer rows, BOS) and each answer row's top-1 key. :func:`attention_view`
draws such a record with circuitsvis's ``AttentionHeads`` widget, under a table of where each
row's top key falls. :func:`attention_window` makes a view from a pattern you already have.
Rows do not sum to one in a view: the mass on tokens left out is simply not shown.

The HTML embeds circuitsvis's JavaScript bundle (about 1.3 MB), so it renders offline;
circuitsvis's own ``RenderedHTML`` loads its script from unpkg.com in ``str()`` and probes
google.com on every display, so headscope does not use it.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import ConfigError, MissingDependencyError, SpanError

if TYPE_CHECKING:
    from headscope.retrieval import AttentionRows

__all__ = ["AttentionView", "TopKey", "attention_view", "attention_window", "circuitsvis_script"]

#: Views showing more tokens than this are refused: the page would be slow and unreadable.
MAX_SHOWN = 1024


class TopKey(NamedTuple):
    """Where one head's top-1 key falls on one query row (``in_span``: inside the needle)."""

    head: str
    query: int
    query_token: str
    key: int
    key_token: str
    value: float
    in_span: bool


@dataclass(frozen=True)
class AttentionView:
    """Attention of some heads among a few chosen tokens of a longer input, ready to display.

    ``pattern[h, i, j]`` is head ``heads[h]``'s attention from the token at ``positions[i]`` to
    the token at ``positions[j]`` in the full input of ``n_tokens`` tokens, exactly as the model
    computed it. ``query_positions`` are the rows the view was made for.

    In Jupyter the view displays itself; ``str(view)`` (or :meth:`html`) is an HTML fragment
    that works as a standalone ``.html`` file, offline.
    """

    pattern: Float[Tensor, "head query key"]
    positions: tuple[int, ...]
    tokens: tuple[str, ...]
    heads: tuple[str, ...]
    query_positions: tuple[int, ...]
    n_tokens: int
    top: tuple[TopKey, ...] = ()

    def html(self, *, include_js: bool = True) -> str:
        """HTML fragment drawing the view; ``include_js=False`` leaves out circuitsvis's bundle
        (for a page that already loaded it once with :func:`circuitsvis_script`)."""
        div = f"hs-attn-{uuid.uuid4().hex[:12]}"
        props = {
            "attention": np.round(self.pattern.double().numpy(), 4).tolist(),
            # circuitsvis numbers tokens by their place in the view; show the place in the input too
            "tokens": [f"{t}@{p}" for t, p in zip(self.tokens, self.positions, strict=True)],
            "attentionHeadNames": list(self.heads),
            "maskUpperTri": True,
        }
        data = json.dumps(props, ensure_ascii=False).replace("</", "<\\/")
        return (
            (circuitsvis_script() if include_js else "")
            + '<div class="headscope-attention"><p style="font-family:sans-serif;font-size:13px;color:#444">'
            + html.escape(self.caption())
            + f'</p><div id="{div}" style="margin:15px 0"></div>'
            + f'<script>CircuitsVis.render("{div}", CircuitsVis.AttentionHeads, {data});</script>'
            + self._top_table()
            + "</div>"
        )

    def _top_table(self) -> str:
        """A table of each query row's top-1 key, or nothing when the view has none."""
        if not self.top:
            return ""
        cells = "".join(
            f"<tr><td>{html.escape(t.head)}</td><td>{t.query}</td><td>{html.escape(repr(t.query_token))}</td>"
            f"<td>{t.key}</td><td>{html.escape(repr(t.key_token))}</td><td>{t.value:.3f}</td>"
            f"<td>{'yes' if t.in_span else 'no'}</td></tr>"
            for t in self.top
        )
        return (
            '<table class="frame headscope-top-keys"><tr><th>head</th><th>row</th><th>row token</th>'
            "<th>top key</th><th>key token</th><th>attention</th><th>in needle</th></tr>" + cells + "</table>"
        )

    def caption(self) -> str:
        """One line saying which heads and which slice of the input the view shows."""
        return (
            f"{', '.join(self.heads)}: {len(self.positions)} of {self.n_tokens} tokens "
            f"(positions {_ranges(self.positions)}); query rows {_ranges(self.query_positions)}"
        )

    def to_frame(self) -> Any:
        """Long frame, one row per (head, query position, shown key position) with key ≤ query."""
        import pandas as pd

        index = {p: i for i, p in enumerate(self.positions)}
        rows = [
            (name, q, self.tokens[index[q]], k, self.tokens[index[k]], float(self.pattern[h, index[q], index[k]]))
            for h, name in enumerate(self.heads)
            for q in self.query_positions
            for k in self.positions
            if k <= q
        ]
        return pd.DataFrame(rows, columns=["label", "query", "query_token", "key", "key_token", "value"])

    def _repr_html_(self) -> str:
        return self.html()

    def __str__(self) -> str:
        return self.html()


def circuitsvis_script() -> str:
    """A ``<script>`` holding circuitsvis's JavaScript bundle, read from the installed package."""
    try:
        import circuitsvis
    except ImportError as err:
        raise MissingDependencyError("attention views need circuitsvis: pip install circuitsvis") from err
    bundle = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    if not bundle.is_file():
        raise MissingDependencyError(f"circuitsvis {circuitsvis.__version__} ships no browser bundle at {bundle}")
    # The bundle holds "<script></script>" in a string literal, which would end an inline script.
    return "<script>" + bundle.read_text(encoding="utf-8").replace("</script", "<\\/script") + "</script>"


def attention_window(
    pattern: Float[Tensor, "head query key"],
    str_tokens: Sequence[str],
    key_range: tuple[int, int],
    query_positions: Sequence[int],
    *,
    head_names: Sequence[str] | None = None,
    include_bos: bool = True,
) -> AttentionView:
    """A view of ``pattern`` over keys ``key_range = (start, end)``, the query positions and key 0.

    ``pattern`` is a square ``[head, query, key]`` pattern over ``str_tokens`` (for example
    ``cache["pattern", layer][0]`` from TransformerLens).

    >>> pattern = torch.softmax(torch.randn(2, 6, 6), -1)
    >>> view = attention_window(pattern, list("abcdef"), (2, 4), [5])
    >>> view.positions, view.tokens
    ((0, 2, 3, 5), ('a', 'c', 'd', 'f'))
    >>> bool(view.pattern[1, 3, 1] == pattern[1, 5, 2])
    True
    """
    if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
        raise ConfigError(f"pattern must be a square [head, query, key] tensor; got shape {tuple(pattern.shape)}")
    n_heads, n, _ = pattern.shape
    if len(str_tokens) != n:
        raise ConfigError(f"pattern covers {n} tokens but {len(str_tokens)} str_tokens were given")
    names = [f"head {h}" for h in range(n_heads)] if head_names is None else list(head_names)
    if len(names) != n_heads:
        raise ConfigError(f"pattern has {n_heads} heads but {len(names)} head_names were given")
    start, end = (int(x) for x in key_range)
    if not 0 <= start < end <= n:
        raise SpanError(f"key_range must satisfy 0 <= start < end <= {n} (the number of tokens); got {key_range}")
    queries = check_positions(query_positions, n, "query position")
    shown = _shown(set(range(start, end)), queries, include_bos)
    index = torch.tensor(shown)
    sub = pattern.detach().cpu().float()[:, index][:, :, index]
    return AttentionView(sub, tuple(shown), tuple(str_tokens[p] for p in shown), tuple(names), tuple(queries), n)


def attention_view(rows: AttentionRows) -> AttentionView:
    """Draw a record of :func:`headscope.retrieval.record_attention`: its kept tokens and top keys.

    >>> import headscope as hs
    >>> from headscope.tasks import Sample, Span
    >>> sample = Sample("filler " * 30 + "The key is 4712. " + "filler " * 30 + "Key?", " 4712",
    ...                 spans=(Span("needle", 221, 225),))
    >>> rows = hs.record_attention(hs.load_model("tiny-llama"), sample, [(1, 0), (1, 3)], window=2)
    >>> view = attention_view(rows)
    >>> view.heads, len(view.top) == 2 * len(view.query_positions)
    (('L1H0', 'L1H3'), True)
    """
    frame = rows.top_frame()
    top = tuple(
        TopKey(r.label, int(r.query), r.query_token, int(r.key), r.key_token, float(r.value), bool(r.in_span))
        for r in frame.itertuples(index=False)
    )
    return AttentionView(
        rows.pattern.detach().cpu().float(),
        tuple(rows.positions),
        tuple(rows.tokens),
        tuple(rows.labels),
        tuple(rows.query_positions),
        rows.n_tokens,
        top,
    )


def check_positions(positions: Any, n: int, what: str) -> list[int]:
    """``positions`` sorted and deduplicated; :class:`SpanError` if none, or if one lies outside ``0..n-1``."""
    values = sorted({int(p) for p in positions})
    if not values:
        raise SpanError(f"no {what}s given")
    bad = [p for p in values if not 0 <= p < n]
    if bad:
        raise SpanError(f"{what}s {bad} are outside the input of {n} tokens (valid: 0..{n - 1})")
    return values


def _shown(keys: set[int], queries: list[int], include_bos: bool) -> list[int]:
    shown = sorted(keys | set(queries) | ({0} if include_bos else set()))
    if len(shown) > MAX_SHOWN:
        raise ConfigError(
            f"the view would show {len(shown)} tokens, more than {MAX_SHOWN}; pass a smaller window or fewer positions"
        )
    return shown


def _ranges(positions: Sequence[int]) -> str:
    """``[0, 5, 6, 7, 9] -> "0, 5–7, 9"``."""
    parts: list[str] = []
    start = prev = None
    for p in [*positions, None]:
        if start is not None and (p is None or p != prev + 1):
            parts.append(str(start) if start == prev else f"{start}–{prev}")
            start = None
        if p is not None and start is None:
            start = p
        prev = p
    return ", ".join(parts)
