"""Carry out a :class:`Knockout`, on every model kind, through one of three routes.

``attention`` picks how attention runs while the knockout holds:

- ``"fused"``: a bridge of a Llama, Mistral or Qwen2/3 decoder runs sdpa in every layer and only
  the knocked-out rows are rewritten (:mod:`headscope.ablation._fused`); no ``[query, key]``
  matrix is built, KV-cached generation works in every mode, and the logits equal the eager
  route's to float rounding. Hooks on ``hook_pattern`` / ``hook_attn_scores`` cannot fire there
  and make it raise (see :mod:`headscope.models._fused_bridge`).
- ``"eager"``: TransformerLens's attention with hooks (:mod:`headscope.ablation._eager`); ``route``
  then picks ``"scores"`` (edit ``hook_attn_scores``) or ``"z"`` (rewrite ``hook_z``) for edge
  and uniform knockouts, ``"auto"`` taking ``"scores"`` where ``model_info(model).score_edits``.
- ``"auto"`` (default): fused wherever it can run and ``route`` is ``"auto"``, eager otherwise
  (HookedTransformer, compatibility mode, GPT-2 and other architectures, user hooks on the
  pattern or scores).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from headscope._types import Attention
from headscope.ablation._eager import ScoresKnockout, ZKnockout, hand_pattern, local_window, pattern_atol, qk_sites
from headscope.ablation._fused import FusedKnockout
from headscope.ablation._inputs import encoded
from headscope.ablation._spec import Knockout, Mode, Route
from headscope.errors import ConfigError, ModelError, SpanError
from headscope.heads import Heads
from headscope.hooks import HookFn, attached, attn_hook, capture
from headscope.models import ModelInfo, model_info
from headscope.models._fused_bridge import fused_bridge, wants_fused
from headscope.tasks import EncodedSample, Sample

__all__ = ["Attention", "apply_knockout", "knockout", "uses_fused"]


def uses_fused(model: Any, attention: str, route: str = "auto") -> bool:
    """Whether a knockout with these options takes the fused route; raises when ``"fused"`` cannot run."""
    return wants_fused(model, attention, eager_because=None if route == "auto" else f"route={route!r}")


@contextmanager
def apply_knockout(
    model: Any,
    spec: Knockout,
    *,
    sample: Sample | EncodedSample | None = None,
    route: Route = "auto",
    attention: Attention = "auto",
) -> Iterator[None]:
    """Carry out ``spec`` on every forward pass of ``model`` for the duration of a ``with`` block."""
    info = model_info(model)
    if sample is not None:
        spec = spec.for_sample(encoded(model, sample))
    if spec.span is not None:
        raise SpanError(
            f"this edge knockout blocks the {spec.span!r} span, which differs per sample; "
            "pass sample= (a Sample or EncodedSample) or resolve it first with spec.for_sample(encoded)"
        )
    spec.check(info)
    by_layer: dict[int, list[int]] = {}
    for layer, head in spec.heads:
        by_layer.setdefault(layer, []).append(head)
    means = {
        layer: torch.tensor([m for (l_, _), m in zip(spec.heads, spec.means, strict=True) if l_ == layer])
        for layer in by_layer
        if spec.means is not None
    }
    fused = uses_fused(model, attention, route)
    if not spec.heads:  # nothing to knock out: the model runs exactly as it would outside the block
        yield
        return
    if fused:
        edits = {layer: FusedKnockout(h, spec, info.kv_group, means.get(layer)) for layer, h in by_layer.items()}
        with fused_bridge(model, edits):
            yield
        return
    use_scores = _use_scores(spec, info, route)
    scale = None
    if spec.mode == "edge" and not use_scores and spec.heads:
        scale = _probe_scale(model, info, spec.heads[0][0])
    hooks: list[tuple[str, HookFn]] = []
    for layer, heads in sorted(by_layer.items()):
        if use_scores:
            hooks += ScoresKnockout(model, layer, heads, spec).hooks()
        else:
            z = ZKnockout(model, layer, heads, spec, group=info.kv_group, scale=scale, means=means.get(layer))
            hooks += z.hooks()
    with attached(model, hooks):
        yield


@contextmanager
def knockout(
    model: Any,
    heads: Heads,
    mode: Mode = "uniform",
    *,
    keys: Any = None,
    span: str | None = None,
    queries: Any = None,
    sample: Sample | EncodedSample | None = None,
    route: Route = "auto",
    attention: Attention = "auto",
) -> Iterator[Knockout]:
    """Knock out ``heads`` for every forward pass (prefill and generation) inside the block.

    Builds a :class:`Knockout` (see there for the modes) and applies it; the block receives the
    spec. For ``mode="mean"`` build the spec with :func:`mean_knockout` and use ``spec.applied``.
    ``attention`` and ``route`` pick how it is carried out (see the module docstring).

    >>> import torch
    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> tokens = torch.tensor([[0, 5, 9, 11, 7]])
    >>> with knockout(model, [(0, 1), (1, 3)], mode="edge", keys=[1, 2]) as spec:
    ...     fused = model(tokens)
    >>> with knockout(model, [(0, 1), (1, 3)], mode="edge", keys=[1, 2], attention="eager"):
    ...     eager = model(tokens)
    >>> spec.mode, bool(torch.equal(fused, model(tokens)))  # the knockout changed the logits
    ('edge', False)
    >>> bool((fused - eager).abs().max() <= 1e-5 * eager.abs().max())  # both routes agree to float32 rounding
    True
    """
    spec = Knockout(tuple(heads), mode, keys=keys, span=span, queries=queries)
    with apply_knockout(model, spec, sample=sample, route=route, attention=attention):
        yield spec


def _use_scores(spec: Knockout, info: ModelInfo, route: str) -> bool:
    if route not in ("auto", "scores", "z"):
        raise ConfigError(f"route must be 'auto', 'scores' or 'z'; got {route!r}")
    if spec.mode not in ("edge", "uniform"):
        return False
    if route == "scores" and not info.score_edits:
        raise ModelError(
            f"{info.name} ignores edits of hook_attn_scores (its attention runs inside Hugging Face code); "
            "use route='z' or route='auto'"
        )
    return route == "scores" or (route == "auto" and info.score_edits)


def _probe_scale(model: Any, info: ModelInfo, layer: int) -> float | None:
    """The factor between ``q @ k`` and the pre-softmax scores, found on a short probe input (None: no match).

    The candidate whose pattern comes closest to the model's wins, if it is within rounding of the
    model's dtype (1e-5 in float32; :func:`~headscope.ablation._eager.pattern_atol` below).
    """
    q_site, k_site = qk_sites(model, layer)
    tokens = (torch.arange(1, 9) % info.d_vocab).unsqueeze(0).to(next(model.parameters()).device)
    with torch.no_grad(), capture(model, [q_site, k_site, attn_hook(layer, "pattern")]) as acts:
        model(tokens)
    seen = acts[attn_hook(layer, "pattern")]
    pattern = seen.float()
    k = acts[k_site].repeat_interleave(info.kv_group, dim=2)
    candidates = [1 / math.sqrt(info.d_head), 1.0]
    attn_scale = float(getattr(model.cfg, "attn_scale", -1) or -1)
    if attn_scale > 0:
        candidates.insert(0, 1 / attn_scale)
    window = local_window(model, layer)
    gaps = [float((hand_pattern(acts[q_site], k, c, 0, window) - pattern).abs().max()) for c in candidates]
    best = min(range(len(candidates)), key=gaps.__getitem__)
    tolerance = 1e-5 if seen.dtype in (torch.float32, torch.float64) else pattern_atol(seen.dtype)
    return candidates[best] if gaps[best] <= tolerance else None
