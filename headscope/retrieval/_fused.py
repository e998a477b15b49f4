"""Detection's fused route: a Hugging Face twin of the bridge computes only the scored rows.

Every layer runs :func:`~headscope.models._fused_attention.fused_attention` in a Hugging Face
twin of the bridge (:func:`headscope.models._fused.hf_twin`, which explains why a twin rather
than patched bridge components): stock ``sdpa`` for the layer's output (a fused kernel: flash or
memory-efficient on GPU, the flash-style CPU kernel on CPU), then, for the few query rows that
detection scores, the row recomputation every fused path shares
(:meth:`~headscope.models._fused_attention.AttentionCall.scores`): ``q @ k.T * scaling`` in
float32, soft-capped where the model caps, masked keys at ``-inf``, softmax in float32, with the
edits of any knockout active on the bridge's fused route applied. Those ``[batch, head, row,
key]`` weights go through the same :func:`~headscope.retrieval._top1.read_rows` as the eager
route's patterns, so both routes follow one tie rule. No ``[query, key]`` matrix is ever built:
memory grows with the sequence, not its square.

**Exactness.** Layer 0's rows come from the same query and key tensors as the eager route's;
later layers see residuals that differ from the eager route's by sdpa's rounding (about 1e-7 in
float32). A top-1 key can therefore move only where two keys' weights agree to that precision.
Hit counts were equal on every tested model and sample (``tests/test_fused.py``). The weights
are read in float32 whatever the model's dtype: a bfloat16 model's weights, cast back to
bfloat16, tie often (the earliest key, often BOS, would then win), so they are not cast back.

The reader travels as a keyword argument that Hugging Face passes through the model call down to
every attention function, so the route holds no state in the model.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.models._fused import hf_twin
from headscope.models._fused_attention import READER_KWARG, AttentionCall, LayerEdit
from headscope.models._kv import check_cache_length
from headscope.retrieval._top1 import RowReads, read_rows, take_reads

__all__ = ["FusedRoute", "RowReader"]


class RowReader:
    """Per-layer :class:`RowReads` of the scored rows, filled by the fused attention function.

    ``rows[b]`` are query positions of batch item ``b`` (``None``: the last query row);
    ``needles`` (``[batch, pos]``) asks for each row's attention mass on the needle too.
    """

    def __init__(self, n_layers: int) -> None:
        self.rows: Int[Tensor, "batch row"] | None = None
        self.needles: Bool[Tensor, "batch pos"] | None = None
        self._store: list[RowReads | None] = [None] * n_layers

    def read(self, layer: int, call: AttentionCall, edits: Sequence[LayerEdit]) -> None:
        """Read this layer's rows as the active ``edits`` make its heads attend."""
        rows = self.rows
        if rows is None:
            last = call.query.shape[-2] - 1
            rows = torch.full((call.query.shape[0], 1), last, device=call.query.device)
        scores = call.scores(rows)
        for edit in edits:
            scores = edit.edit_scores(call, scores, rows, None)
        self._store[layer] = read_rows(call.weights(scores), self.needles)

    def take(self) -> RowReads:
        """Every layer's reads, stacked as ``[layer, batch, head, row]``, and clear them."""
        return take_reads(self._store, "the fused attention function did not run")


class FusedRoute:
    """Detection forwards through a Hugging Face twin of ``model`` with :func:`fused_attention`.

    >>> from headscope import load_model
    >>> route = FusedRoute(load_model("tiny-llama"))
    >>> logits, reads = route.forward(torch.tensor([[0, 5, 9, 4]]), torch.tensor([[2, 3]]), None)
    >>> tuple(logits.shape), tuple(reads.top1.shape)  # [batch, row, vocab]; [layer, batch, head, row]
    ((1, 2, 1024), (2, 1, 4, 2))
    """

    def __init__(self, model: Any) -> None:
        self.twin = hf_twin(model)
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
        logits = self.twin(tokens, logits_to_keep=keep, use_cache=False, **{READER_KWARG: self.reader}).logits
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

        cache = DynamicCache()  # keeps every key: windows come from the mask, and reads index prompt positions
        self.reader.rows, self.reader.needles = None, needles
        fed = prompt.to(self.device)[None]
        n_seen = 0
        for i in range(max_new_tokens):
            out = self.twin(
                fed, logits_to_keep=1, use_cache=True, **{self._cache_kwarg: cache, READER_KWARG: self.reader}
            )
            n_seen += fed.shape[1]
            check_cache_length(n_seen, cache.get_seq_length())
            token = int(out.logits[0, -1].argmax())
            yield token, self.reader.take()
            if token in stop_ids or i == max_new_tokens - 1:
                return
            fed = torch.tensor([[token]], device=self.device)
