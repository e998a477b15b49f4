"""Score a model on task samples: greedy answers, teacher-forced accuracy, retrieval success.

These are the ``score_fn(model, sample) -> float`` functions that knockout curves, patching
comparisons and the pipeline take. They run whatever hooks are attached, so calling one inside
``with knockout(...)`` scores the knocked-out model.
"""

from __future__ import annotations

from typing import Any

import torch

from headscope.errors import ConfigError
from headscope.models import model_info, tokenizer_of
from headscope.retrieval import RougeRecall, greedy_steps
from headscope.tasks import Sample
from headscope.tasks._forced import answer_logits

__all__ = ["answer_accuracy", "generate_answer", "retrieval_success"]


def generate_answer(model: Any, sample: Sample, *, max_new_tokens: int = 32) -> str:
    """The model's greedy continuation of ``sample.prompt`` (KV-cached), decoded, stopping at EOS.

    >>> from headscope import load_model
    >>> isinstance(generate_answer(load_model("tiny-llama"), Sample("The key is", " blue"), max_new_tokens=3), str)
    True
    """
    tokenizer = tokenizer_of(model)
    ids = sample.encode(tokenizer).input_ids
    model_info(model).check_length(len(ids) + max_new_tokens)
    stop = {tokenizer.eos_token_id} - {None}
    with torch.no_grad():
        tokens = list(greedy_steps(model, ids, max_new_tokens=max_new_tokens, stop_ids=stop))
    return tokenizer.decode([t for t in tokens if t not in stop], skip_special_tokens=True)


def retrieval_success(model: Any, sample: Sample, *, threshold: float = 0.5, max_new_tokens: int = 32) -> float:
    """1.0 when the greedy answer passes headscope's success rule, else 0.0.

    The rule (:data:`~headscope.retrieval.DEFAULT_SUCCESS` at ``threshold=0.5``) is the one that
    decides which samples detection counts: Wu et al.'s ROUGE-1 recall of the gold answer above
    ``threshold``, and, for a sample that knows its value (``meta["value"]``), the value named as
    a whole word, so a copied sentence with the wrong value scores 0.
    """
    answer = generate_answer(model, sample, max_new_tokens=max_new_tokens)
    return float(RougeRecall(threshold)(sample, answer))


def answer_accuracy(model: Any, sample: Sample) -> float:
    """Fraction of the gold answer's tokens that the model's argmax reproduces under teacher forcing.

    One forward pass over prompt + answer; cheap enough for sweeps. The gold answer must be what
    the model says next: chat-templated builder samples end with their lead-in ("The favorite
    spice of X is", see :meth:`~headscope.tasks.Sample.with_chat_template`); give your own
    samples a ``lead_in``, or score by generation (:func:`retrieval_success`).

    >>> from headscope import load_model
    >>> 0.0 <= answer_accuracy(load_model("tiny-llama"), Sample("The key is", " blue")) <= 1.0
    True
    """
    enc = sample.encode(tokenizer_of(model))
    n = len(enc.answer_ids)
    if n == 0:
        raise ConfigError("the sample's answer is empty: nothing to score")
    model_info(model).check_length(len(enc.input_ids) + n)
    predicted = answer_logits(model, enc).argmax(-1).cpu()
    return (predicted == enc.answer_ids).float().mean().item()
