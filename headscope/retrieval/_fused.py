"""The fused attention route: ``scaled_dot_product_attention`` per layer, plus only the scored rows.

Every layer's attention output comes from transformers' stock ``sdpa`` function (a fused kernel:
flash or memory-efficient on GPU, the flash-style CPU kernel on CPU), run by a Hugging Face twin
of the bridge (:func:`headscope.models._fused.hf_twin`, which explains why a twin rather than
patched bridge components). The attention function registered here as ``"headscope_fused"``
calls that stock function unchanged and then, for the few query rows that detection scores,
recomputes the attention weights from the post-rotary query rows against the post-rotary keys
(query head ``h`` reads key/value head ``h // group``), exactly as TransformerLens's eager
bridge does: ``(q @ k.T) * scaling``, masked keys at the dtype's minimum, softmax in float32,
cast back. Those ``[batch, head, row, key]`` weights go through the same
:func:`~headscope.retrieval._top1.read_rows` as the eager route's patterns, so both routes
follow one tie rule. No ``[query, key]`` matrix is ever built: memory grows with the sequence,
not its square.

**Exactness.** Layer 0's rows come from the same query and key tensors by the same formula as
the eager route's (only the matrix product's shape differs, which can change BLAS rounding in
the last bit); later layers see residuals that differ from the eager route's by sdpa's rounding
(about 1e-7 in float32). A top-1 key can therefore move only where two keys' weights agree to
that precision. Hit counts were equal on every tested model and sample
(``tests/test_fused.py``). In bfloat16 the rounding is far coarser; expect rare differences.

The registered function takes its reader from a keyword argument that Hugging Face passes
through the model call down to every attention function, so it holds no state of its own, and
a model that uses it without a reader computes plain sdpa attention.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.models._fused import hf_twin
from headscope.models._kv import check_cache_length
from headscope.retrieval._top1 import RowReads, read_rows, take_reads

__all__ = ["FUSED_ATTENTION", "FusedRoute", "RowReader", "fused_attention"]

#: The name ``fused_attention`` is registered under in ``AttentionInterface``.
FUSED_ATTENTION = "headscope_fused"
_READER_KWARG = "headscope_reader"


class RowReader:
    """Per-layer :class:`RowReads` of the scored rows, filled by :func:`fused_attention`.

    ``rows[b]`` are query positions of batch item ``b`` (``None``: the last query row);
    ``needles`` (``[batch, pos]``) asks for each row's attention mass on the needle too.
    """

    def __init__(self, n_layers: int) -> None:
        self.rows: Int[Tensor, "batch row"] | None = None
        self.needles: Bool[Tensor, "batch pos"] | None = None
        self._store: list[RowReads | None] = [None] * n_layers

    def read(
        self,
        layer: int,
        query: Float[Tensor, "batch head query d_head"],
        key: Float[Tensor, "batch kv_head key d_head"],
        scaling: float,
    ) -> None:
        self._store[layer] = read_rows(row_weights(query, key, scaling, self.rows), self.needles)

    def take(self) -> RowReads:
        """Every layer's reads, stacked as ``[layer, batch, head, row]``, and clear them."""
        return take_reads(self._store, "the fused attention function did not run")


def row_weights(
    query: Float[Tensor, "batch head query d_head"],
    key: Float[Tensor, "batch kv_head key d_head"],
    scaling: float,
    rows: Int[Tensor, "batch row"] | None,
) -> Float[Tensor, "batch head row key"]:
    """Causal attention weights of the query rows ``rows[b]`` (positions within ``query``).

    With a KV cache the queries are the last ``query`` of ``key`` positions, so row ``i`` sees
    keys ``0 .. key - query + i``.
    """
    batch, n_heads, n_query, d_head = query.shape
    n_kv, n_keys = key.shape[1], key.shape[2]
    last_row = rows is None  # it sees every key, so no mask is needed
    if rows is None:
        rows = torch.full((batch, 1), n_query - 1, device=query.device)
    n_rows = rows.shape[1]
    picked = query[torch.arange(batch, device=query.device)[:, None], :, rows]  # [batch, row, head, d_head]
    # query head h = kv * group + g reads key/value head kv: one [group * row, key] product per kv head
    grouped = picked.transpose(1, 2).reshape(batch, n_kv, (n_heads // n_kv) * n_rows, d_head)
    scores = torch.matmul(grouped, key.transpose(-2, -1)).reshape(batch, n_heads, n_rows, n_keys) * scaling
    if not last_row:
        last_visible = (n_keys - n_query + rows)[:, None, :, None]  # [batch, 1, row, 1]
        hidden = torch.arange(n_keys, device=query.device) > last_visible
        scores = scores.masked_fill(hidden, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def fused_attention(
    module: torch.nn.Module,
    query: Float[Tensor, "batch head query d_head"],
    key: Float[Tensor, "batch kv_head key d_head"],
    value: Float[Tensor, "batch kv_head key d_head"],
    attention_mask: Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Float[Tensor, "batch query head d_head"], None]:
    """Stock sdpa attention; with a ``headscope_reader`` keyword, also read its rows."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    reader: RowReader | None = kwargs.pop(_READER_KWARG, None)
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if reader is not None:
        reader.read(module.layer_idx, query, key, scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out, None


def _register() -> None:
    """Make ``"headscope_fused"`` a valid ``attn_implementation`` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(FUSED_ATTENTION, fused_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(FUSED_ATTENTION, sdpa_mask)


class FusedRoute:
    """Detection forwards through a Hugging Face twin of ``model`` with :func:`fused_attention`.

    >>> from headscope import load_model
    >>> route = FusedRoute(load_model("tiny-llama"))
    >>> logits, reads = route.forward(torch.tensor([[0, 5, 9, 4]]), torch.tensor([[2, 3]]), None)
    >>> tuple(logits.shape), tuple(reads.top1.shape)  # [batch, row, vocab]; [layer, batch, head, row]
    ((1, 2, 1024), (2, 1, 4, 2))
    """

    def __init__(self, model: Any) -> None:
        _register()
        self.twin = hf_twin(model, FUSED_ATTENTION)
        self.reader = RowReader(self.twin.config.num_hidden_layers)
        self.device = self.twin.device
        params = inspect.signature(self.twin.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # transformers 5.24 renamed it

    def session(self) -> AbstractContextManager[None]:
        """Nothing to attach: the reader travels with each call."""
        return nullcontext()

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        rows: Int[Tensor, "batch row"],
        needles: Bool[Tensor, "batch pos"] | None,
        attention_mask: Int[Tensor, "batch pos"] | None = None,
    ) -> tuple[Float[Tensor, "batch row vocab"], RowReads]:
        """Logits and reads of the rows ``rows[b]``.

        Batches are right-padded, so the causal mask alone keeps every scored row off the pads and
        ``attention_mask`` is not needed (it is accepted for the eager route's signature). Without a
        mask sdpa takes its causal fast path and no ``[query, key]`` mask is built.
        """
        self.reader.rows, self.reader.needles = rows, needles
        keep = torch.unique(rows)  # sorted; logits are projected for these positions only
        logits = self.twin(tokens, logits_to_keep=keep, use_cache=False, **{_READER_KWARG: self.reader}).logits
        batch = torch.arange(rows.shape[0], device=rows.device)[:, None]
        return logits[batch, torch.searchsorted(keep, rows)], self.reader.take()

    def steps(
        self,
        prompt: Int[Tensor, " pos"],
        needles: Bool[Tensor, "1 pos"] | None,
        *,
        max_new_tokens: int,
        stop_ids: Collection[int],
    ) -> Iterator[tuple[int, RowReads]]:
        """Greedy decoding with Hugging Face's cache; each token comes with the reads of the row that produced it."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.twin.config)
        self.reader.rows, self.reader.needles = None, needles
        fed = prompt.to(self.device)[None]
        n_seen = 0
        for i in range(max_new_tokens):
            out = self.twin(
                fed, logits_to_keep=1, use_cache=True, **{self._cache_kwarg: cache, _READER_KWARG: self.reader}
            )
            n_seen += fed.shape[1]
            check_cache_length(n_seen, cache.get_seq_length())
            token = int(out.logits[0, -1].argmax())
            yield token, self.reader.take()
            if token in stop_ids or i == max_new_tokens - 1:
                return
            fed = torch.tensor([[token]], device=self.device)
