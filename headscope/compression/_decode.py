"""Greedy decoding under a KV policy: a Hugging Face twin of the bridge with a :class:`CompressedCache`."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterator
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.compression._cache import CompressedCache
from headscope.compression._policy import KVPolicy
from headscope.errors import ConfigError, ModelError
from headscope.models import model_info, tokenizer_of
from headscope.models._fused import twin_unavailable
from headscope.models._fused_attention import KV_KWARG, fused_state
from headscope.models._kv import check_cache_length
from headscope.tasks import Sample

__all__ = ["CompressedDecoder", "Generation", "generate_compressed"]


class Generation(NamedTuple):
    """A greedy answer under a KV policy: its ``text`` and ``tokens``, and the bytes the cache held.

    ``prompt_bytes`` after the prompt, ``cache_bytes`` at the end (``n_positions`` fed in all).
    """

    text: str
    tokens: tuple[int, ...]
    prompt_bytes: int
    cache_bytes: int
    n_positions: int


class CompressedDecoder:
    """Feed tokens to a Hugging Face twin of ``model`` whose KV cache follows ``policy``.

    Each call returns the logits of the new positions; :attr:`cache` holds what the policy keeps.
    The twin shares the bridge's weights and runs headscope's fused attention; it is built once
    per decoder. Raises :class:`~headscope.ModelError` when ``model`` cannot take the fused route
    or while a knockout or a hook is active on it (the twin would silently skip them).

    >>> from headscope import load_model, kv_policy
    >>> model = load_model("tiny-llama")
    >>> step = CompressedDecoder(model, kv_policy(["L0H0"], model, sink=1, window=2))
    >>> tuple(step(torch.tensor([[0, 5, 9, 4, 7]])).shape), step.cache.nbytes()  # (5 + 3 x 3) positions x 128 bytes
    ((1, 5, 1024), 1792)
    """

    def __init__(self, model: Any, policy: KVPolicy, twin: Any = None) -> None:
        check_model(model, policy)
        if twin is None:
            from headscope.models._fused import hf_twin

            twin = hf_twin(model)
        self.twin, self.policy = twin, policy
        self.cache = CompressedCache(policy)
        self.n_seen = 0
        self.prompt_bytes = 0  # what the cache held after the first call
        params = inspect.signature(twin.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # transformers 5.24 renamed it

    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos vocab"]:
        out = self.twin(
            tokens.to(self.twin.device), use_cache=True, **{self._cache_kwarg: self.cache, KV_KWARG: self.cache}
        )
        self.cache.check_read()
        if self.n_seen == 0:
            self.prompt_bytes = self.cache.nbytes()
        self.n_seen += tokens.shape[1]
        check_cache_length(self.n_seen, self.cache.get_seq_length())
        return out.logits


def check_model(model: Any, policy: KVPolicy) -> None:
    """Raise a clear error unless ``policy`` fits ``model`` and the model can decode on the fused route."""
    info = model_info(model)
    if policy.shape != (info.n_layers, info.n_kv_heads) or policy.n_heads != info.n_heads:
        raise ConfigError(
            f"the policy is for {policy.shape[0]} layers x {policy.shape[1]} KV heads ({policy.n_heads} query heads); "
            f"{info.name} has {info.n_layers} x {info.n_kv_heads} ({info.n_heads}): build it with kv_policy(..., model)"
        )
    check_fused(model)


def check_fused(model: Any) -> None:
    """Raise :class:`~headscope.ModelError` unless ``model`` can decode on the fused route now (no hook or knockout)."""
    info = model_info(model)
    reason = twin_unavailable(model)
    if reason is None and fused_state(model).edits:
        reason = "a knockout or patch is active on its fused route, and the compressed cache runs alone"
    if reason is not None:
        raise ModelError(
            f"KV-cache compression decodes on the fused attention route, which {info.name} cannot take now: {reason}"
        )


def greedy_compressed(
    decoder: CompressedDecoder, prompt: Int[Tensor, " pos"], *, max_new_tokens: int, stop_ids: Collection[int]
) -> Iterator[int]:
    """Greedy token ids: prefill ``prompt``, then one cached step per token (as ``greedy_steps``)."""
    logits = decoder(prompt[None])
    for i in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        yield token
        if token in stop_ids or i == max_new_tokens - 1:
            return
        logits = decoder(torch.tensor([[token]]))


def generate_compressed(
    model: Any, sample: Sample, policy: KVPolicy, *, max_new_tokens: int = 32, twin: Any = None
) -> Generation:
    """The greedy answer to ``sample`` with the KV cache compressed by ``policy``, and the bytes the cache held.

    Decodes like :func:`~headscope.generate_answer` (KV-cached, stopping at EOS), on a Hugging
    Face twin of ``model`` with a :class:`~headscope.compression.CompressedCache`. ``twin`` reuses
    a twin across calls (:func:`~headscope.models._fused.hf_twin`).

    >>> from headscope import load_model, kv_policy
    >>> model = load_model("tiny-llama")
    >>> answer = generate_compressed(model, Sample("The key is", " blue"), kv_policy([], model), max_new_tokens=3)
    >>> len(answer.tokens), answer.n_positions <= 3 + 3
    (3, True)
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    tokenizer = tokenizer_of(model)
    ids = sample.encode(tokenizer).input_ids
    model_info(model).check_length(len(ids) + max_new_tokens)
    stop = {tokenizer.eos_token_id} - {None}
    decoder = CompressedDecoder(model, policy, twin)
    with torch.no_grad():
        tokens = tuple(greedy_compressed(decoder, ids, max_new_tokens=max_new_tokens, stop_ids=stop))
    text = tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True)
    return Generation(text, tokens, decoder.prompt_bytes, decoder.cache.nbytes(), decoder.n_seen)
