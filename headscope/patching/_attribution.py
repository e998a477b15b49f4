"""Attribution patching: every head's patching effect estimated from one forward and one backward pass.

The first-order estimate of patching head ``h`` of layer ``l`` is
``sum over positions and d_head of  dmetric/dz  *  (z_clean - z_corrupted)``, with the gradient
taken on the corrupted run (Nanda 2023). It is exact when the metric is linear in ``z`` and a
good guide to the exact sweep when effects are small; check the heads you act on with
:func:`head_patching_sweep`.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from headscope.errors import ConfigError
from headscope.hooks import attached, attn_hook, capture
from headscope.models import model_info
from headscope.patching._metrics import Metric, metric_name
from headscope.patching._patch import Positions, _as_batch, resolve_positions
from headscope.patching._result import PatchingResult

__all__ = ["attribution_patching"]


def attribution_patching(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # its shape is checked against clean_tokens below
    metric: Metric,
    *,
    positions: Positions = "all",
) -> PatchingResult:
    """Estimate :func:`head_patching_sweep` for every head from one gradient (``method="attribution"``).

    ``values`` are ``baseline + estimated change``, so ``effects()`` compares directly with an
    exact sweep's. Model parameters get no ``.grad``.

    >>> from headscope import load_model
    >>> from headscope.patching import LogitDiff
    >>> model = load_model("tiny-llama")
    >>> clean, corrupt = torch.tensor([[0, 5, 9, 7, 3]]), torch.tensor([[0, 6, 9, 7, 3]])
    >>> attribution_patching(model, clean, corrupt, LogitDiff(5, 6)).method
    'attribution'
    """
    info = model_info(model)
    clean, corrupt = _as_batch(clean_tokens), _as_batch(corrupted_tokens)
    if clean.shape != corrupt.shape:
        raise ConfigError(
            f"clean and corrupted tokens must have the same shape; got {tuple(clean.shape)} and "
            f"{tuple(corrupt.shape)}: pad or trim them to one length"
        )
    info.check_length(corrupt.shape[1])
    pos = resolve_positions(positions, corrupt.shape[1])
    device = next(model.parameters()).device
    names = [attn_hook(layer, "z") for layer in range(info.n_layers)]
    with torch.no_grad(), capture(model, names) as clean_z:
        clean_logits = model(clean.to(device))

    kept: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:
        def keep(z: Tensor, hook: Any) -> Tensor:
            z = z.clone() if z.requires_grad else z.detach().clone().requires_grad_(True)
            kept[name] = z
            return z

        return keep

    with torch.enable_grad(), attached(model, [(n, keeper(n)) for n in names]):
        logits = model(corrupt.to(device))
        value = metric(logits)
        grads = torch.autograd.grad(value, [kept[n] for n in names], allow_unused=True)
    baseline = float(value.detach())
    values = torch.zeros(info.shape)
    for layer, (name, grad) in enumerate(zip(names, grads, strict=True)):
        if grad is None:
            continue
        delta = (clean_z[name] - kept[name].detach())[:, pos]
        values[layer] = (grad[:, pos] * delta).sum(dim=(0, 1, 3)).float().cpu()
    return PatchingResult(
        values=values + baseline,
        metric=metric_name(metric),
        baseline=baseline,
        reference=float(metric(clean_logits)),
        method="attribution",
        settings={
            "model": info.name,
            "site": "z",
            "positions": "all" if isinstance(positions, str) else pos.tolist(),
            "n_tokens": int(corrupt.shape[1]),
            "batch": int(corrupt.shape[0]),
        },
    )
