"""Reference means of head outputs, for mean ablation."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from headscope.ablation._inputs import Input, as_tokens, encoded
from headscope.ablation._spec import Knockout
from headscope.errors import ConfigError, HeadIndexError, SpanError
from headscope.heads import Heads
from headscope.hooks import attn_hook, capture
from headscope.models import model_info, tokenizer_of
from headscope.tasks import EncodedSample, Sample

__all__ = ["head_means", "mean_knockout"]


def head_means(
    model: Any,
    reference: Iterable[Input],
    *,
    layers: Sequence[int] | None = None,
    exclude: Sequence[str] = (),
    progress: bool = False,
) -> Float[Tensor, "layer head d_head"]:
    """Mean of every head's ``hook_z`` over the positions of the reference inputs.

    By default every position of every input counts once (longer inputs weigh more), including the
    BOS position, whose output is often far from the rest (an attention sink), and, when the
    reference inputs are the scored samples themselves, their needle positions. ``exclude`` leaves
    positions out: ``"bos"`` drops the first position of every input (of every row of a batch)
    whose token there is the tokenizer's BOS id, which is where headscope puts BOS; an input
    without BOS (a chat prompt, ``Sample(bos=False)``, token ids that start with text) keeps its
    first position. A span label such as ``"needle"`` drops that span's tokens (inputs must then
    be samples).
    Layers not in ``layers`` (default: all) are left as zeros.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> tuple(head_means(model, [torch.tensor([0, 5, 9]), torch.tensor([0, 7])], exclude=("bos",)).shape)
    (2, 4, 16)
    """
    info = model_info(model)
    layers = list(range(info.n_layers)) if layers is None else sorted(set(layers))
    info.check_heads([(layer, 0) for layer in layers])
    exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    total = torch.zeros(info.n_layers, info.n_heads, info.d_head, dtype=torch.float64)
    count = 0
    for item in tqdm(list(reference), desc="reference means", disable=not progress):
        tokens = as_tokens(model, item)
        keep = _kept_positions(model, item, tokens, exclude).to(tokens.device)
        with torch.no_grad(), capture(model, [attn_hook(layer, "z") for layer in layers]) as acts:
            model(tokens)
        for layer in layers:
            total[layer] += acts[attn_hook(layer, "z")][keep].double().sum(dim=0).cpu()
        count += int(keep.sum())
    if count == 0:
        raise ConfigError(
            "reference holds no positions to average over; give at least one token sequence, Sample or text "
            f"(with exclude={exclude!r}, each input needs a position left)"
        )
    return (total / count).float()


def _kept_positions(
    model: Any, item: Input, tokens: Int[Tensor, "batch pos"], exclude: tuple[str, ...]
) -> Bool[Tensor, "batch pos"]:
    keep = torch.ones(tokens.shape, dtype=torch.bool)
    for label in exclude:
        if label == "bos":
            bos = tokenizer_of(model).bos_token_id
            if bos is not None:
                keep[:, 0] &= (tokens[:, 0] != bos).cpu()
            continue
        if not isinstance(item, (Sample, EncodedSample)):
            raise SpanError(
                f"exclude={label!r} names a span, but a reference input is {type(item).__name__}, not a sample; "
                "pass Samples (or EncodedSamples), or exclude only 'bos'"
            )
        for start, end in encoded(model, item).positions(label):
            keep[:, start:end] = False
    return keep


def mean_knockout(
    model: Any,
    heads: Heads,
    reference: Iterable[Input],
    *,
    queries: Iterable[int] | None = None,
    exclude: Sequence[str] = (),
) -> Knockout:
    """A ``mode="mean"`` :class:`Knockout` whose means come from :func:`head_means` over ``reference``.

    ``exclude`` (``"bos"``, span labels) leaves positions out of the means; see :func:`head_means`.

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
    table = head_means(model, reference, layers=sorted({layer for layer, _ in pairs}), exclude=exclude)
    means = torch.stack([table[layer, head] for layer, head in pairs])
    return Knockout(tuple(pairs), "mean", queries=None if queries is None else tuple(queries), means=means)
