"""Reference means of head outputs, for mean ablation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from headscope.ablation._inputs import Input, as_tokens
from headscope.ablation._spec import Knockout
from headscope.errors import HeadIndexError
from headscope.heads import Head
from headscope.hooks import attn_hook, capture
from headscope.models import model_info

__all__ = ["head_means", "mean_knockout"]


def head_means(
    model: Any, reference: Iterable[Input], *, layers: Sequence[int] | None = None, progress: bool = False
) -> Float[Tensor, "layer head d_head"]:
    """Mean of every head's ``hook_z`` over every position of every reference input.

    Each token counts once (longer inputs weigh more); BOS positions are included. Layers not in
    ``layers`` (default: all) are left as zeros.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> tuple(head_means(model, [torch.tensor([0, 5, 9]), torch.tensor([0, 7])]).shape)
    (2, 4, 16)
    """
    info = model_info(model)
    layers = list(range(info.n_layers)) if layers is None else sorted(set(layers))
    info.check_heads([(layer, 0) for layer in layers])
    total = torch.zeros(info.n_layers, info.n_heads, info.d_head, dtype=torch.float64)
    count = 0
    for item in tqdm(list(reference), desc="reference means", disable=not progress):
        tokens = as_tokens(model, item)
        with torch.no_grad(), capture(model, [attn_hook(layer, "z") for layer in layers]) as acts:
            model(tokens)
        for layer in layers:
            total[layer] += acts[attn_hook(layer, "z")].double().sum(dim=(0, 1)).cpu()
        count += tokens.shape[0] * tokens.shape[1]
    if count == 0:
        raise ValueError("reference holds no inputs; give at least one token sequence, Sample or text")
    return (total / count).float()


def mean_knockout(
    model: Any, heads: Iterable[Head | str], reference: Iterable[Input], *, queries: Iterable[int] | None = None
) -> Knockout:
    """A ``mode="mean"`` :class:`Knockout` whose means come from :func:`head_means` over ``reference``.

    >>> import torch
    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> spec = mean_knockout(model, ["L1H0"], [torch.tensor([0, 5, 9, 2])])
    >>> spec.mode, len(spec.means[0])
    ('mean', 16)
    """
    pairs = model_info(model).check_heads(heads)
    if not pairs:
        raise HeadIndexError("mean_knockout needs at least one head")
    table = head_means(model, reference, layers=sorted({layer for layer, _ in pairs}))
    means = torch.stack([table[layer, head] for layer, head in pairs])
    return Knockout(tuple(pairs), "mean", queries=None if queries is None else tuple(queries), means=means)
