"""Per-head activation patching: patch each head's output alone and measure a metric.

Same numbers as TransformerLens's ``get_act_patch_attn_head_out_all_pos`` (patching ``hook_z``
of one head from the clean run into the corrupted run), computed with much less work:

- a patched run starts at the patched layer from the corrupted run's recorded residual stream,
  since nothing below it changes;
- the heads of one layer run together, one batch row per head;
- when only positions ``>= p0`` are patched (the answer positions, the usual case), only those
  positions run through the upper layers, attending to the corrupted run's recorded keys and
  values for the earlier positions; the cost then grows with the patched positions, not the
  context. The metric still sees full-length logits: earlier positions are exactly the
  corrupted run's.

If a model's blocks cannot be replayed (checked against the corrupted logits before the sweep),
the sweep falls back to full forwards, still batched by layer, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from headscope.errors import ConfigError, HeadIndexError
from headscope.hooks import attached, attn_hook, capture
from headscope.models import model_info
from headscope.models._fused_bridge import wants_fused
from headscope.patching._metrics import Metric, metric_name
from headscope.patching._patch import Attention, Positions, _as_batch, attention_route, resolve_positions
from headscope.patching._result import PatchingResult
from headscope.patching._resume import Recorded, record

__all__ = ["head_patching_sweep"]


def head_patching_sweep(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # its shape is checked against clean_tokens below
    metric: Metric,
    *,
    positions: Positions = "all",
    layers: Iterable[int] | None = None,
    heads_per_run: int | None = None,
    attention: Attention = "auto",
    progress: bool = True,
) -> PatchingResult:
    """Patch each head's output (``hook_z``) from the clean run into the corrupted run, one head at a time.

    ``positions`` is ``"all"`` or the positions to patch (``range(-k, 0)`` for the last ``k``).
    ``layers`` limits the sweep (other layers get NaN). ``heads_per_run`` caps the heads batched
    into one forward (default: all heads of a layer). The result's ``baseline`` is the corrupted
    metric and ``reference`` the clean one. ``attention`` picks the attention route of every run
    (``"auto"``: sdpa through :func:`~headscope.models._fused_bridge.fused_bridge` wherever it can
    run, key/value reuse included; ``"eager"``: TransformerLens's attention); see :func:`patched`.

    >>> from headscope import load_model
    >>> from headscope.patching import LogitDiff
    >>> model = load_model("tiny-llama")
    >>> clean, corrupt = torch.tensor([[0, 5, 9, 7, 3]]), torch.tensor([[0, 6, 9, 7, 3]])
    >>> result = head_patching_sweep(model, clean, corrupt, LogitDiff(5, 6), positions=[-1], progress=False)
    >>> result.values.shape
    torch.Size([2, 4])
    """
    info = model_info(model)
    clean, corrupt = _as_batch(clean_tokens), _as_batch(corrupted_tokens)
    if clean.shape != corrupt.shape:
        raise ConfigError(
            f"clean and corrupted tokens must have the same shape to patch position by position; "
            f"got {tuple(clean.shape)} and {tuple(corrupt.shape)}"
        )
    info.check_length(corrupt.shape[1])
    sweep_layers = _layers(layers, info.n_layers)
    pos = resolve_positions(positions, corrupt.shape[1])
    start = 0 if isinstance(positions, str) else int(pos.min())
    per_run = info.n_heads if heads_per_run is None else int(heads_per_run)
    if per_run < 1:
        raise ConfigError(f"heads_per_run must be at least 1; got {heads_per_run}")
    device = next(model.parameters()).device
    clean, corrupt = clean.to(device), corrupt.to(device)

    with attention_route(model, attention):
        values, clean_logits, run, resumable = _sweep(
            model, clean, corrupt, metric, sweep_layers, pos, start, per_run, progress
        )
    return PatchingResult(
        values=values,
        metric=metric_name(metric),
        baseline=float(metric(run.logits)),
        reference=float(metric(clean_logits)),
        method="exact",
        settings={
            "model": info.name,
            "site": "z",
            "positions": "all" if isinstance(positions, str) else pos.tolist(),
            "n_tokens": int(corrupt.shape[1]),
            "batch": corrupt.shape[0],
            "resumed": resumable,
            "attention": "fused" if wants_fused(model, attention) else "eager",
        },
    )


def _sweep(
    model: Any,
    clean: Tensor,
    corrupt: Tensor,
    metric: Metric,
    sweep_layers: list[int],
    pos: Tensor,
    start: int,
    per_run: int,
    progress: bool,
) -> tuple[Tensor, Tensor, Recorded, bool]:
    """Patch values, clean logits, the recorded corrupted run and whether it could be resumed."""
    info = model_info(model)
    z_names = [attn_hook(layer, "z") for layer in sweep_layers]
    with torch.no_grad(), capture(model, z_names) as clean_z:
        clean_logits = model(clean)
    run = record(model, corrupt, [], keep_kv=start > 0)
    resumable = run.check(start)
    if not resumable:
        warnings.warn(
            f"cannot resume {info.name} from a middle layer; the sweep runs full forwards (slower, same numbers)",
            stacklevel=3,
        )
    values = torch.full(info.shape, float("nan"))
    buffer = run.logits.clone()
    batch = corrupt.shape[0]
    with torch.no_grad():
        for layer in tqdm(sweep_layers, disable=not progress, desc="patching layers"):
            for first in range(0, info.n_heads, per_run):
                heads = list(range(first, min(first + per_run, info.n_heads)))
                hook = _SweepHook(clean_z[attn_hook(layer, "z")], heads, pos, batch)
                with attached(model, [(attn_hook(layer, "z"), hook)]):
                    out = _patched_logits(model, run, layer, len(heads), start if resumable else None)
                offset = corrupt.shape[1] - out.shape[1]
                for j, head in enumerate(heads):
                    buffer[:, offset:] = out[j * batch : (j + 1) * batch]
                    values[layer, head] = float(metric(buffer))
    return values, clean_logits, run, resumable


def _layers(layers: Iterable[int] | None, n_layers: int) -> list[int]:
    chosen = list(range(n_layers)) if layers is None else sorted({int(x) for x in layers})
    bad = [x for x in chosen if not 0 <= x < n_layers]
    if bad:
        raise HeadIndexError(f"layers must lie in [0, {n_layers}); got {bad}")
    return chosen


def _patched_logits(model: Any, run: Recorded, layer: int, copies: int, start: int | None) -> Tensor:
    """Logits of ``copies`` copies of the corrupted batch, from ``layer`` on (a full forward if ``start`` is None)."""
    if start is None:
        return model(run.tokens.repeat(copies, 1))
    resid = run.resid[layer][:, start:]
    return run.resume(layer, resid.repeat(copies, 1, 1), start)


class _SweepHook:
    """Row block ``j`` (one copy of the batch) gets clean ``z`` of ``heads[j]`` at ``positions``."""

    def __init__(self, clean_z: Tensor, heads: list[int], positions: Tensor, batch: int) -> None:
        self.clean_z, self.heads, self.positions, self.batch = clean_z, heads, positions, batch

    def __call__(self, z: Tensor, hook: Any) -> Tensor:
        offset = self.clean_z.shape[1] - z.shape[1]
        pos = self.positions[self.positions >= offset].to(z.device)
        out = z.clone()
        for j, head in enumerate(self.heads):
            rows = slice(j * self.batch, (j + 1) * self.batch)
            out[rows, pos - offset, head] = self.clean_z[:, pos, head].to(z.dtype)
        return out
