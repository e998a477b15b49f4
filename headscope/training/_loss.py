"""The answer-only language-modelling loss, and the checks samples pass before training.

A sample is fed as its prompt ids followed by its answer ids (less the last answer token, which
predicts nothing). Only the logits that predict answer tokens enter the loss: the prompt and
the padding do not. Rows of a batch are right-padded to one length and no attention mask is
passed: attention is causal, so padding after a sequence never reaches its positions, and
position ids start at 0 in every row, as they do for a single sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from headscope.errors import ConfigError, ContextLengthError, InputTypeError, ModelMismatchError
from headscope.models import model_info, tokenizer_of
from headscope.tasks import EncodedSample, Sample
from headscope.tasks._forced import forced_batch

#: Sample or EncodedSample items; :func:`prepare` checks each (InputTypeError), so any item is let through here.
Samples = Sequence[Any]

_PROBE = "The magic number is 4712. Paris, London and Tokyo!"


def answer_loss(model: Any, batch: Samples, *, tokenizer: Any = None) -> Float[Tensor, ""]:
    """Mean cross-entropy of the answer tokens given their prompts, over all answer tokens of ``batch``.

    ``batch`` holds :class:`~headscope.tasks.Sample` (encoded with ``tokenizer``, by default the
    model's) or already encoded samples. Prompt tokens and padding carry no loss. The result keeps
    its graph, so ``answer_loss(model, batch).backward()`` trains.

    >>> from headscope import load_model
    >>> from headscope.tasks import Sample
    >>> model = load_model("tiny-llama")
    >>> loss = answer_loss(model, [Sample("The key is red. The key is", " red")])
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """
    encoded = prepare(model, batch, tokenizer)
    total, count = answer_nll(model, encoded)
    return total / count


def answer_nll(
    model: Any, batch: Sequence[EncodedSample], *, forward: Callable[[Tensor], Tensor] | None = None
) -> tuple[Float[Tensor, ""], int]:
    """Summed negative log-likelihood of the answer tokens of ``batch``, and how many there are.

    ``forward(tokens) -> logits`` replaces ``model(tokens)`` (e.g. a fused twin sharing its weights).
    """
    forced = forced_batch(batch)
    device = next(model.parameters()).device
    logits = (forward or model)(forced.tokens.to(device))
    scored = forced.targets != -100
    index = torch.arange(len(batch))[:, None].expand_as(forced.rows)
    picked = logits[index[scored].to(device), forced.rows[scored].to(device)]
    picked = picked.to(torch.promote_types(picked.dtype, torch.float32))
    total = F.cross_entropy(picked, forced.targets[scored].to(device), reduction="sum")
    return total, int(scored.sum())


def prepare(model: Any, samples: Samples, tokenizer: Any = None) -> list[EncodedSample]:
    """Encode ``samples`` for ``model`` and check them, reporting every bad sample at once."""
    if len(samples) == 0:
        raise ConfigError("no samples given: fine-tuning and the answer loss need at least one sample")
    info = model_info(model)
    if any(isinstance(s, Sample) for s in samples):
        tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)
        check_tokenizer(model, tokenizer)
    encoded = [s.encode(tokenizer) if isinstance(s, Sample) else s for s in samples]
    if not all(isinstance(s, EncodedSample) for s in encoded):
        bad = next(type(s).__name__ for s in encoded if not isinstance(s, EncodedSample))
        raise InputTypeError(
            f"samples must be headscope Sample or EncodedSample objects; got a {bad} "
            "(build samples with headscope.tasks)"
        )
    empty = [i for i, s in enumerate(encoded) if len(s.answer_ids) == 0]
    if empty:
        raise ConfigError(f"samples {_listed(empty)} have an empty answer; the answer loss needs answer tokens")
    too_big = [i for i, s in enumerate(encoded) if int(torch.cat([s.input_ids, s.answer_ids]).max()) >= info.d_vocab]
    if too_big:
        raise ModelMismatchError(
            f"samples {_listed(too_big)} hold token ids beyond the model's vocabulary of {info.d_vocab}: "
            "they were encoded with another tokenizer; encode them with the model's"
        )
    lengths = [len(s.input_ids) + len(s.answer_ids) - 1 for s in encoded]
    long = [i for i, n in enumerate(lengths) if n > info.n_ctx]
    if long:
        raise ContextLengthError(
            f"samples {_listed(long)} are longer than {info.name}'s context of {info.n_ctx} tokens "
            f"(prompt and answer together; the longest has {max(lengths)}); shorten or drop them"
        )
    return encoded


def check_tokenizer(model: Any, tokenizer: Any) -> None:
    """:class:`ModelMismatchError` if ``tokenizer`` is not the model's (vocabulary size and a probe text)."""
    info = model_info(model)
    if len(tokenizer) > info.d_vocab:
        raise ModelMismatchError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds {info.d_vocab}; "
            "pass the model's own tokenizer (headscope.models.tokenizer_of(model))"
        )
    own = getattr(model, "tokenizer", None)
    if own is None or own is tokenizer:
        return
    mine, theirs = own(_PROBE, add_special_tokens=False)["input_ids"], tokenizer(_PROBE, add_special_tokens=False)
    theirs = theirs["input_ids"]
    if len(own) != len(tokenizer) or mine != theirs or own.bos_token_id != tokenizer.bos_token_id:
        raise ModelMismatchError(
            f"the tokenizer differs from the model's: {len(tokenizer)} vs {len(own)} tokens, and {_PROBE!r} "
            f"encodes as {theirs[:8]} vs {mine[:8]}; pass the model's own tokenizer or tokenizer=None"
        )


def _listed(indices: list[int], k: int = 10) -> str:
    shown = ", ".join(map(str, indices[:k]))
    return f"{shown}, ... ({len(indices)} in all)" if len(indices) > k else shown
