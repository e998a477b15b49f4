"""Where each head looks: top-1 key positions of chosen query rows, read inside ``hook_pattern``.

The recorder never keeps an attention pattern. A hook on every layer's ``hook_pattern`` takes
the few query rows that matter, their argmax over keys, and drops the pattern, so detection
holds one layer's pattern at a time, as a plain forward does. Reading works on every model kind,
including bridges that ignore pattern *edits*: only reading is needed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.hooks import HookFn, attn_hook

__all__ = ["Top1Recorder", "count_hits", "needle_mask", "top1_rows"]


def top1_rows(
    pattern: Float[Tensor, "batch head query key"], rows: Int[Tensor, "batch row"] | None
) -> Int[Tensor, "batch head row"]:
    """Argmax over keys of the query rows ``rows[b]`` of each batch item (the last row if ``None``).

    Ties go to the earliest key (``torch.argmax``'s rule).
    """
    if rows is None:
        return pattern[:, :, -1:].argmax(-1)
    picked = pattern[torch.arange(pattern.shape[0], device=pattern.device)[:, None], :, rows]  # [batch row head key]
    return picked.argmax(-1).transpose(1, 2)


class Top1Recorder:
    """Hooks that record :func:`top1_rows` per layer; :meth:`take` returns and clears them.

    Set :attr:`rows` before each forward (``None`` reads the last query row, the one that
    predicts the next token, which is all a KV-cached decoding step has).
    """

    def __init__(self, n_layers: int) -> None:
        self.n_layers = n_layers
        self.rows: Int[Tensor, "batch row"] | None = None
        self._store: list[Tensor | None] = [None] * n_layers

    def hooks(self) -> list[tuple[str, HookFn]]:
        return [(attn_hook(layer, "pattern"), self._recorder(layer)) for layer in range(self.n_layers)]

    def _recorder(self, layer: int) -> HookFn:
        def record_top1(pattern: Tensor, hook: Any) -> None:
            self._store[layer] = top1_rows(pattern.detach(), self.rows)

        return record_top1

    def take(self) -> Int[Tensor, "layer batch head row"]:
        missing = [layer for layer, top in enumerate(self._store) if top is None]
        if missing:
            raise RuntimeError(f"hook_pattern did not fire on layers {missing}; cannot read their attention")
        out = torch.stack(self._store)  # type: ignore[arg-type]
        self._store = [None] * self.n_layers
        return out


def count_hits(
    top1: Int[Tensor, "layer head row"],
    input_ids: Int[Tensor, " pos"],
    needle: Bool[Tensor, " pos"],
    targets: Int[Tensor, " row"],
    valid: Bool[Tensor, " row"],
) -> Int[Tensor, "layer head"]:
    """Per head, the rows whose top-1 key lies in the needle and holds the row's target token.

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
