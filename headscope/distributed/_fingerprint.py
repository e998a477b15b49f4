"""What a resumed item's result depends on besides its input: the model's weights, cheaply summarised."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

__all__ = ["model_fingerprint"]


def model_fingerprint(model: Any) -> str:
    """A hash of every parameter's name, shape, dtype and float64 sum: fine-tuned weights change it.

    One pass over the weights (on their device), no copy, so a partial result written for one
    checkpoint is never read back for another checkpoint saved under the same name.

    >>> from headscope import load_model
    >>> a, b = load_model("tiny-llama"), load_model("tiny-llama")
    >>> model_fingerprint(a) == model_fingerprint(b)
    True
    >>> with torch.no_grad():
    ...     _ = next(b.parameters()).add_(1e-3)
    >>> model_fingerprint(a) == model_fingerprint(b)
    False
    """
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            total = parameter.detach().sum(dtype=torch.float64).item()
            digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}:{total!r};".encode())
    return digest.hexdigest()[:20]
