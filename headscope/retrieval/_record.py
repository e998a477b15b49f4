"""``record_attention``: a few heads' attention around the needle and at the answer rows, from one forward.

A full pattern at 8k tokens is 64M numbers per head: far too much to keep or draw, and mostly
irrelevant. A retrieval head matters at two places: the needle it copies from and the rows
that produce the answer. So a record keeps only a few tokens: keys within ``window`` tokens of
the needle span(s) (the sample's ``span`` spans, as in detection), the query rows (those
predicting the answer tokens, teacher-forced), and BOS (the attention sink). For every query
row it also keeps the head's top-1 key over the *whole* row, wherever it falls: the key
detection scores.

The hooks slice each chosen layer's pattern as the layer runs, and the forward pass stops
after the last chosen layer. :func:`headscope.viz.attention_view` draws the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope._types import Choice
from headscope.errors import ConfigError, ModelError, SpanError
from headscope.heads import Head, Heads
from headscope.hooks import attached, attn_hook
from headscope.models import model_info, tokenizer_of
from headscope.results import Saved
from headscope.tasks import Sample
from headscope.viz._attention import MAX_SHOWN, check_positions

__all__ = ["AttentionRows", "record_attention"]

Queries = Choice["answer", "last"]


@dataclass(frozen=True, eq=False)
class AttentionRows(Saved):
    """Attention of some heads among a few kept tokens of a longer input, with each query row's top key.

    ``pattern[h, i, j]`` is head ``heads[h]``'s attention from the token at ``positions[i]`` to
    the token at ``positions[j]`` in the full input of ``n_tokens`` tokens, exactly as the model
    computed it. ``query_positions`` are the rows the record was made for; ``top_keys[h, q]``
    is the key head ``h`` attends to most on row ``query_positions[q]`` over the whole input,
    ``top_values[h, q]`` that attention and ``top_tokens[h][q]`` the token there. ``focus``
    holds the positions the key window surrounds (the needle span); ``meta`` the sample's meta.
    """

    pattern: Float[Tensor, "head query key"]
    positions: tuple[int, ...]
    tokens: tuple[str, ...]
    heads: tuple[Head, ...]
    query_positions: tuple[int, ...]
    top_keys: Int[Tensor, "head row"]
    top_values: Float[Tensor, "head row"]
    top_tokens: tuple[tuple[str, ...], ...]
    focus: tuple[int, ...]
    n_tokens: int
    span: str = "needle"
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(str(Head(*head)) for head in self.heads)

    def top_frame(self) -> Any:
        """One row per (head, query row): where the row's top-1 key falls and whether it is in the needle.

        Columns: layer, head, label, query, query_token, key, key_token, value, in_span.
        """
        import pandas as pd

        index = {p: i for i, p in enumerate(self.positions)}
        focus = set(self.focus)
        rows = [
            (layer, head, label, q, self.tokens[index[q]], key, self.top_tokens[h][i], value, key in focus)
            for h, ((layer, head), label) in enumerate(zip(self.heads, self.labels, strict=True))
            for i, (q, key, value) in enumerate(
                zip(self.query_positions, self.top_keys[h].tolist(), self.top_values[h].tolist(), strict=True)
            )
        ]
        columns = ["layer", "head", "label", "query", "query_token", "key", "key_token", "value", "in_span"]
        return pd.DataFrame(rows, columns=columns)

    def to_frame(self) -> Any:
        """Long frame, one row per (head, query row, kept key) with key ≤ query.

        Columns: layer, head, label, query, query_token, key, key_token, value, is_top (the row's
        top-1 key), in_span (a ``span`` position).
        """
        import pandas as pd

        index = {p: i for i, p in enumerate(self.positions)}
        focus = set(self.focus)
        rows = []
        for h, ((layer, head), label) in enumerate(zip(self.heads, self.labels, strict=True)):
            for i, q in enumerate(self.query_positions):
                top, row, query = int(self.top_keys[h, i]), self.pattern[h, index[q]].tolist(), self.tokens[index[q]]
                rows += [
                    (layer, head, label, q, query, k, self.tokens[index[k]], row[index[k]], k == top, k in focus)
                    for k in self.positions
                    if k <= q
                ]
        columns = ["layer", "head", "label", "query", "query_token", "key", "key_token", "value", "is_top", "in_span"]
        return pd.DataFrame(rows, columns=columns)

    def plot(self, **kwargs: Any) -> Any:
        """Draw the record with :func:`headscope.viz.attention_view` (keyword arguments go to it)."""
        from headscope.viz import attention_view

        return attention_view(self, **kwargs)


def record_attention(
    model: Any,
    source: Sample | Int[Tensor, " pos"] | Sequence[int],
    heads: Heads,
    *,
    span: str = "needle",
    queries: Queries | Sequence[int] = "answer",
    window: int = 16,
    around: Sequence[int] | None = None,
    include_bos: bool = True,
    tokenizer: Any = None,
) -> AttentionRows:
    """Run ``model`` once and keep ``heads``' attention around the needle and at the answer rows.

    With a :class:`~headscope.tasks.Sample`, the key window surrounds its ``span``
    span(s) (several are united, as in detection), and ``queries="answer"`` appends the gold
    answer (teacher forcing) and keeps the rows that predict each answer token; ``"last"`` keeps
    only the prompt's last row. With raw token ids, give ``around`` (the positions the window
    surrounds) and ``queries`` as positions or ``"last"``. Keys within ``window`` tokens of any
    ``around`` position are kept, plus BOS unless ``include_bos=False``.

    >>> from headscope import load_model
    >>> from headscope.tasks import Sample, Span
    >>> model = load_model("tiny-llama")
    >>> sample = Sample("filler " * 30 + "The key is 4712. " + "filler " * 30 + "Key?", " 4712",
    ...                 spans=(Span("needle", 221, 225),))
    >>> rows = record_attention(model, sample, [(1, 0), (1, 3)], window=2)
    >>> rows.labels, len(rows.positions) < rows.n_tokens, tuple(rows.top_keys.shape)
    (('L1H0', 'L1H3'), True, (2, 2))
    """
    info = model_info(model)
    pairs = info.check_heads(heads)
    if window < 0:
        raise ConfigError(f"window must be >= 0 tokens; got {window}")
    tok = tokenizer or tokenizer_of(model)
    ids, focus, rows = _positions(source, around, queries, span, tok)
    n = len(ids)
    info.check_length(n)
    keys = {k for p in focus for k in range(max(0, p - window), min(n, p + window + 1))}
    shown = sorted(keys | set(rows) | ({0} if include_bos else set()))
    if len(shown) > MAX_SHOWN:
        raise ConfigError(
            f"the record would keep {len(shown)} tokens, more than {MAX_SHOWN}; "
            "pass a smaller window or fewer positions"
        )
    pattern, top_values, top_keys = _capture(model, ids, pairs, torch.tensor(shown), torch.tensor(rows))
    decode = lambda p: tok.decode([int(ids[p])])  # noqa: E731
    return AttentionRows(
        pattern,
        tuple(shown),
        tuple(decode(p) for p in shown),
        tuple(pairs),
        tuple(rows),
        top_keys,
        top_values,
        tuple(tuple(decode(k) for k in head_keys.tolist()) for head_keys in top_keys),
        tuple(focus),
        n,
        span,
        dict(source.meta) if isinstance(source, Sample) else {},
    )


class _Stop(Exception):
    """Raised by the last needed hook to end the forward pass early."""


def _capture(
    model: Any, ids: Tensor, pairs: list[Head], shown: Tensor, rows: Tensor
) -> tuple[Float[Tensor, "head query key"], Float[Tensor, "head row"], Int[Tensor, "head row"]]:
    """``pattern[head, shown, shown]`` and the top-1 key of each query row, from one (truncated) forward."""
    n = len(ids)
    layers = sorted({layer for layer, _ in pairs})
    store: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def keeper(layer: int) -> Any:
        wanted = torch.tensor([h for lay, h in pairs if lay == layer])

        def keep(pattern: Tensor, hook: Any) -> None:
            if pattern.ndim != 4 or pattern.shape[-2:] != (n, n):
                raise ModelError(
                    f"layer {layer}'s hook_pattern has shape {tuple(pattern.shape)}; expected [1, head, {n}, {n}]"
                )
            mine = pattern[0, wanted.to(pattern.device)]
            sub = mine[:, shown.to(pattern.device)][:, :, shown.to(pattern.device)]
            values, keys = mine[:, rows.to(pattern.device)].max(dim=-1)
            store[layer] = (sub.detach().cpu().float(), values.detach().cpu().float(), keys.detach().cpu())
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
    out: list[tuple[Tensor, Tensor, Tensor]] = []
    for layer, _ in pairs:
        i = counters[layer]
        out.append(tuple(part[i] for part in store[layer]))  # type: ignore[arg-type]
        counters[layer] += 1
    return tuple(torch.stack(parts) for parts in zip(*out, strict=True))  # type: ignore[return-value]


def _positions(
    source: Any, around: Sequence[int] | None, queries: Any, span: str, tokenizer: Any
) -> tuple[Tensor, list[int], list[int]]:
    """Token ids, the positions the key window surrounds, and the query rows."""
    if isinstance(source, Sample):
        enc = source.encode(tokenizer)
        ids, n_prompt = enc.input_ids, len(enc.input_ids)
        if isinstance(queries, str) and queries == "answer":
            if len(enc.answer_ids) == 0:
                raise SpanError("queries='answer' but the sample's answer has no tokens")
            ids = torch.cat([ids, enc.answer_ids])
            queries = range(n_prompt - 1, n_prompt - 1 + len(enc.answer_ids))
        if around is None:
            around = [p for start, end in enc.positions(span) for p in range(start, end)]
    else:
        ids = torch.as_tensor(source, dtype=torch.long).flatten().cpu()
        if around is None or (isinstance(queries, str) and queries == "answer"):
            raise SpanError(
                "a needle span and queries='answer' need a Sample; with token ids, "
                "give around=[positions] and queries=[positions] or 'last'"
            )
    n = len(ids)
    if isinstance(queries, str):
        if queries != "last":
            raise ConfigError(f"queries must be 'answer', 'last' or positions; got {queries!r}")
        queries = [n - 1]
    return ids, check_positions(around, n, "around position"), check_positions(queries, n, "query position")
