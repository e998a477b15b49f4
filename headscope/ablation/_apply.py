"""Carry out a :class:`Knockout` with hooks, on every model kind.

Two routes for edge and uniform knockouts:

- **scores**: edit ``hook_attn_scores`` (blocked keys to ``-inf``, or every visible key to 0 for
  uniform attention). Used where ``model_info(model).score_edits``. ``hook_pattern`` is then read
  back on every forward to verify the edit took effect; if it did not, :class:`ModelError`.
- **z**: rewrite the head's output ``hook_z`` in the same forward pass from its value vectors
  (``hook_v``, expanded over grouped-query heads): ``z_new = z - (p_old - p_new) @ v``. ``p_old`` is
  the pattern from ``hook_pattern`` when it fires before ``hook_z``; on bridges that compute
  attention inside Hugging Face code it fires after, so ``p_old`` is recomputed from
  ``hook_rot_q``/``hook_q`` and ``hook_rot_k``/``hook_k`` with the score scale found by a probe, and
  checked against ``hook_pattern`` when that fires (a mismatch, e.g. a local-attention window,
  raises :class:`ModelError`). Uniform mode averages over the keys the model's own mask leaves
  visible (read from ``hook_attn_scores`` when it fires before ``hook_z``; otherwise the causal
  prefix, checked against ``hook_pattern``: padding or a local window there raises). This route
  needs every key's value vector in each forward, so it does not combine with a KV cache: a cached
  step raises :class:`ModelError` (decode with ``use_past_kv_cache=False``).

Zero and mean knockouts always edit ``hook_z``, which is the input of ``W_O`` on every kind. Query
positions are absolute: with a KV cache the scores hook sees ``[query=new tokens, key=all]`` and
offsets rows by ``n_key - n_query``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from headscope.ablation._inputs import encoded
from headscope.ablation._spec import Knockout, Mode, Route
from headscope.errors import ConfigError, ModelError, SpanError
from headscope.heads import Heads
from headscope.hooks import HookFn, attached, attn_hook, block_hook, capture
from headscope.models import ModelInfo, model_info
from headscope.tasks import EncodedSample, Sample

__all__ = ["apply_knockout", "knockout"]

_PATTERN_ATOL = 1e-4
_CACHE_HINT = (
    "the 'z' route needs every key's value vector in each forward: decode without a KV cache "
    "(model.generate(..., use_past_kv_cache=False)), or use route='scores' where the model honours score edits"
)


@contextmanager
def apply_knockout(
    model: Any, spec: Knockout, *, sample: Sample | EncodedSample | None = None, route: Route = "auto"
) -> Iterator[None]:
    """Attach the hooks that carry out ``spec`` for the duration of a ``with`` block."""
    info = model_info(model)
    if sample is not None:
        spec = spec.for_sample(encoded(model, sample))
    if spec.span is not None:
        raise SpanError(
            f"this edge knockout blocks the {spec.span!r} span, which differs per sample; "
            "pass sample= (a Sample or EncodedSample) or resolve it first with spec.for_sample(encoded)"
        )
    spec.check(info)
    use_scores = _use_scores(spec, info, route)
    scale = None
    if spec.mode == "edge" and not use_scores and spec.heads:
        scale = _probe_scale(model, info, spec.heads[0][0])
    hooks: list[tuple[str, HookFn]] = []
    for layer in sorted({layer for layer, _ in spec.heads}):
        heads = [h for l_, h in spec.heads if l_ == layer]
        means = None
        if spec.means is not None:
            means = torch.tensor([m for (l_, _), m in zip(spec.heads, spec.means, strict=True) if l_ == layer])
        hooks += _LayerKnockout(model, layer, heads, spec, use_scores, scale, means).hooks()
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
) -> Iterator[Knockout]:
    """Knock out ``heads`` for every forward pass (prefill and generation) inside the block.

    Builds a :class:`Knockout` (see there for the modes) and applies it; the block receives the
    spec. For ``mode="mean"`` build the spec with :func:`mean_knockout` and use ``spec.applied``.

    >>> import torch
    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> tokens = torch.tensor([[0, 5, 9, 11, 7]])
    >>> with knockout(model, [(0, 1), (1, 3)], mode="edge", keys=[1, 2]) as spec:
    ...     logits = model(tokens)
    >>> spec.mode, bool(torch.equal(logits, model(tokens)))
    ('edge', False)
    """
    spec = Knockout(tuple(heads), mode, keys=keys, span=span, queries=queries)
    with apply_knockout(model, spec, sample=sample, route=route):
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


def _qk_sites(model: Any, layer: int) -> tuple[str, str]:
    rotary = attn_hook(layer, "rot_q") in model.hook_dict
    return (attn_hook(layer, "rot_q" if rotary else "q"), attn_hook(layer, "rot_k" if rotary else "k"))


def _hand_pattern(q: Tensor, k: Tensor, scale: float, offset: int) -> Tensor:
    """Causal softmax of ``scale * q @ k`` as ``[batch, head, query, key]``, float32; ``k`` is per query head."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    visible = _causal(q.shape[1], k.shape[1], offset, q.device)
    return scores.masked_fill(~visible, float("-inf")).softmax(-1)


def _causal(n_query: int, n_key: int, offset: int, device: torch.device) -> Tensor:
    rows = torch.arange(n_query, device=device)[:, None] + offset
    return torch.arange(n_key, device=device)[None, :] <= rows


def _probe_scale(model: Any, info: ModelInfo, layer: int) -> float | None:
    """The factor between ``q @ k`` and the pre-softmax scores, found on a short probe input (None: no match)."""
    q_site, k_site = _qk_sites(model, layer)
    tokens = (torch.arange(1, 9) % info.d_vocab).unsqueeze(0).to(next(model.parameters()).device)
    with torch.no_grad(), capture(model, [q_site, k_site, attn_hook(layer, "pattern")]) as acts:
        model(tokens)
    pattern = acts[attn_hook(layer, "pattern")].float()
    k = acts[k_site].repeat_interleave(info.kv_group, dim=2)
    candidates = [1 / math.sqrt(info.d_head), 1.0]
    attn_scale = float(getattr(model.cfg, "attn_scale", -1) or -1)
    if attn_scale > 0:
        candidates.insert(0, 1 / attn_scale)
    return next(
        (c for c in candidates if torch.allclose(_hand_pattern(acts[q_site], k, c, 0), pattern, atol=1e-5)), None
    )


class _LayerKnockout:
    """The hooks of one layer, sharing state between the sites of one forward pass."""

    def __init__(
        self,
        model: Any,
        layer: int,
        heads: list[int],
        spec: Knockout,
        use_scores: bool,
        scale: float | None,
        means: Tensor | None,
    ) -> None:
        self.model, self.layer, self.spec = model, layer, spec
        self.heads = torch.tensor(heads)
        self.queries = None if spec.queries is None else torch.tensor(spec.queries, dtype=torch.long)
        self.use_scores, self.scale, self.means = use_scores, scale, means
        self.group = model_info(model).kv_group
        self.acts: dict[str, Tensor] = {}
        self.offset: int | None = None  # n_key - n_query, seen at scores/pattern before z
        self.pending: Tensor | None = None  # hand-computed pattern awaiting hook_pattern's check
        self.averaged: tuple[Tensor, Tensor] | None = None  # (rows, [batch, head, row, key] keys uniform averaged)
        self.z_first = False  # hook_z ran before hook_pattern in this forward
        self.empty: Tensor | None = None  # [batch, query, head] rows with every key blocked
        self.deferred: SpanError | None = None  # raised at hook_pattern unless a KV cache explains it

    def hooks(self) -> list[tuple[str, HookFn]]:
        site = lambda name: attn_hook(self.layer, name)  # noqa: E731
        hooks: list[tuple[str, HookFn]] = [(block_hook(self.layer, "resid_pre"), self.reset)]
        if self.use_scores:
            hooks.append((site("attn_scores"), self.edit_scores))
        hooks.append((site("pattern"), self.read_pattern))
        if not self.use_scores and self.spec.mode in ("edge", "uniform"):
            extra = _qk_sites(self.model, self.layer) if self.spec.mode == "edge" else (site("attn_scores"),)
            names = [site("v"), *(name for name in extra if name in self.model.hook_dict)]
            hooks += [(name, self.recorder(name)) for name in names]
        hooks.append((site("z"), self.edit_z))
        return hooks

    # -- shared helpers ---------------------------------------------------------------------------

    def reset(self, resid: Tensor, hook: Any) -> None:
        """Start of this layer in a new forward pass: forget what the last one left."""
        self.acts.clear()
        self.offset, self.pending, self.z_first, self.empty, self.deferred = None, None, False, None, None
        self.averaged = None

    @property
    def needs_positions(self) -> bool:
        return self.spec.queries is not None or self.spec.mode in ("edge", "uniform")

    def recorder(self, name: str) -> HookFn:
        def record(act: Tensor, hook: Any) -> None:
            self.acts[name.rsplit("_", 1)[-1]] = act  # "q" / "k" / "v" / "scores"

        return record

    def rows(self, n_query: int, offset: int, device: torch.device) -> Tensor:
        if self.queries is None:
            return torch.arange(n_query, device=device)
        inside = self.queries[(self.queries >= offset) & (self.queries < offset + n_query)]
        return (inside - offset).to(device)

    def blocked(self, n_key: int, device: torch.device) -> Tensor:
        keys = self.spec.keys or ()
        if keys[-1] >= n_key:
            raise SpanError(
                f"edge knockout blocks key position {keys[-1]}, but this forward pass has only {n_key} positions"
            )
        mask = torch.zeros(n_key, dtype=torch.bool, device=device)
        mask[list(keys)] = True
        return mask

    # -- hook functions ---------------------------------------------------------------------------

    def edit_scores(self, scores: Tensor, hook: Any) -> Tensor | None:
        if self.z_first:
            raise ModelError(self.discarded())
        n_query, n_key = scores.shape[-2:]
        self.offset = n_key - n_query
        rows = self.rows(n_query, self.offset, scores.device)
        if not len(rows):
            return None
        h, r = self.heads.to(scores.device)[:, None], rows[None, :]
        sub = scores[:, h, r]
        visible = (sub > torch.finfo(sub.dtype).min / 2) & _causal(n_query, n_key, self.offset, scores.device)[rows]
        if self.spec.mode == "uniform":
            new = torch.where(visible, torch.zeros_like(sub), sub)
        else:
            blocked = self.blocked(n_key, scores.device)
            empty = ~(visible & ~blocked).any(-1)
            new = sub.masked_fill(visible & blocked & ~empty[..., None], float("-inf"))
            self.empty = self.scatter_rows(empty, n_query, scores.shape[1], rows)
        out = scores.clone()
        out[:, h, r] = new
        return out

    def read_pattern(self, pattern: Tensor, hook: Any) -> None:
        n_query, n_key = pattern.shape[-2:]
        if not self.z_first:  # before hook_z, as on most kinds
            self.offset = n_key - n_query
            if not self.use_scores and self.spec.mode in ("edge", "uniform"):
                self.acts["pattern"] = pattern
            if self.use_scores:
                self.verify_edit(pattern)
            return
        if self.needs_positions and n_query != n_key:
            raise ModelError(f"layer {self.layer} saw {n_query} new queries over {n_key} keys: {_CACHE_HINT}")
        if self.deferred is not None:
            raise self.deferred
        if self.averaged is not None:
            self.check_averaged(pattern)
        if self.pending is not None:
            expected = self.pending
            seen = pattern[:, self.heads.to(pattern.device)].float()
            if not torch.allclose(expected, seen, atol=_PATTERN_ATOL):
                raise ModelError(
                    f"the attention pattern recomputed from q and k at layer {self.layer} differs from the model's "
                    f"by {(expected - seen).abs().max().item():.2g} (a local-attention window?), so this edge "
                    "knockout was not exact; use mode='zero' or 'mean' on this model"
                )

    def verify_edit(self, pattern: Tensor) -> None:
        n_query = pattern.shape[-2]
        rows = self.rows(n_query, self.offset or 0, pattern.device)
        if not len(rows):
            return
        sub = pattern[:, self.heads.to(pattern.device)[:, None], rows[None, :]].float()
        if self.spec.mode == "uniform":
            positive = torch.where(sub > 0, sub, torch.inf)
            ok = bool((sub.amax(-1) - positive.amin(-1) <= 1e-5).all())
        else:
            empty = self.empty[:, rows[:, None], self.heads.to(pattern.device)[None, :]].transpose(1, 2)
            ok = bool(((sub[..., list(self.spec.keys or ())] <= 1e-6) | empty[..., None]).all())
        if not ok:
            raise ModelError(self.discarded())

    def discarded(self) -> str:
        return (
            f"the hook_attn_scores edit of layer {self.layer} did not reach the attention pattern; "
            "this model discards score edits: use route='z'"
        )

    def edit_z(self, z: Tensor, hook: Any) -> Tensor | None:
        n_query = z.shape[1]
        offset = self.offset
        if offset is None:  # hook_pattern comes after hook_z here: assume a full forward, checked there
            offset, self.z_first = 0, True
        rows = self.rows(n_query, offset, z.device)
        h = self.heads.to(z.device)
        empty = self.empty
        if self.spec.mode in ("edge", "uniform") and not self.use_scores:
            return self.rewrite_z(z, rows, offset)
        if self.spec.mode in ("zero", "mean") and len(rows):
            out = z.clone()
            value = 0.0 if self.means is None else self.means.to(z)
            out[:, rows[:, None], h[None, :]] = value
            return out
        if empty is not None and bool(empty.any()):
            return z.masked_fill(empty[..., None], 0.0)
        return None

    def rewrite_z(self, z: Tensor, rows: Tensor, offset: int) -> Tensor | None:
        v = self.acts.pop("v").repeat_interleave(self.group, dim=2)
        pattern = self.acts.pop("pattern", None)
        q, k, scores = self.acts.pop("q", None), self.acts.pop("k", None), self.acts.pop("scores", None)
        n_key = v.shape[1]
        if n_key != z.shape[1] + offset or (pattern is not None and pattern.shape[-1] != n_key):
            raise ModelError(
                f"layer {self.layer}'s queries see {z.shape[1] + offset} keys but hook_v holds {n_key} value vectors "
                f"(a KV cache): {_CACHE_HINT}"
            )
        if not len(rows):
            return None
        h = self.heads.to(z.device)
        v = v[:, :, h].float()
        visible = _causal(z.shape[1], n_key, offset, z.device)[rows]
        if self.spec.mode == "uniform":
            return self.average_z(z, v, rows, visible, scores, pattern)
        if pattern is None:
            if q is None or k is None or self.scale is None:
                raise ModelError(
                    f"layer {self.layer}'s attention pattern is not available before hook_z and cannot be recomputed "
                    "from hook_q and hook_k, so an edge knockout cannot be carried out exactly on this model; "
                    "use mode='zero' or 'mean'"
                )
            k = k.repeat_interleave(self.group, dim=2)[:, :, h]
            self.pending = _hand_pattern(q[:, :, h], k, self.scale, offset)
            p_old = self.pending[:, :, rows]
        else:
            p_old = pattern[:, h][:, :, rows].float()
        try:
            keep = visible & ~self.blocked(n_key, z.device)
        except SpanError as error:
            if not self.z_first:
                raise
            self.deferred = error  # hook_pattern tells next whether this is a KV-cache step instead
            return None
        kept = p_old * keep
        mass = kept.sum(-1, keepdim=True)
        p_new = torch.where(mass > 0, kept / mass.clamp_min(torch.finfo(mass.dtype).tiny), torch.zeros_like(kept))
        out = z.clone()
        delta = torch.einsum("bhqk,bkhd->bqhd", p_old - p_new, v)
        out[:, rows[:, None], h[None, :]] = (z[:, rows[:, None], h[None, :]].float() - delta).to(z.dtype)
        empty = ~keep.any(-1).expand(z.shape[0], len(h), len(rows))
        return out.masked_fill(self.scatter_rows(empty, z.shape[1], z.shape[2], rows)[..., None], 0.0)

    def average_z(
        self, z: Tensor, v: Tensor, rows: Tensor, causal: Tensor, scores: Tensor | None, pattern: Tensor | None
    ) -> Tensor:
        """Uniform attention over the keys each query row can see: the model's own mask where it is known.

        ``hook_attn_scores`` (when it fires before ``hook_z``) holds the model's mask (causal,
        padding, local windows); without it the causal prefix is used and checked against
        ``hook_pattern``, which must not be zero on any averaged key.
        """
        h = self.heads.to(z.device)
        visible = causal.expand(z.shape[0], len(h), *causal.shape)
        if scores is not None:
            sub = scores[:, h][:, :, rows]
            visible = visible & (sub > torch.finfo(sub.dtype).min / 2)
        else:
            self.averaged = (rows, visible)
            if pattern is not None:
                self.check_averaged(pattern)
        p_new = visible.float() / visible.sum(-1, keepdim=True).clamp_min(1)
        out = z.clone()
        out[:, rows[:, None], h[None, :]] = torch.einsum("bhqk,bkhd->bqhd", p_new, v).to(z.dtype)
        return out

    def check_averaged(self, pattern: Tensor) -> None:
        rows, visible = self.averaged  # type: ignore[misc]
        seen = pattern[:, self.heads.to(pattern.device)][:, :, rows.to(pattern.device)]
        if bool((visible & (seen == 0)).any()):
            raise ModelError(
                f"layer {self.layer} masks key positions that this uniform knockout averaged over (padding, or a "
                "local-attention window), and the model exposes no hook_attn_scores before hook_z to read its mask "
                "from; use mode='zero' or 'mean', or unpadded inputs within the window"
            )

    def scatter_rows(self, empty: Tensor, n_query: int, n_heads: int, rows: Tensor) -> Tensor:
        """``[batch, head, row]`` flags of the selected heads and rows as a ``[batch, query, head]`` mask."""
        mask = torch.zeros(empty.shape[0], n_query, n_heads, dtype=torch.bool, device=empty.device)
        mask[:, rows[:, None], self.heads.to(empty.device)[None, :]] = empty.transpose(1, 2)
        return mask
