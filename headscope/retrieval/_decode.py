"""Greedy decoding with a KV cache on every model kind, one sample at a time.

``TransformerBridge`` (TransformerLens 3.9 and 4.x) hands Hugging Face's own cache back with
``return_type="logits_and_cache"``; ``HookedTransformer`` keeps a ``TransformerLensKeyValueCache``.
Either way each decoding step runs the model on one new token, so ``hook_pattern`` holds a
single query row per head: the row that predicts the next token.

After every call the decoder checks that the cache holds exactly the tokens fed so far, so a cache
the model silently failed to extend (as transformers 5.24 did with TransformerLens 4.3 bridges)
raises :class:`ModelError` naming the installed versions instead of decoding garbage.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.models import model_kind
from headscope.models._kv import bridge_cache_names, check_cache_length

__all__ = ["Decoder", "greedy_steps"]


class Decoder:
    """Feed tokens to ``model`` incrementally; each call returns the logits of the new positions.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> step = Decoder(model)
    >>> tuple(step(torch.tensor([[0, 5, 9]])).shape), tuple(step(torch.tensor([[4]])).shape)
    ((1, 3, 1024), (1, 1, 1024))
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.kind = model_kind(model)
        self.n_seen = 0
        if self.kind == "hooked":
            self._cache: Any = _hooked_cache_class().init_cache(model.cfg, model.cfg.device, 1)
        else:  # keeps every key: Hugging Face's default would drop keys past a sliding window, and reads
            from transformers import DynamicCache  # index prompt positions (the window comes from the mask)

            self._cache = DynamicCache()

    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        if self.kind == "hooked":
            # An explicit mask: without one TransformerLens masks every token equal to the pad id.
            logits = self.model(tokens, past_kv_cache=self._cache, attention_mask=torch.ones_like(tokens))
        else:
            with bridge_cache_names(self.model):
                logits, self._cache = self.model(
                    tokens, return_type="logits_and_cache", use_cache=True, past_key_values=self._cache
                )
        self.n_seen += tokens.shape[1]
        self._check_cache()
        return logits

    def cached_length(self) -> int:
        """How many positions the KV cache holds now."""
        if self.kind == "hooked":
            entries = self._cache.entries
            return int(entries[0].past_keys.shape[1]) if entries else 0
        return int(self._cache.get_seq_length())

    def _check_cache(self) -> None:
        check_cache_length(self.n_seen, self.cached_length())


def _hooked_cache_class() -> Any:
    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    except ImportError:  # TransformerLens before 3.0 named it differently
        from transformer_lens.past_key_value_caching import (
            HookedTransformerKeyValueCache as TransformerLensKeyValueCache,
        )
    return TransformerLensKeyValueCache


def greedy_steps(
    model: Any,
    prompt: Int[Tensor, " pos"],
    *,
    max_new_tokens: int,
    stop_ids: Collection[int],
) -> Iterator[int]:
    """Yield greedily decoded token ids: prefill ``prompt``, then one cached step per token.

    Stops after ``max_new_tokens`` tokens or once a token in ``stop_ids`` was yielded; the last
    token is never fed back, so there are as many forward passes as tokens. Hooks on the model see
    the forward that produced a token before it is yielded.
    """
    step = Decoder(model)
    device = next(model.parameters()).device
    logits = step(prompt.to(device)[None])
    for i in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        yield token
        if token in stop_ids or i == max_new_tokens - 1:
            return
        logits = step(torch.tensor([[token]], device=device))
