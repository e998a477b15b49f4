"""KV-cached decoding: equal to full re-runs, and loud when the cache is not used.

transformers 5.24 renamed the attention modules' cache argument, and TransformerLens bridges
stopped extending their cache: each step then attended to its own key alone. These tests pin the
behaviour on whichever transformers release is installed (CI: the locks; `make test-latest`: the newest).
"""

from __future__ import annotations

import pytest
import torch
from _close import assert_close

import headscope as hs
from headscope.errors import ModelError
from headscope.retrieval import Decoder, greedy_steps

PROMPT = [0, 5, 9, 11, 7, 23, 40]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-gpt-neo"])
def test_cached_steps_equal_full_forwards_without_a_cache(name: str, model_kind: tuple[str, bool]) -> None:
    kind, compat = model_kind
    if kind == "hooked" and name == "tiny-gpt-neo":
        pytest.skip("headscope builds HookedTransformers for Llama and GPT-2 folders only")
    model = hs.load_model(name, kind=kind, compatibility_mode=compat)
    tokens = list(greedy_steps(model, torch.tensor(PROMPT), max_new_tokens=6, stop_ids=()))
    with torch.no_grad():
        full = model(torch.tensor([PROMPT + tokens]))
    expected = [int(full[0, len(PROMPT) - 1 + i].argmax()) for i in range(len(tokens))]
    assert tokens == expected
    step, seq = Decoder(model), list(PROMPT)
    with torch.no_grad():
        step(torch.tensor([seq]))
        for token in tokens[:-1]:
            seq.append(token)
            logits = step(torch.tensor([[token]]))
            assert_close(logits[0, -1], full[0, len(seq) - 1], short=True)
    assert step.cached_length() == len(seq)


def _drop_cache_kwargs(module, args, kwargs):
    return args, {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "layer_past")}


@pytest.mark.parametrize("compat", [False, True])
def test_decoder_raises_when_the_attention_never_sees_the_cache(compat: bool) -> None:
    """What transformers 5.24 did to TransformerLens bridges: the attention got no cache to extend."""
    model = hs.load_model("tiny-llama", kind="bridge", compatibility_mode=compat)
    attention = [m for m in model.modules() if hasattr(m, "_update_kv_cache")]
    handles = [m.register_forward_pre_hook(_drop_cache_kwargs, with_kwargs=True) for m in attention]
    try:
        with pytest.raises(ModelError, match=r"cache holds 0.*transformers \d.*TransformerLens \d.*Known good"):
            list(greedy_steps(model, torch.tensor(PROMPT), max_new_tokens=4, stop_ids=()))
    finally:
        for handle in handles:
            handle.remove()
    assert all(not m._forward_pre_hooks for m in attention), "the decoder left a pre-hook behind"


class _ForgetfulDecoder(Decoder):
    """A decoder whose cache is thrown away after every step."""

    def __call__(self, tokens):
        logits = super().__call__(tokens)
        self._cache = Decoder(self.model)._cache  # a fresh, empty cache: the prompt is forgotten
        return logits


def test_decoder_raises_when_its_cache_is_dropped(tiny_llama) -> None:
    step = _ForgetfulDecoder(tiny_llama)
    step(torch.tensor([PROMPT]))
    with pytest.raises(ModelError, match="KV-cached decoding is broken"):
        step(torch.tensor([[4]]))
