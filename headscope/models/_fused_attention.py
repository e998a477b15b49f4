"""The fused attention route's one attention function, and its one recomputation of attention rows.

Both fused mechanisms call :func:`fused_attention`, registered in transformers'
``AttentionInterface`` as ``"headscope_fused"``: the Hugging Face twin that detection, generation
and training run (:mod:`headscope.models._fused`), and the bridge whose attention forwards
:func:`~headscope.models._fused_bridge.fused_bridge` swaps for knockout and patching. Hugging
Face hands it the post-rotary ``query [batch, head, query, d_head]``, ``key`` and ``value``
``[batch, kv_head, key, d_head]`` (cached keys included), its mask (``None`` on the causal fast
path, else boolean ``[batch, 1, query, key]`` with sliding windows and padding in it) and the
layer's options (``scaling``, ``softcap``).

It computes the layer's output with stock ``scaled_dot_product_attention`` where that is exact,
and otherwise (attention logit soft-capping, which sdpa cannot do) a chunk of query rows at a
time, so no ``[query, key]`` matrix is ever built. Under a compressed KV cache
(:mod:`headscope.compression`) each group of heads is computed that way over its own keys: full
heads over every key, streaming heads over their sink and recent window. Then the layer's active :class:`LayerEdit`\\ s
(knockouts) rewrite the output, and a row reader (detection) reads the rows it scores.

**One row recomputation.** Everything that needs attention weights of a few rows (detection's
top-1 keys and needle mass, edge and uniform knockouts, the soft-capped output itself) gets them
from :meth:`AttentionCall.scores` and :meth:`AttentionCall.weights`: ``q @ k.T * scaling`` in
float32 (the inputs are upcast before the product, so bfloat16 models are read at float32
precision: no ties made by rounding), soft-capped where the model caps, keys the mask hides at
``-inf``, softmax in float32. Edits change a row's scores with :meth:`LayerEdit.edit_scores`
before the softmax, so a reader sees a knocked-out head's attention as the knockout left it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.errors import ModelError

__all__ = [
    "FUSED",
    "AttentionCall",
    "FusedState",
    "LayerEdit",
    "fused_attention",
    "fused_state",
    "register",
]

#: The ``attn_implementation`` name of :func:`fused_attention`.
FUSED = "headscope_fused"
#: Keyword arguments headscope passes down to :func:`fused_attention` through a model call.
READER_KWARG = "headscope_reader"
LAYER_KWARG = "headscope_layer"
#: The compressed KV cache (:class:`~headscope.compression.CompressedCache`) whose layers this call reads.
KV_KWARG = "headscope_kv"

_CHUNK = 1 << 22  # elements of one [batch, head, row, key] block of recomputed scores


@dataclass(frozen=True)
class AttentionCall:
    """One layer's attention call, as Hugging Face hands it to an attention function."""

    query: Float[Tensor, "batch head query d_head"]
    key: Float[Tensor, "batch kv_head key d_head"]
    value: Float[Tensor, "batch kv_head key d_head"]
    mask: Tensor | None
    scaling: float
    softcap: float | None = None

    @property
    def offset(self) -> int:
        """How many keys come before the first query (a KV cache, or a resumed suffix)."""
        return self.key.shape[-2] - self.query.shape[-2]

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.query.shape[1] // self.key.shape[1]

    def visible(self, rows: Int[Tensor, "batch row"]) -> Bool[Tensor, "batch _head row key"]:
        """Which keys each row (a position within ``query``) may attend to: causal, and the mask's say."""
        n_key = self.key.shape[-2]
        visible = torch.arange(n_key, device=rows.device) <= (rows + self.offset)[..., None]
        visible = visible[:, None]  # [batch, 1, row, key]
        if self.mask is None:
            return visible
        mask = self.mask
        allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        if allowed.shape[-2] > 1:  # [batch, 1 or head, query, key]: this row's line
            index = rows[:, None, :, None].expand(-1, allowed.shape[1], -1, n_key)
            allowed = allowed.expand(rows.shape[0], -1, -1, -1).gather(2, index)
        return visible & allowed

    def scores(
        self, rows: Int[Tensor, "batch row"], heads: Int[Tensor, " head"] | None = None
    ) -> Float[Tensor, "batch head row key"]:
        """Float32 scores of the rows ``rows[b]`` for query heads ``heads`` (all if ``None``); hidden keys ``-inf``."""
        batch = rows.shape[0]
        picked = self.query[torch.arange(batch, device=rows.device)[:, None], :, rows]  # [batch, row, head, d_head]
        n_rows, n_key = rows.shape[1], self.key.shape[-2]
        if heads is None:  # every head: one [group * row, key] product per key/value head
            n_kv, d_head = self.key.shape[1], self.key.shape[-1]
            grouped = picked.transpose(1, 2).reshape(batch, n_kv, self.group * n_rows, d_head)
            scores = torch.matmul(grouped.float(), self.key.float().transpose(-2, -1))
            scores = scores.reshape(batch, self.query.shape[1], n_rows, n_key)
        else:
            q = picked[:, :, heads].transpose(1, 2).float()  # [batch, head, row, d_head]
            scores = torch.matmul(q, self.key[:, heads // self.group].float().transpose(-2, -1))
        scores = scores * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        visible = self.visible(rows)
        if heads is not None and visible.shape[1] > 1:  # a mask per head
            visible = visible[:, heads]
        return scores.masked_fill(~visible, float("-inf"))

    @staticmethod
    def weights(scores: Float[Tensor, "batch head row key"]) -> Float[Tensor, "batch head row key"]:
        """Softmax over keys in float32; a row that sees no key gets all-zero weights."""
        weights = torch.softmax(scores, dim=-1)
        return torch.nan_to_num(weights, nan=0.0)

    def chunks(self, rows: Int[Tensor, "batch row"], n_heads: int) -> Sequence[Tensor]:
        """``rows`` split along the row axis so that one block of scores stays under a few million numbers."""
        size = max(1, _CHUNK // max(1, rows.shape[0] * n_heads * self.key.shape[-2]))
        return rows.split(size, dim=1)


@runtime_checkable
class LayerEdit(Protocol):
    """What an intervention does to one layer on the fused route (a knockout, for instance)."""

    def __call__(
        self, call: AttentionCall, out: Float[Tensor, "batch query head d_head"]
    ) -> Float[Tensor, "batch query head d_head"]:
        """The layer's attention output after the edit (``out`` as sdpa computed it)."""
        ...

    def edit_scores(
        self,
        call: AttentionCall,
        scores: Float[Tensor, "batch head row key"],
        rows: Int[Tensor, "batch row"],
        heads: Int[Tensor, " head"] | None,
    ) -> Float[Tensor, "batch head row key"]:
        """Row scores (for query heads ``heads``, all when ``None``) as this edit makes the head attend."""
        ...


@dataclass
class FusedState:
    """The edits active on one model's fused route, by layer, in the order they were entered."""

    edits: list[dict[int, LayerEdit]] = field(default_factory=list)

    def layer(self, layer: int) -> list[LayerEdit]:
        """The edits of ``layer``, outermost first."""
        return [entry[layer] for entry in self.edits if layer in entry]

    @contextmanager
    def entered(self, edits: dict[int, LayerEdit]) -> Iterator[None]:
        """Make ``edits`` active for the length of a ``with`` block."""
        self.edits.append(edits)
        try:
            yield
        finally:
            del self.edits[next(i for i, entry in enumerate(self.edits) if entry is edits)]


_STATES: weakref.WeakKeyDictionary[Any, FusedState] = weakref.WeakKeyDictionary()


def fused_state(model: Any) -> FusedState:
    """The :class:`FusedState` of ``model`` (made on first use; it lives as long as the model)."""
    if model not in _STATES:
        _STATES[model] = FusedState()
    return _STATES[model]


class _Reader(Protocol):
    def read(self, layer: int, call: AttentionCall, edits: Sequence[LayerEdit]) -> None: ...


def fused_attention(
    module: torch.nn.Module,
    query: Float[Tensor, "batch head query d_head"],
    key: Float[Tensor, "batch kv_head key d_head"],
    value: Float[Tensor, "batch kv_head key d_head"],
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Float[Tensor, "batch query head d_head"], None]:
    """Attention output of one layer on the fused route: sdpa (or chunked rows), then edits, then reads.

    The layer's edits come from the bridge's :class:`FusedState`: through the swapped bridge
    forward (``headscope_layer``) or, in a twin, through the state its attention modules hold.
    """
    layer = kwargs.pop(LAYER_KWARG, None)
    reader: _Reader | None = kwargs.pop(READER_KWARG, None)
    compressed = kwargs.pop(KV_KWARG, None)
    if layer is not None:
        query, key = layer.rotated(query, key)
    if kwargs.get("s_aux") is not None:
        raise ModelError(
            "attention sinks (a learned extra logit per head, as in gpt-oss) are not supported by the fused route"
        )
    call = AttentionCall(
        query,
        key,
        value,
        attention_mask,
        scaling if scaling is not None else query.shape[-1] ** -0.5,
        kwargs.pop("softcap", None),
    )
    state = layer.state if layer is not None else getattr(module, "headscope_state", None)
    edits = state.layer(module.layer_idx) if state is not None else []
    if compressed is None:
        out = _attend(module, call, dropout, kwargs)
    else:
        if edits or reader is not None or layer is not None:
            raise ModelError(
                "a compressed KV cache runs alone on a Hugging Face twin: no knockout, patch or detection can "
                "share its forward (the streaming heads' keys are not all at hand)"
            )
        out = compressed.attend(module.layer_idx, call, lambda part: _attend(module, part, dropout, kwargs))
    for edit in edits:
        out = edit(call, out)
    if reader is not None:
        reader.read(module.layer_idx, call, edits)
    return out, None


def _attend(module: torch.nn.Module, call: AttentionCall, dropout: float, kwargs: dict[str, Any]) -> Tensor:
    """The layer's output ``[batch, query, head, d_head]``: stock sdpa, or float32 row chunks where sdpa is inexact."""
    if call.softcap is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        mask = call.mask
        n_query, n_key = call.query.shape[-2], call.key.shape[-2]
        if mask is None and 1 < n_query < n_key:
            # A suffix resumed over cached keys (patching's key/value reuse) with no mask: sdpa's causal
            # flag would align the queries with the first keys, so spell out the bottom-right causal mask.
            rows = torch.arange(call.offset, n_key, device=call.query.device)[:, None]
            mask = (torch.arange(n_key, device=call.query.device) <= rows)[None, None]
        kwargs = {k: v for k, v in kwargs.items() if k != "sliding_window"}  # the mask holds the window
        out, _ = sdpa_attention_forward(
            module, call.query, call.key, call.value, mask, scaling=call.scaling, dropout=dropout, **kwargs
        )
        return out
    batch, n_heads, n_query = call.query.shape[:3]
    rows = torch.arange(n_query, device=call.query.device).expand(batch, n_query)
    value = call.value.repeat_interleave(call.group, dim=1).float()
    parts = [torch.matmul(call.weights(call.scores(part)), value) for part in call.chunks(rows, n_heads)]
    return torch.cat(parts, dim=2).transpose(1, 2).to(call.query.dtype)


def register() -> None:
    """Make ``"headscope_fused"`` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FUSED, fused_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FUSED, sdpa_mask)
