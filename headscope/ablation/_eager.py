"""The two eager knockout routes: hooks on TransformerLens's attention, one class per route.

- :class:`ScoresKnockout` (edge and uniform where ``model_info(model).score_edits``): edits
  ``hook_attn_scores`` (blocked keys to ``-inf``, or every visible key to 0 for uniform
  attention), then reads ``hook_pattern`` back to verify the edit took effect (else
  :class:`ModelError`).
- :class:`ZKnockout` (zero and mean everywhere; edge and uniform where score edits are
  discarded): rewrites the head's output ``hook_z`` in the same forward pass. Zero and mean set
  it. Edge and uniform recompute it from the head's value vectors (``hook_v``, expanded over
  grouped-query heads): ``z_new = z - (p_old - p_new) @ v``. ``p_old`` is the pattern from
  ``hook_pattern`` when it fires before ``hook_z``; on bridges that compute attention inside
  Hugging Face code it fires after, so ``p_old`` is recomputed from ``hook_rot_q``/``hook_q`` and
  ``hook_rot_k``/``hook_k`` with the score scale found by a probe and the layer's local window
  (:func:`local_window`), and checked against ``hook_pattern`` when that fires (a mismatch
  raises). Uniform averages over the keys the model's own mask leaves visible (read from
  ``hook_attn_scores`` when it fires before ``hook_z``; otherwise the causal prefix within the
  layer's local window, checked against ``hook_pattern``). This
  needs every key's value vector in each forward, so it does not combine with a KV cache: a
  cached step raises :class:`ModelError`.

Each route keeps what one forward pass of its layer has seen in a small per-pass object, created
by the layer's first hook of that pass (``hook_attn_scores`` for the scores route, ``hook_v``
for the z route) and read by the later ones. Query positions are absolute: with a KV cache the
scores hook sees ``[query=new tokens, key=all]`` and offsets rows by ``n_key - n_query``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.ablation._spec import Knockout
from headscope.errors import ModelError, SpanError
from headscope.hooks import HookFn, attn_hook

__all__ = ["ScoresKnockout", "ZKnockout", "causal", "hand_pattern", "local_window", "pattern_atol", "qk_sites"]

_PATTERN_ATOL = 1e-4  # float32; see pattern_atol
_SUPPORT = 1e-3  # a recomputed weight this large on a key the model's pattern holds at exactly 0
_CACHE_HINT = (
    "the 'z' route needs every key's value vector in each forward: decode without a KV cache "
    "(model.generate(..., use_past_kv_cache=False)), or use route='scores' where the model honours score edits, "
    "or attention='fused' on a supported bridge"
)


def qk_sites(model: Any, layer: int) -> tuple[str, str]:
    """The hooks holding the query and key the scores are computed from (post-rotary where rotary)."""
    rotary = attn_hook(layer, "rot_q") in model.hook_dict
    return (attn_hook(layer, "rot_q" if rotary else "q"), attn_hook(layer, "rot_k" if rotary else "k"))


def hand_pattern(
    q: Float[Tensor, "batch query head d_head"],
    k: Float[Tensor, "batch key head d_head"],
    scale: float,
    offset: int,
    window: int | None = None,
) -> Float[Tensor, "batch head query key"]:
    """Causal softmax of ``scale * q @ k`` in float32 (within a local ``window``); ``k`` is per query head."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    visible = causal(q.shape[1], k.shape[1], offset, q.device, window)
    return scores.masked_fill(~visible, float("-inf")).softmax(-1)


def causal(
    n_query: int, n_key: int, offset: int, device: torch.device, window: int | None = None
) -> Bool[Tensor, "query key"]:
    """``[query, key]`` visibility when the queries are the last ``n_query`` positions after ``offset`` earlier ones.

    With a local ``window``, a query at position ``p`` sees the keys ``p - window < k <= p``.

    >>> causal(3, 3, 0, torch.device("cpu"), window=2).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [0, 1, 1]], dtype=torch.int32)
    """
    rows = torch.arange(n_query, device=device)[:, None] + offset
    keys = torch.arange(n_key, device=device)[None, :]
    visible = keys <= rows
    return visible if window is None else visible & (keys > rows - window)


def local_window(model: Any, layer: int) -> int | None:
    """The local-attention window of ``layer`` (keys ``p - window < k <= p``), or ``None`` for global attention.

    Read from the model's config: a HookedTransformer's ``attn_types`` / ``window_size``; a bridge's
    Hugging Face config (GPT-Neo's ``attention_layers`` / ``window_size``, or ``layer_types`` /
    ``sliding_window``). Only the z route needs it: bridges that honour score edits carry their
    windows in ``hook_attn_scores``.
    """
    kinds = getattr(model.cfg, "attn_types", None)
    if kinds is not None:
        return int(model.cfg.window_size) if kinds[layer] == "local" else None
    config = getattr(getattr(model, "original_model", None), "config", None)
    if getattr(config, "attention_layers", None):
        return int(config.window_size) if config.attention_layers[layer] == "local" else None  # type: ignore[union-attr]
    types = getattr(config, "layer_types", None) or ()
    if layer < len(types) and types[layer] == "sliding_attention":
        return getattr(config, "sliding_window", None)
    return None


def pattern_atol(dtype: torch.dtype) -> float:
    """How far a pattern recomputed in float32 may sit from the model's pattern in ``dtype``."""
    return max(_PATTERN_ATOL, 2 * torch.finfo(dtype).eps)


class _Layer:
    """What both eager routes share: the layer's knocked heads, query rows and blocked keys."""

    def __init__(self, model: Any, layer: int, heads: list[int], spec: Knockout) -> None:
        self.model, self.layer, self.spec = model, layer, spec
        self.heads = torch.tensor(heads)
        self.queries = None if spec.queries is None else torch.tensor(spec.queries, dtype=torch.long)

    def rows(self, n_query: int, offset: int, device: torch.device) -> Tensor:
        """Rows (within this forward's queries) of the knocked-out query positions."""
        if self.queries is None:
            return torch.arange(n_query, device=device)
        inside = self.queries[(self.queries >= offset) & (self.queries < offset + n_query)]
        return (inside - offset).to(device)

    def blocked(self, n_key: int, device: torch.device) -> Bool[Tensor, " key"]:
        keys = self.spec.keys or ()
        if keys[-1] >= n_key:
            raise SpanError(
                f"edge knockout blocks key position {keys[-1]}, but this forward pass has only {n_key} positions"
            )
        mask = torch.zeros(n_key, dtype=torch.bool, device=device)
        mask[list(keys)] = True
        return mask

    def scatter_rows(self, empty: Tensor, n_query: int, n_heads: int, rows: Tensor) -> Tensor:
        """``[batch, head, row]`` flags of the selected heads and rows as a ``[batch, query, head]`` mask."""
        mask = torch.zeros(empty.shape[0], n_query, n_heads, dtype=torch.bool, device=empty.device)
        mask[:, rows[:, None], self.heads.to(empty.device)[None, :]] = empty.transpose(1, 2)
        return mask


@dataclass
class _ScoresPass:
    offset: int
    empty: Tensor | None = None  # [batch, query, head] rows with every visible key blocked


class ScoresKnockout(_Layer):
    """Edge or uniform knockout of one layer by editing ``hook_attn_scores``, verified at ``hook_pattern``."""

    def __init__(self, model: Any, layer: int, heads: list[int], spec: Knockout) -> None:
        super().__init__(model, layer, heads, spec)
        self.now: _ScoresPass | None = None

    def hooks(self) -> list[tuple[str, HookFn]]:
        site = lambda name: attn_hook(self.layer, name)  # noqa: E731
        return [(site("attn_scores"), self.edit_scores), (site("pattern"), self.verify), (site("z"), self.zero_empty)]

    def edit_scores(self, scores: Tensor, hook: Any) -> Tensor | None:
        n_query, n_key = scores.shape[-2:]
        self.now = now = _ScoresPass(offset=n_key - n_query)
        rows = self.rows(n_query, now.offset, scores.device)
        if not len(rows):
            return None
        h, r = self.heads.to(scores.device)[:, None], rows[None, :]
        sub = scores[:, h, r]
        visible = (sub > torch.finfo(sub.dtype).min / 2) & causal(n_query, n_key, now.offset, scores.device)[rows]
        if self.spec.mode == "uniform":
            new = torch.where(visible, torch.zeros_like(sub), sub)
        else:
            blocked = self.blocked(n_key, scores.device)
            empty = ~(visible & ~blocked).any(-1)
            new = sub.masked_fill(visible & blocked & ~empty[..., None], float("-inf"))
            now.empty = self.scatter_rows(empty, n_query, scores.shape[1], rows)
        out = scores.clone()
        out[:, h, r] = new
        return out

    def verify(self, pattern: Tensor, hook: Any) -> None:
        if self.now is None:
            raise ModelError(self.discarded())
        rows = self.rows(pattern.shape[-2], self.now.offset, pattern.device)
        if not len(rows):
            return
        sub = pattern[:, self.heads.to(pattern.device)[:, None], rows[None, :]].float()
        if self.spec.mode == "uniform":
            positive = torch.where(sub > 0, sub, torch.inf)
            ok = bool((sub.amax(-1) - positive.amin(-1) <= 1e-5).all())
        else:
            empty = self.now.empty[:, rows[:, None], self.heads.to(pattern.device)[None, :]].transpose(1, 2)  # type: ignore[index]
            ok = bool(((sub[..., list(self.spec.keys or ())] <= 1e-6) | empty[..., None]).all())
        if not ok:
            raise ModelError(self.discarded())

    def zero_empty(self, z: Tensor, hook: Any) -> Tensor | None:
        """End of the pass: rows whose every visible key was blocked attend to nothing (zero output)."""
        now, self.now = self.now, None
        if now is None:
            raise ModelError(self.discarded())
        if now.empty is not None and bool(now.empty.any()):
            return z.masked_fill(now.empty[..., None], 0.0)
        return None

    def discarded(self) -> str:
        return (
            f"the hook_attn_scores edit of layer {self.layer} did not reach the attention pattern; "
            "this model discards score edits: use route='z'"
        )


@dataclass
class _ZPass:
    acts: dict[str, Tensor] = field(default_factory=dict)  # "v", "q", "k", "scores", "pattern"
    offset: int | None = None  # n_key - n_query, seen at hook_pattern before hook_z
    z_first: bool = False  # hook_z ran before hook_pattern in this pass
    pending: Tensor | None = None  # hand-computed pattern awaiting hook_pattern's check
    averaged: tuple[Tensor, Tensor] | None = None  # (rows, [batch, head, row, key] keys uniform averaged)
    deferred: SpanError | None = None  # raised at hook_pattern unless a KV cache explains it


class ZKnockout(_Layer):
    """Any knockout of one layer by rewriting ``hook_z`` (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        layer: int,
        heads: list[int],
        spec: Knockout,
        *,
        group: int,
        scale: float | None = None,
        means: Tensor | None = None,
    ) -> None:
        super().__init__(model, layer, heads, spec)
        self.group, self.scale, self.means = group, scale, means
        self.window = local_window(model, layer)
        self.rewrites = spec.mode in ("edge", "uniform")
        self.now = _ZPass()

    def hooks(self) -> list[tuple[str, HookFn]]:
        site = lambda name: attn_hook(self.layer, name)  # noqa: E731
        hooks: list[tuple[str, HookFn]] = []
        if self.rewrites:
            extra = qk_sites(self.model, self.layer) if self.spec.mode == "edge" else (site("attn_scores"),)
            names = [site("v"), *(name for name in extra if name in self.model.hook_dict)]
            hooks += [(name, self.recorder(name)) for name in names]
        return [*hooks, (site("pattern"), self.read_pattern), (site("z"), self.edit_z)]

    def recorder(self, name: str) -> HookFn:
        def record(act: Tensor, hook: Any) -> None:
            self.now.acts[name.rsplit("_", 1)[-1]] = act  # "v" / "q" / "k" / "scores"

        return record

    def read_pattern(self, pattern: Tensor, hook: Any) -> None:
        now = self.now
        n_query, n_key = pattern.shape[-2:]
        if not now.z_first:  # before hook_z, as on most kinds
            now.offset = n_key - n_query
            if self.rewrites:
                now.acts["pattern"] = pattern
            return
        self.now = _ZPass()  # hook_pattern after hook_z ends the pass
        self.check_pass(now, pattern)

    def check_pass(self, now: _ZPass, pattern: Tensor) -> None:
        """After ``hook_z``: check what ``hook_z`` assumed (a full forward, the recomputed pattern)."""
        n_query, n_key = pattern.shape[-2:]
        needs_positions = self.spec.queries is not None or self.rewrites
        if needs_positions and n_query != n_key:
            raise ModelError(f"layer {self.layer} saw {n_query} new queries over {n_key} keys: {_CACHE_HINT}")
        if now.deferred is not None:
            raise now.deferred
        if now.averaged is not None:
            self.check_averaged(pattern, *now.averaged)
        if now.pending is not None:
            seen = pattern[:, self.heads.to(pattern.device)].float()
            # a key the model hides (a window it did not report) is exactly 0 in its pattern in every dtype
            hidden = bool(((seen == 0) & (now.pending > _SUPPORT)).any())
            if hidden or not torch.allclose(now.pending, seen, atol=pattern_atol(pattern.dtype)):
                raise ModelError(
                    f"the attention pattern recomputed from q and k at layer {self.layer} differs from the model's "
                    f"by {(now.pending - seen).abs().max().item():.2g} (a local-attention window?), so this edge "
                    "knockout was not exact; use mode='zero' or 'mean' on this model"
                )

    def edit_z(self, z: Tensor, hook: Any) -> Tensor | None:
        try:
            out = self.knock_z(z)
        except BaseException:
            self.now = _ZPass()
            raise
        if not self.now.z_first:  # hook_z ends the pass unless hook_pattern still has to check it
            self.now = _ZPass()
        return out

    def knock_z(self, z: Tensor) -> Tensor | None:
        now = self.now
        offset = now.offset
        if offset is None:  # hook_pattern comes after hook_z here: assume a full forward, checked there
            offset, now.z_first = 0, True
        rows = self.rows(z.shape[1], offset, z.device)
        if self.rewrites:
            return self.rewrite_z(z, rows, offset)
        if not len(rows):
            return None
        out = z.clone()
        value = 0.0 if self.means is None else self.means.to(z)
        out[:, rows[:, None], self.heads.to(z.device)[None, :]] = value
        return out

    def rewrite_z(self, z: Tensor, rows: Tensor, offset: int) -> Tensor | None:
        now = self.now
        v = now.acts.pop("v").repeat_interleave(self.group, dim=2)
        pattern = now.acts.pop("pattern", None)
        q, k, scores = now.acts.pop("q", None), now.acts.pop("k", None), now.acts.pop("scores", None)
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
        visible = causal(z.shape[1], n_key, offset, z.device, self.window)[rows]
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
            now.pending = hand_pattern(q[:, :, h], k, self.scale, offset, self.window)
            p_old = now.pending[:, :, rows]
        else:
            p_old = pattern[:, h][:, :, rows].float()
        try:
            keep = visible & ~self.blocked(n_key, z.device)
        except SpanError as error:
            if not now.z_first:
                raise
            now.deferred = error  # hook_pattern tells next whether this is a KV-cache step instead
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
        self, z: Tensor, v: Tensor, rows: Tensor, visible: Tensor, scores: Tensor | None, pattern: Tensor | None
    ) -> Tensor:
        """Uniform attention over the keys each query row can see: the model's own mask where it is known.

        ``hook_attn_scores`` (when it fires before ``hook_z``) holds the model's mask (causal,
        padding, local windows); without it the causal prefix is used and checked against
        ``hook_pattern``, which must not be zero on any averaged key.
        """
        h = self.heads.to(z.device)
        visible = visible.expand(z.shape[0], len(h), *visible.shape)
        if scores is not None:
            sub = scores[:, h][:, :, rows]
            visible = visible & (sub > torch.finfo(sub.dtype).min / 2)
        else:
            self.now.averaged = (rows, visible)
            if pattern is not None:
                self.check_averaged(pattern, rows, visible)
        p_new = visible.float() / visible.sum(-1, keepdim=True).clamp_min(1)
        out = z.clone()
        out[:, rows[:, None], h[None, :]] = torch.einsum("bhqk,bkhd->bqhd", p_new, v).to(z.dtype)
        return out

    def check_averaged(self, pattern: Tensor, rows: Tensor, visible: Tensor) -> None:
        seen = pattern[:, self.heads.to(pattern.device)][:, :, rows.to(pattern.device)]
        if bool((visible & (seen == 0)).any()):
            raise ModelError(
                f"layer {self.layer} masks key positions that this uniform knockout averaged over (padding, or a "
                "local-attention window), and the model exposes no hook_attn_scores before hook_z to read its mask "
                "from; use mode='zero' or 'mean', or unpadded inputs within the window"
            )
