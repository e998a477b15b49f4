"""Attention views that stay readable at long context.

A full pattern at 8k tokens is 64M numbers per head: far too much for a browser, and mostly
irrelevant. A retrieval head matters at two places: the needle it copies from and the
positions that produce the answer. So a view shows only a few tokens: a window of ``window``
keys either side of each position of interest (the needle span by default), the query
positions (those that predict the answer tokens, teacher-forced), and BOS (the attention
sink). The pattern restricted to those tokens is drawn with circuitsvis's ``AttentionHeads``
widget. Rows do not sum to one there: the mass on tokens left out is simply not shown.

:func:`attention_view` runs the model once and keeps only what is shown: the hooks slice
each chosen layer's pattern to the chosen heads and tokens, and the forward pass stops after
the last chosen layer. :func:`attention_window` does the same for a pattern you already have.

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
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import MissingDependencyError, ModelError, SpanError
from headscope.hooks import attached, attn_hook
from headscope.models import model_info, tokenizer_of
from headscope.tasks import Sample

__all__ = ["AttentionView", "attention_view", "attention_window", "circuitsvis_script"]

#: Views showing more tokens than this are refused: the page would be slow and unreadable.
MAX_SHOWN = 1024


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
            + f'<script>CircuitsVis.render("{div}", CircuitsVis.AttentionHeads, {data});</script></div>'
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
        raise ValueError(f"pattern must be a square [head, query, key] tensor; got shape {tuple(pattern.shape)}")
    n_heads, n, _ = pattern.shape
    if len(str_tokens) != n:
        raise ValueError(f"pattern covers {n} tokens but {len(str_tokens)} str_tokens were given")
    names = [f"head {h}" for h in range(n_heads)] if head_names is None else list(head_names)
    if len(names) != n_heads:
        raise ValueError(f"pattern has {n_heads} heads but {len(names)} head_names were given")
    start, end = (int(x) for x in key_range)
    if not 0 <= start < end <= n:
        raise SpanError(f"key_range must satisfy 0 <= start < end <= {n} (the number of tokens); got {key_range}")
    queries = _check_positions(query_positions, n, "query position")
    shown = _shown(set(range(start, end)), queries, include_bos)
    index = torch.tensor(shown)
    sub = pattern.detach().cpu().float()[:, index][:, :, index]
    return AttentionView(sub, tuple(shown), tuple(str_tokens[p] for p in shown), tuple(names), tuple(queries), n)


def attention_view(
    model: Any,
    tokens_or_sample: Sample | Int[Tensor, " pos"] | Sequence[int],
    heads: Sequence[tuple[int, int]],
    *,
    window: int = 16,
    around: Literal["needle"] | Sequence[int] = "needle",
    query_positions: Literal["answer", "last"] | Sequence[int] = "answer",
    include_bos: bool = True,
    tokenizer: Any = None,
) -> AttentionView:
    """Run ``model`` once and view ``heads`` around the needle and at the answer positions.

    With a :class:`~headscope.tasks.Sample`, ``around="needle"`` centres the key window on its
    needle span(s), and ``query_positions="answer"`` appends the gold answer (teacher forcing)
    and shows the rows that predict each answer token. ``"last"`` shows only the prompt's last
    row. With raw token ids, give ``around`` and ``query_positions`` as positions. Keys within
    ``window`` tokens of any ``around`` position are shown, plus BOS unless ``include_bos=False``.

    >>> from headscope import load_model
    >>> from headscope.tasks import Sample, Span
    >>> model = load_model("tiny-llama")
    >>> sample = Sample("filler " * 30 + "The key is 4712. " + "filler " * 30 + "Key?", " 4712",
    ...                 spans=(Span("needle", 221, 225),))
    >>> view = attention_view(model, sample, [(1, 0), (1, 3)], window=2)
    >>> view.heads, len(view.positions) < view.n_tokens
    (('L1H0', 'L1H3'), True)
    """
    info = model_info(model)
    pairs = info.check_heads(heads)
    if window < 0:
        raise ValueError(f"window must be >= 0 tokens; got {window}")
    tok = tokenizer or tokenizer_of(model)
    ids, focus, queries = _positions(tokens_or_sample, around, query_positions, tok)
    n = len(ids)
    info.check_length(n)
    keys = {k for p in focus for k in range(max(0, p - window), min(n, p + window + 1))}
    shown = _shown(keys, queries, include_bos)
    str_tokens = tuple(tok.decode([i]) for i in ids[shown].tolist())
    pattern = _capture_rows(model, ids, pairs, torch.tensor(shown))
    names = tuple(f"L{layer}H{head}" for layer, head in pairs)
    return AttentionView(pattern, tuple(shown), str_tokens, names, tuple(queries), n)


class _Stop(Exception):
    """Raised by the last needed hook to end the forward pass early."""


def _capture_rows(model: Any, ids: Tensor, pairs: list[tuple[int, int]], shown: Tensor) -> Tensor:
    """``pattern[head, shown, shown]`` for each (layer, head), from one (truncated) forward pass."""
    n = len(ids)
    layers = sorted({layer for layer, _ in pairs})
    store: dict[int, Tensor] = {}

    def keeper(layer: int) -> Any:
        wanted = torch.tensor([h for lay, h in pairs if lay == layer])

        def keep(pattern: Tensor, hook: Any) -> None:
            if pattern.ndim != 4 or pattern.shape[-2:] != (n, n):
                raise ModelError(
                    f"layer {layer}'s hook_pattern has shape {tuple(pattern.shape)}; expected [1, head, {n}, {n}]"
                )
            rows = pattern[0, wanted.to(pattern.device)][:, shown.to(pattern.device)]
            store[layer] = rows[:, :, shown.to(pattern.device)].detach().cpu().float()
            if layer == layers[-1]:
                raise _Stop

        return keep

    device = next(model.parameters()).device
    try:
        with torch.no_grad(), attached(model, [(attn_hook(layer, "pattern"), keeper(layer)) for layer in layers]):
            model(ids.unsqueeze(0).to(device))
    except _Stop:
        pass
    missing = [layer for layer in layers if layer not in store]
    if missing:
        raise ModelError(f"the forward pass never reached hook_pattern of layer(s) {missing}")
    counters = {layer: 0 for layer in layers}
    out = []
    for layer, _ in pairs:
        out.append(store[layer][counters[layer]])
        counters[layer] += 1
    return torch.stack(out)


def _positions(source: Any, around: Any, query_positions: Any, tokenizer: Any) -> tuple[Tensor, list[int], list[int]]:
    """Token ids, the positions the key window surrounds, and the query rows."""
    if isinstance(source, Sample):
        enc = source.encode(tokenizer)
        ids, n_prompt = enc.input_ids, len(enc.input_ids)
        if isinstance(query_positions, str) and query_positions == "answer":
            if len(enc.answer_ids) == 0:
                raise SpanError("query_positions='answer' but the sample's answer has no tokens")
            ids = torch.cat([ids, enc.answer_ids])
            query_positions = range(n_prompt - 1, n_prompt - 1 + len(enc.answer_ids))
        if isinstance(around, str) and around == "needle":
            around = [p for start, end in enc.positions("needle") for p in range(start, end)]
    else:
        ids = torch.as_tensor(source, dtype=torch.long).flatten().cpu()
        if isinstance(around, str) or (isinstance(query_positions, str) and query_positions == "answer"):
            raise SpanError(
                "around='needle' and query_positions='answer' need a Sample; with token ids, "
                "give around=[positions] and query_positions=[positions] or 'last'"
            )
    n = len(ids)
    if isinstance(query_positions, str):
        if query_positions != "last":
            raise ValueError(f"query_positions must be 'answer', 'last' or positions; got {query_positions!r}")
        query_positions = [n - 1]
    if isinstance(around, str):
        raise ValueError(f"around must be 'needle' or positions; got {around!r}")
    return ids, _check_positions(around, n, "around position"), _check_positions(query_positions, n, "query position")


def _check_positions(positions: Any, n: int, what: str) -> list[int]:
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
        raise ValueError(
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
