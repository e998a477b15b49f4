"""Turn the inputs knockout functions accept (token ids, samples, text) into what they need."""

from __future__ import annotations

from typing import Any

from jaxtyping import Int
from torch import Tensor

from headscope.errors import ModelError
from headscope.models import model_info, to_tokens, tokenizer_of
from headscope.tasks import EncodedSample, Sample

Input = Tensor | EncodedSample | Sample | str


def encoded(model: Any, sample: Sample | EncodedSample) -> EncodedSample:
    """``sample`` encoded with the model's tokenizer (an :class:`EncodedSample` passes through)."""
    if isinstance(sample, EncodedSample):
        return sample
    if isinstance(sample, Sample):
        return sample.encode(tokenizer_of(model))
    raise ModelError(f"expected a Sample or an EncodedSample; got {type(sample).__name__}")


def as_tokens(model: Any, item: Input) -> Int[Tensor, "batch pos"]:
    """One input as ``[1, pos]`` token ids on the model's device."""
    if isinstance(item, str):
        return to_tokens(model, item)
    if isinstance(item, (Sample, EncodedSample)):
        item = encoded(model, item).input_ids
    if not isinstance(item, Tensor) or item.dim() not in (1, 2) or item.dtype.is_floating_point:
        raise ModelError(
            f"expected token ids as a [pos] or [batch, pos] integer tensor, a Sample, or text; got {item!r:.80}"
        )
    tokens = item if item.dim() == 2 else item.unsqueeze(0)
    model_info(model).check_length(tokens.shape[1])
    return tokens.to(next(model.parameters()).device)
