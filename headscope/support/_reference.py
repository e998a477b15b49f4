"""An independent reference for headscope's routes: the plain Hugging Face model with eager attention.

Detection is checked against ``output_attentions=True``. Knockout and patching are checked against
the same HF model with the intervention made inside *its own* eager attention function, so every
family's scaling, soft-capping, sliding windows and rotary layout are the family's code, not
headscope's:

- ``edge``: the blocked keys are added to the family's own additive mask, for the knocked-out heads
  and query rows only (a row left with no visible key outputs zero, as headscope specifies);
- ``uniform``: the rows become the mean of the value vectors over the keys the family's mask leaves
  visible (causal, sliding window);
- ``zero`` / ``mean`` / ``replace``: the head's output rows before the output projection (what
  TransformerLens calls ``hook_z``) are set to zero, the given means, or a recorded run's values.

Families whose attention goes through transformers' ``AttentionInterface`` are edited through a
registered function that calls the family module's ``eager_attention_forward``; GPT-Neo, which has
no interface, through its attention module's ``_attn``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope._types import Choice
from headscope.errors import ModelError

__all__ = ["REFERENCE", "RefEdit", "attention_modules", "load_reference", "reference_edits"]

#: The ``attn_implementation`` name the reference registers in ``AttentionInterface``.
REFERENCE = "headscope_reference"
_SLOT = "_headscope_reference_edit"
EditMode = Choice["edge", "uniform", "zero", "mean", "replace", "record"]
#: ``run(extra)`` computes the family's attention output ``[batch, query, head, d_head]`` with the keys
#: ``extra[b, h, q, k]`` hidden as well (``None``: the family's own mask only).
Run = Callable[[Tensor | None], Tensor]


@dataclass
class RefEdit:
    """What the reference does to ``heads`` of one layer at the absolute query positions ``rows`` (None: all).

    ``keys`` are the blocked key positions (``edge``); ``values`` the per-head means ``[head, d_head]``
    (``mean``) or a recorded output ``[batch, pos, head, d_head]`` (``replace``). ``record`` keeps the
    layer's output in ``recorded``.
    """

    mode: EditMode
    heads: tuple[int, ...] = ()
    rows: tuple[int, ...] | None = None
    keys: tuple[int, ...] = ()
    values: Tensor | None = None
    recorded: Tensor | None = None

    def apply(
        self,
        query: Float[Tensor, "batch head query d_head"],
        value: Float[Tensor, "batch kv_head key d_head"],
        visible: Bool[Tensor, "batch _head query key"],
        run: Run,
    ) -> Float[Tensor, "batch query head d_head"]:
        """The layer's output with this edit made (``visible``: the family's own mask, broadcastable)."""
        batch, n_heads, n_query, _ = query.shape
        n_key = value.shape[-2]
        offset = n_key - n_query
        if self.mode == "record":
            out = run(None)
            self.recorded = out.detach().clone()
            return out
        rows = torch.arange(n_query, device=query.device)
        if self.rows is not None:
            wanted = torch.tensor(self.rows, device=query.device)
            rows = wanted[(wanted >= offset) & (wanted < offset + n_query)] - offset
        heads = torch.tensor(self.heads, device=query.device, dtype=torch.long)
        visible = visible.expand(batch, n_heads, n_query, n_key)
        if self.mode == "edge":
            blocked = torch.zeros(n_key, dtype=torch.bool, device=query.device)
            blocked[list(self.keys)] = True
            extra = torch.zeros(batch, n_heads, n_query, n_key, dtype=torch.bool, device=query.device)
            extra[:, heads[:, None], rows[None, :]] = blocked
            out = run(extra).clone()
            empty = ~(visible & ~extra).any(-1)  # [batch, head, query]: nothing left to attend to
            return out.masked_fill(empty.transpose(1, 2)[..., None], 0.0)
        out = run(None).clone()
        index = (slice(None), rows[:, None], heads[None, :])
        if self.mode == "zero":
            out[index] = 0.0
        elif self.mode == "mean":
            out[index] = self.values.to(out)  # type: ignore[union-attr]
        elif self.mode == "replace":
            out[index] = self.values.to(out)[:, offset + rows][:, :, heads]  # type: ignore[union-attr]
        else:  # uniform
            group = n_heads // value.shape[1]
            seen = visible[:, heads][:, :, rows].float()
            weights = seen / seen.sum(-1, keepdim=True).clamp_min(1)
            out[index] = torch.matmul(weights, value[:, heads // group].float()).transpose(1, 2).to(out.dtype)
        return out


def load_reference(folder: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """The HF model saved in ``folder``, with eager attention that :func:`reference_edits` can edit."""
    from transformers import AutoModelForCausalLM

    _register()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, attn_implementation="eager")
    if _uses_interface(model):
        model.set_attn_implementation(REFERENCE)
    return model.eval()


def attention_modules(model: Any) -> list[Any]:
    """The HF model's self-attention module of each layer, in layer order."""
    found = [m for m in model.modules() if type(m).__name__.endswith("Attention") and _innermost(m)]
    if len(found) != model.config.num_hidden_layers:
        raise ModelError(
            f"found {len(found)} attention modules in {type(model).__name__}, expected one per layer "
            f"({model.config.num_hidden_layers})"
        )
    return found


@contextmanager
def reference_edits(model: Any, edits: Mapping[int, RefEdit]) -> Iterator[None]:
    """Inside the block, layer ``l``'s attention of ``model`` (from :func:`load_reference`) makes ``edits[l]``."""
    modules = attention_modules(model)
    interface = _uses_interface(model)
    try:
        for layer, edit in edits.items():
            module = modules[layer]
            setattr(module, _SLOT, edit)
            if not interface:
                module._attn = _NeoAttn(module, edit)
        yield
    finally:
        for module in modules:
            module.__dict__.pop(_SLOT, None)
            module.__dict__.pop("_attn", None)


def _innermost(module: Any) -> bool:
    return not any(type(m).__name__.endswith("Attention") for m in module.children())


def _uses_interface(model: Any) -> bool:
    """Whether the family's attention calls ``AttentionInterface`` (every family here but GPT-Neo)."""
    return hasattr(sys.modules[type(attention_modules(model)[0]).__module__], "eager_attention_forward")


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(REFERENCE, _reference_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(REFERENCE, eager_mask)


def _reference_attention(
    module: Any, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, **kwargs: Any
) -> tuple[Tensor, Tensor | None]:
    """The family's own eager attention (weights included), with the module's :class:`RefEdit` made (if any)."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    edit: RefEdit | None = module.__dict__.get(_SLOT)
    if edit is None:
        return eager(module, query, key, value, attention_mask, **kwargs)
    n_query, n_key = query.shape[-2], key.shape[-2]
    if attention_mask is None:
        last = torch.arange(n_key - n_query, n_key, device=query.device)[:, None]
        causal = torch.arange(n_key, device=query.device) <= last
        attention_mask = torch.zeros(n_query, n_key, dtype=query.dtype, device=query.device)
        attention_mask = attention_mask.masked_fill(~causal, torch.finfo(query.dtype).min)[None, None]
    floor = torch.finfo(attention_mask.dtype).min

    def run(extra: Tensor | None) -> Tensor:
        mask = attention_mask if extra is None else attention_mask.masked_fill(extra, floor)
        return eager(module, query, key, value, mask, **kwargs)[0]

    return edit.apply(query, value, attention_mask > floor / 2, run), None


class _NeoAttn:
    """GPT-Neo's ``_attn`` (local windows from its ``bias`` buffer) with a :class:`RefEdit` made."""

    def __init__(self, module: Any, edit: RefEdit) -> None:
        self.module, self.edit = module, edit
        self.original = type(module)._attn.__get__(module)

    def __call__(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None = None) -> Any:
        n_query, n_key = query.shape[-2], key.shape[-2]
        window = self.module.bias[:, :, n_key - n_query : n_key, :n_key]
        base = attention_mask if attention_mask is not None else torch.zeros(1, 1, n_query, n_key, device=query.device)
        floor = torch.finfo(torch.float32).min
        visible = window & (base > torch.finfo(base.dtype).min / 2)

        def run(extra: Tensor | None) -> Tensor:
            mask = base.float() if extra is None else base.float().masked_fill(extra, floor)
            return self.original(query, key, value, mask)[0].transpose(1, 2)

        return self.edit.apply(query, value, visible, run).transpose(1, 2), None
