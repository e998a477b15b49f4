"""Re-run a recorded forward from a middle layer, optionally for its last positions only.

Patching a head at layer ``L`` leaves every layer below ``L`` untouched, so a patched run can
start at block ``L`` from the recorded ``hook_resid_pre``. When only positions ``>= p0`` are
patched, the residual stream before ``p0`` is also unchanged in every layer, so only the suffix
``[p0:]`` needs to run, attending to the recorded keys and values of the earlier positions.

``HookedTransformer`` blocks are called directly (with TransformerLens key/value cache entries
built from the recorded ``hook_k`` / ``hook_v``). ``TransformerBridge`` blocks wrap Hugging Face
decoder layers, which need the extra arguments (position embeddings, attention mask, cache) the
HF model passes them; these are recorded during the run and replayed, and the HF
``DynamicCache`` the run filled supplies the earlier keys and values. :meth:`Recorded.check`
verifies the replay against the recorded logits, so a model whose blocks cannot be replayed is
detected and the caller falls back to full forwards.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from headscope._tolerance import relative
from headscope.hooks import block_hook, capture
from headscope.models import model_info
from headscope.models._kv import bridge_cache_names

_CACHE_ARGS = ("past_key_values", "cache", "layer_past")  # "cache" from transformers 5.24 on
_DROP_ARGS = (*_CACHE_ARGS, "use_cache", "cache_position", "hidden_states", "output_attentions")


@dataclass
class Recorded:
    """One forward of a model: its logits, every layer's ``hook_resid_pre``, extra hooks, and what resuming needs."""

    model: Any
    tokens: Tensor
    logits: Tensor
    resid: list[Tensor]
    acts: dict[str, Tensor]
    block_args: list[dict[str, Any]] | None  # bridge: the arguments each block received
    kv: list[tuple[Tensor, Tensor]] | None  # per layer keys/values as the model's cache stores them
    cache_name: str = "past_key_values"  # bridge: the name the HF layer gives its cache argument

    def resume(self, layer: int, resid: Tensor, start: int = 0) -> Tensor:
        """Logits of blocks ``layer..`` run on ``resid`` (``[n * batch, pos - start, d_model]``).

        Rows are ``n`` copies of the recorded batch, copy-major. With ``start > 0``, ``resid``
        holds positions ``[start:]`` only and attends to the recorded keys/values before ``start``.
        """
        copies = resid.shape[0] // self.tokens.shape[0]
        if self.block_args is None:
            return self._resume_hooked(layer, resid, start, copies)
        return self._resume_bridge(layer, resid, start, copies)

    def check(self, start: int = 0) -> bool:
        """Does resuming from layer 0 reproduce the recorded logits (to rounding of the model's dtype)?

        Relative to the largest logit: 1e-4 in float32, :func:`headscope._tolerance.relative` below.
        """
        try:
            with torch.no_grad():
                out = self.resume(0, self.resid[0][:, start:], start)
        except Exception:
            return False
        want = self.logits[:, start:]
        scale = max(1.0, want.abs().max().item())
        return out.shape == want.shape and bool((out - want).abs().max() <= relative(want.dtype) * scale)

    def _resume_hooked(self, layer: int, x: Tensor, start: int, copies: int) -> Tensor:
        model = self.model
        entries: list[Any] = [None] * len(model.blocks)
        if start > 0:
            entry_cls = _hooked_cache_entry()
            for i in range(layer, len(model.blocks)):
                k, v = self.kv[i]  # type: ignore[index]
                entries[i] = entry_cls(_rows(k[:, :start], copies), _rows(v[:, :start], copies), frozen=True)
        for i in range(layer, len(model.blocks)):
            x = model.blocks[i](x, past_kv_cache_entry=entries[i])
        return model.unembed(model.ln_final(x))

    def _resume_bridge(self, layer: int, x: Tensor, start: int, copies: int) -> Tensor:
        from transformers import DynamicCache

        model = self.model
        cache = None
        if start > 0:
            cache = DynamicCache()
            for i, (k, v) in enumerate(self.kv):  # type: ignore[arg-type]
                cache.update(_rows(k[:, :, :start], copies), _rows(v[:, :, :start], copies), i)
        batch = self.tokens.shape[0]
        with bridge_cache_names(model):
            for i in range(layer, len(model.blocks)):
                recorded = self.block_args[i]  # type: ignore[index]
                args = {
                    k: _suffix(k, _copies(v, copies, batch), start) for k, v in recorded.items() if k not in _DROP_ARGS
                }
                if start > 0:
                    args[self.cache_name] = cache
                    args["use_cache"] = True
                    if "cache_position" in recorded:
                        args["cache_position"] = torch.arange(start, self.tokens.shape[1], device=x.device)
                else:
                    args["use_cache"] = False
                out = model.blocks[i](x, **args)
                x = out[0] if isinstance(out, tuple) else out
        return model.unembed(model.ln_final(x))


def record(model: Any, tokens: Tensor, names: list[str], *, keep_kv: bool) -> Recorded:
    """Run ``model`` on ``tokens`` once, recording what :meth:`Recorded.resume` needs plus ``names``."""
    info = model_info(model)
    resid_names = [block_hook(layer, "resid_pre") for layer in range(info.n_layers)]
    kv_names = []
    hooked = info.kind == "hooked"
    if hooked and keep_kv:
        kv_names = [f"blocks.{layer}.attn.hook_{s}" for layer in range(info.n_layers) for s in ("k", "v")]
    block_args: list[dict[str, Any]] | None = None if hooked else [{} for _ in range(info.n_layers)]
    handles = []
    if block_args is not None:
        for i, block in enumerate(model.blocks):
            handles.append(block.register_forward_pre_hook(_arg_recorder(block, block_args[i]), with_kwargs=True))
    try:
        names_seen = list(dict.fromkeys(resid_names + kv_names + names))
        with torch.no_grad(), bridge_cache_names(model), capture(model, names_seen) as acts:
            logits = model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    kv = None
    if hooked and keep_kv:
        kv = [(acts[f"blocks.{i}.attn.hook_k"], acts[f"blocks.{i}.attn.hook_v"]) for i in range(info.n_layers)]
    elif block_args is not None and keep_kv:
        cache = next((a[n] for a in block_args[:1] for n in _CACHE_ARGS if a.get(n) is not None), None)
        if cache is not None and len(getattr(cache, "layers", ())) == info.n_layers:
            kv = [(lay.keys, lay.values) for lay in cache.layers]
    cache_name = next((n for n in _CACHE_ARGS if block_args and n in block_args[0]), "past_key_values")
    for args in block_args or []:
        for n in _CACHE_ARGS:
            args.pop(n, None)  # the cache object is mutable: keep only the snapshot taken above
    return Recorded(
        model=model,
        tokens=tokens,
        logits=logits.detach(),
        resid=[acts[n] for n in resid_names],
        acts={n: acts[n] for n in names},
        block_args=block_args,
        kv=kv,
        cache_name=cache_name,
    )


def _arg_recorder(block: Any, store: dict[str, Any]) -> Any:
    signature = inspect.signature(block.original_component.forward)

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        extra = bound.pop("kwargs", {}) if "kwargs" in bound else {}
        store.clear()
        store.update(bound)
        store.update(extra)

    return hook


def _hooked_cache_entry() -> type:
    try:
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry as entry
    except ImportError:  # older TransformerLens 3.x layouts
        from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCacheEntry as entry
    return entry


def _rows(t: Tensor, copies: int) -> Tensor:
    return t.repeat(copies, *([1] * (t.ndim - 1))) if copies > 1 else t


def _copies(value: Any, copies: int, batch: int) -> Any:
    """Repeat batch-shaped tensors for ``copies`` copies of the batch (batch-1 tensors broadcast)."""
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch and batch > 1:
        return _rows(value, copies)
    if isinstance(value, tuple):
        return tuple(_copies(v, copies, batch) for v in value)
    return value


def _suffix(name: str, value: Any, start: int) -> Any:
    """Cut position-indexed block arguments to the query positions ``[start:]``."""
    if start == 0 or value is None:
        return value
    if name == "position_embeddings" and isinstance(value, tuple):
        return tuple(t[:, start:] for t in value)
    if name == "position_ids" and isinstance(value, Tensor):
        return value[..., start:]
    if name == "attention_mask" and isinstance(value, Tensor) and value.ndim == 4:
        return value[..., start:, :]
    return value
