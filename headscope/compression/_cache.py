"""A real compressed KV cache: full heads keep every key, streaming heads evict all but a sink and a window.

:class:`CompressedCache` is a transformers ``Cache`` whose layers (:class:`CompressedLayer`)
store two tensors per kind: the keys and values of the layer's full KV heads, ``[batch, n_full,
pos, d_head]``, growing with every token, and those of its streaming KV heads, ``[batch,
n_stream, kept, d_head]``, holding only the positions ``[0, sink)`` and the last ``window``
(``kept <= sink + window``). After each call the older streaming keys are gone: copied out, not
viewed, so :meth:`CompressedCache.nbytes` (the bytes of the tensors the cache holds) measures the
memory, it does not compute it.

Hugging Face's attention module hands each new token's keys to ``cache.update`` and the result
to the attention function. ``update`` returns the full heads' keys and values and keeps the
streaming heads' (the kept ones plus the new ones) for the call; the fused attention function
(:func:`~headscope.models._fused_attention.fused_attention`, which receives the cache as
``headscope_kv``) then calls :meth:`CompressedCache.attend`: the full heads' query heads over
every key, the streaming heads' query heads over their keys with the band mask (a key at position
``p`` is visible to a query at ``i`` when ``p <= i`` and ``p < sink`` or ``i - p < window``), so
the prefill applies the same mask the decoding steps obey; a long prefill runs the streaming heads
:data:`ROWS` query rows at a time over the keys their band can reach. Any mask of the model's own (a sliding
window, padding) applies on top. A layer with no streaming head runs the uncompressed path
unchanged, so a policy with every KV head full equals the uncompressed model bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers.cache_utils import Cache, CacheLayerMixin

from headscope.errors import ModelError
from headscope.models._fused_attention import AttentionCall

__all__ = ["ROWS", "CompressedCache", "CompressedLayer", "kept_positions"]

#: Query rows of a streaming heads' block in the prefill: each block reads only the sink and the keys
#: from ``window`` before its first row, so a long prompt costs ``O(pos x (sink + window + ROWS))`` there.
ROWS = 256


def kept_positions(n_seen: int, sink: int, window: int, device: Any = None) -> Int[Tensor, " key"]:
    """The positions a streaming head keeps after ``n_seen`` tokens: ``[0, sink)`` and the last ``window``.

    >>> kept_positions(10, 2, 3).tolist(), kept_positions(4, 2, 3).tolist()
    ([0, 1, 7, 8, 9], [0, 1, 2, 3])
    """
    positions = torch.arange(n_seen, device=device)
    return positions[(positions < sink) | (positions >= n_seen - window)]


def band(
    queries: Int[Tensor, " query"], keys: Int[Tensor, " key"], sink: int, window: int
) -> Bool[Tensor, "query key"]:
    """Which key positions each query position sees on a streaming head: causal, and sink or recent window."""
    before = keys[None, :] <= queries[:, None]
    return before & ((keys[None, :] < sink) | (queries[:, None] - keys[None, :] < window))


class CompressedLayer(CacheLayerMixin):
    """One layer's cache: every position for the KV heads ``full``, ``sink`` + ``window`` for the others."""

    is_sliding = False
    is_croppable = False

    def __init__(self, full: Sequence[int], stream: Sequence[int], sink: int, window: int) -> None:
        super().__init__()
        self.full, self.stream = list(full), list(stream)
        self.sink, self.window = sink, window
        self.n_seen = 0
        self.stream_keys: Tensor | None = None
        self.stream_values: Tensor | None = None
        self.pending: tuple[Tensor, Tensor, Tensor] | None = None  # the streaming heads' keys of the current call

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        batch, _, _, d_head = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device

        def empty(n: int) -> Tensor:
            return key_states.new_zeros((batch, n, 0, d_head))

        self.keys, self.values = empty(len(self.full)), empty(len(self.full))
        self.stream_keys, self.stream_values = empty(len(self.stream)), empty(len(self.stream))
        self._full_index = torch.tensor(self.full, dtype=torch.long, device=self.device)
        self._stream_index = torch.tensor(self.stream, dtype=torch.long, device=self.device)
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Store the new positions; return the full heads' keys and values (every position)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.pending is not None:
            raise ModelError("the attention function did not read the compressed cache's last call")
        before, self.n_seen = self.n_seen, self.n_seen + key_states.shape[-2]
        if not self.stream:  # no streaming head: exactly Hugging Face's DynamicLayer
            self.keys = torch.cat([self.keys, key_states], dim=-2)
            self.values = torch.cat([self.values, value_states], dim=-2)
            return self.keys, self.values
        if self.full:
            self.keys = torch.cat([self.keys, key_states.index_select(1, self._full_index)], dim=-2)
            self.values = torch.cat([self.values, value_states.index_select(1, self._full_index)], dim=-2)
        keys = torch.cat([self.stream_keys, key_states.index_select(1, self._stream_index)], dim=-2)
        values = torch.cat([self.stream_values, value_states.index_select(1, self._stream_index)], dim=-2)
        positions = torch.cat(
            [
                kept_positions(before, self.sink, self.window, self.device),
                torch.arange(before, self.n_seen, device=self.device),
            ]
        )
        self.pending = (keys, values, positions)
        keep = (positions < self.sink) | (positions >= self.n_seen - self.window)
        # Boolean indexing copies: the evicted positions leave memory, no view keeps them alive.
        self.stream_keys, self.stream_values = keys[:, :, keep], values[:, :, keep]
        return self.keys, self.values

    def take(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """The streaming heads' keys, values and positions of the current call (``None`` without streaming heads)."""
        pending, self.pending = self.pending, None
        return pending

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.n_seen + query_length, 0  # Hugging Face's mask spans every position; streaming heads pick theirs

    def get_seq_length(self) -> int:
        return self.n_seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.stream_keys = self.stream_values = None
        self.pending, self.n_seen, self.is_initialized = None, 0, False

    def tensors(self) -> list[Tensor]:
        """The key and value tensors this layer holds."""
        held = [self.keys, self.values, self.stream_keys, self.stream_values]
        return [t for t in held if t is not None]


class CompressedCache(Cache):
    """A KV cache that keeps the full cache only for the full KV heads of a :class:`~headscope.compression.KVPolicy`.

    >>> import torch
    >>> from headscope.compression import KVPolicy
    >>> cache = CompressedCache(KVPolicy(torch.tensor([[True, False]]), 4, 8, sink=1, window=2))
    >>> _ = cache.update(torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8), 0)
    >>> cache.get_seq_length(), cache.nbytes()   # 5 positions on the full head, 1 + 2 on the streaming one
    (5, 512)
    """

    def __init__(self, policy: Any) -> None:
        layers = [
            CompressedLayer(
                [kv for kv in range(policy.shape[1]) if row[kv]],
                [kv for kv in range(policy.shape[1]) if not row[kv]],
                policy.sink,
                policy.window,
            )
            for row in policy.full.tolist()
        ]
        super().__init__(layers=layers)
        self.policy = policy

    def nbytes(self) -> int:
        """Bytes of the key and value tensors held now: each distinct storage counted once, whole."""
        storages = {}
        for layer in self.layers:
            for tensor in layer.tensors():
                storage = tensor.untyped_storage()
                storages[storage.data_ptr(), tensor.device] = storage.nbytes()
        return sum(storages.values())

    def attend(
        self,
        layer_idx: int,
        call: AttentionCall,
        attend: Callable[[AttentionCall], Float[Tensor, "batch query head d_head"]],
    ) -> Float[Tensor, "batch query head d_head"]:
        """The layer's attention output: ``attend`` over the full heads' keys and over the streaming heads' own."""
        layer: CompressedLayer = self.layers[layer_idx]
        pending = layer.take()
        if pending is None:
            return attend(call)
        keys, values, positions = pending
        group = self.policy.group
        batch, n_heads, n_query, d_head = call.query.shape
        out = call.query.new_empty((batch, n_query, n_heads, d_head))
        if layer.full:
            heads = _query_heads(layer.full, group, call.query.device)
            mask = _heads_of(call.mask, heads)
            out[:, :, heads] = attend(replace(call, query=call.query[:, heads], mask=mask))
        heads = _query_heads(layer.stream, group, call.query.device)
        allowed = call.mask  # the model's own mask (sliding window, padding), applied on top of the band
        if allowed is not None:
            allowed = _heads_of(
                allowed if allowed.dtype == torch.bool else allowed > torch.finfo(allowed.dtype).min / 2, heads
            )
        query, first = call.query[:, heads], len(positions) - n_query
        n_sink = int((positions < layer.sink).sum())
        parts = []
        for start in range(0, n_query, ROWS):  # a block of query rows reads the sink and its own recent keys only
            stop = min(start + ROWS, n_query)
            rows = positions[first + start : first + stop]
            begin = int(torch.searchsorted(positions, max(int(rows[0]) - layer.window + 1, layer.sink)))
            device = positions.device
            index = torch.cat(
                [torch.arange(n_sink, device=device), torch.arange(max(begin, n_sink), first + stop, device=device)]
            )
            mask = band(rows, positions[index], layer.sink, layer.window)[None, None]
            if allowed is not None:
                mask = mask & (allowed[..., start:stop, :] if allowed.shape[-2] > 1 else allowed)[..., positions[index]]
            block = AttentionCall(
                query[:, :, start:stop], keys[:, :, index], values[:, :, index], mask, call.scaling, call.softcap
            )
            parts.append(attend(block))
        out[:, :, heads] = torch.cat(parts, dim=1)
        return out

    def check_read(self) -> None:
        """Raise :class:`ModelError` if some layer's streaming keys were stored but never attended to."""
        unread = [i for i, layer in enumerate(self.layers) if layer.pending is not None]
        if unread:
            raise ModelError(
                f"layers {unread} stored a compressed cache call that no attention function read: the model does not "
                "run headscope's fused attention with headscope_kv (build it with hf_twin)"
            )


def _query_heads(kv_heads: Sequence[int], group: int, device: Any) -> Int[Tensor, " head"]:
    return torch.tensor([kv * group + i for kv in kv_heads for i in range(group)], dtype=torch.long, device=device)


def _heads_of(mask: Tensor | None, heads: Tensor) -> Tensor | None:
    """``mask`` ``[batch, 1 or head, query, key]`` for the query heads ``heads`` only."""
    if mask is None or mask.shape[1] == 1:
        return mask
    return mask[:, heads]
