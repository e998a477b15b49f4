"""Where each head looks: top-1 key and needle mass of chosen query rows, read inside ``hook_pattern``.

The recorder never keeps an attention pattern. A hook on every layer's ``hook_pattern`` takes
the few query rows that matter, reads them with :func:`read_rows`, and drops the pattern, so
detection holds one layer's pattern at a time, as a plain forward does. Reading works on every
model kind, including bridges that ignore pattern *edits*: only reading is needed here. The fused
route (:mod:`headscope.retrieval._fused`) computes the same rows from post-rotary queries and
keys and reads them with the same :func:`read_rows`.

**Tie rule** (both routes): a row's top-1 key is the *earliest* key among those holding the row's
largest attention weight. ``torch.argmax`` returns the first maximal index.

**Precision.** Weights are read in float32. A float32 model's ``hook_pattern`` is that already. A
bfloat16 or float16 model's pattern is the float32 softmax cast back to its dtype, whose coarse
rounding makes close weights tie (and the earliest key, often BOS, would win): there the reader
takes the layer's ``hook_attn_scores`` (which fires just before, with the model's mask and any
score edit of a knockout in it), and reads the rows' float32 softmax of those scores instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.hooks import HookFn, attn_hook

__all__ = [
    "RowReads",
    "count_hits",
    "fit_needles",
    "needle_mask",
    "pattern_readers",
    "read_rows",
    "take_reads",
    "top1_rows",
]


def top1_rows(
    pattern: Float[Tensor, "batch head query key"], rows: Int[Tensor, "batch row"] | None
) -> Int[Tensor, "batch head row"]:
    """Argmax over keys of the query rows ``rows[b]`` of each batch item (the last row if ``None``).

    Ties go to the earliest key (``torch.argmax``'s rule).
    """
    return read_rows(pick_rows(pattern, rows), None).top1


def pick_rows(
    pattern: Float[Tensor, "batch head query key"], rows: Int[Tensor, "batch row"] | None
) -> Float[Tensor, "batch head row key"]:
    """The query rows ``rows[b]`` of each batch item (the last row if ``None``)."""
    if rows is None:
        return pattern[:, :, -1:]
    return pattern[torch.arange(pattern.shape[0], device=pattern.device)[:, None], :, rows].transpose(1, 2)


@dataclass(frozen=True)
class RowReads:
    """What detection reads from each scored row: the top-1 key and (optionally) the needle mass."""

    top1: Int[Tensor, "*batch head row"]
    mass: Float[Tensor, "*batch head row"] | None


def read_rows(weights: Float[Tensor, "batch head row key"], needles: Bool[Tensor, "batch pos"] | None) -> RowReads:
    """Top-1 key of each row (earliest among equal maxima) and, given ``needles``, the weight on them (float32).

    >>> w = torch.tensor([[[[0.2, 0.4, 0.4]]]])  # keys 1 and 2 tie
    >>> reads = read_rows(w, torch.tensor([[False, False, True]]))
    >>> reads.top1, reads.mass
    (tensor([[[1]]]), tensor([[[0.4000]]]))
    """
    mass = None
    if needles is not None:
        mass = (weights.float() * fit_needles(needles, weights.shape[-1])[:, None, None, :]).sum(-1)
    return RowReads(weights.argmax(-1), mass)


def fit_needles(needles: Bool[Tensor, "batch pos"], n_keys: int) -> Bool[Tensor, "batch key"]:
    """Needle masks cut or padded with ``False`` to ``n_keys`` keys (decoding steps add keys after the prompt)."""
    if needles.shape[-1] >= n_keys:
        return needles[:, :n_keys]
    return torch.nn.functional.pad(needles, (0, n_keys - needles.shape[-1]), value=False)


def pattern_readers(
    n_layers: int, rows: Int[Tensor, "batch row"] | None, needles: Bool[Tensor, "batch pos"] | None
) -> tuple[list[tuple[str, HookFn]], list[RowReads | None]]:
    """Hooks of every layer that read ``rows`` with :func:`read_rows`, and the store they fill.

    Built for one batch: the hooks close over its ``rows`` (``None`` reads the last query row,
    the one that predicts the next token, which is all a KV-cached decoding step has) and
    ``needles`` (also record each row's attention mass on the needle). ``hook_pattern`` reads;
    ``hook_attn_scores`` keeps the rows' scores for it when the model computes below float32
    (see the module docstring). Each forward overwrites the store; :func:`take_reads` stacks and
    clears it.
    """
    store: list[RowReads | None] = [None] * n_layers
    scores: list[Tensor | None] = [None] * n_layers

    def keep_scores(layer: int) -> HookFn:
        def keep_score_rows(act: Tensor, hook: Any) -> None:
            if act.dtype not in (torch.float32, torch.float64):
                scores[layer] = pick_rows(act.detach(), rows)

        return keep_score_rows

    def reader(layer: int) -> HookFn:
        def read_pattern_rows(pattern: Tensor, hook: Any) -> None:
            picked = pick_rows(pattern.detach(), rows)
            kept, scores[layer] = scores[layer], None
            if kept is not None and kept.shape == picked.shape:
                picked = torch.nan_to_num(kept.float().softmax(-1), nan=0.0)
            store[layer] = read_rows(picked, needles)

        return read_pattern_rows

    hooks = [(attn_hook(layer, "attn_scores"), keep_scores(layer)) for layer in range(n_layers)]
    return [*hooks, *((attn_hook(layer, "pattern"), reader(layer)) for layer in range(n_layers))], store


def take_reads(store: list[RowReads | None], why: str) -> RowReads:
    """Stack per-layer reads as ``[layer, batch, head, row]`` and empty ``store``."""
    missing = [layer for layer, reads in enumerate(store) if reads is None]
    if missing:
        raise RuntimeError(f"{why} on layers {missing}; cannot read their attention")
    reads: list[RowReads] = list(store)  # type: ignore[arg-type]
    store[:] = [None] * len(store)
    masses = [r.mass for r in reads]
    mass = None if any(m is None for m in masses) else torch.stack(masses)  # type: ignore[arg-type]
    return RowReads(torch.stack([r.top1 for r in reads]), mass)


def count_hits(
    top1: Int[Tensor, "layer head row"],
    input_ids: Int[Tensor, " pos"],
    needle: Bool[Tensor, " pos"],
    targets: Int[Tensor, " row"],
    valid: Bool[Tensor, " row"],
) -> Int[Tensor, "layer head"]:
    """Per head, the rows whose top-1 key lies in the needle and holds the row's target token.

    ``input_ids`` and ``targets`` are token ids, or their match classes
    (:class:`~headscope.retrieval._match.TokenMatch`) when tokens of one text count as one token.

    >>> top1 = torch.tensor([[[1, 2], [0, 0]]])  # one layer; head 0 looks at keys 1 then 2
    >>> ids, needle = torch.tensor([5, 7, 8]), torch.tensor([False, True, True])
    >>> count_hits(top1, ids, needle, targets=torch.tensor([7, 8]), valid=torch.tensor([True, True]))
    tensor([[2, 0]])
    """
    return ((input_ids[top1] == targets) & needle[top1] & valid).sum(-1)


def needle_mask(length: int, spans: Sequence[tuple[int, int]], device: torch.device) -> Bool[Tensor, " pos"]:
    """Boolean mask of the union of token ranges ``[start, end)``."""
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    for start, end in spans:
        mask[start:end] = True
    return mask
