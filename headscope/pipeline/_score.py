"""Task score of a model on needle samples: teacher-forced exact match and answer log-probability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headscope.errors import ConfigError
from headscope.models import tokenizer_of
from headscope.tasks import Sample
from headscope.tasks._forced import answer_logits

__all__ = ["TaskScore", "answer_correct", "task_score"]


@dataclass(frozen=True)
class TaskScore:
    """Mean over samples: ``accuracy`` (share answered exactly) and ``logprob`` (answer log-probability, nats)."""

    accuracy: float
    logprob: float
    n: int


def _answer_logits(model: Any, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the rows that predict each answer token (one forward over prompt + answer), and the answer ids."""
    enc = sample.encode(tokenizer_of(model))
    logits = answer_logits(model, enc)
    return logits.float(), enc.answer_ids.to(logits.device)


def answer_correct(model: Any, sample: Sample) -> float:
    """1.0 if greedy decoding would begin with the whole gold answer, else 0.0.

    Teacher-forced: the argmax at every answer position must be the gold token, which is
    exactly when greedy generation reproduces the answer (one forward pass, no decoding loop).
    Usable as the ``score_fn`` of :func:`~headscope.ablation.knockout_curve`.

    >>> from headscope import load_model
    >>> answer_correct(load_model("tiny-llama"), Sample("The key is 4712. The key is", " 4712"))
    0.0
    """
    logits, answer = _answer_logits(model, sample)
    return float(bool((logits.argmax(-1) == answer).all()))


def task_score(model: Any, samples: Sequence[Sample]) -> TaskScore:
    """Exact-match accuracy and mean answer log-probability of ``model`` on ``samples``.

    >>> from headscope import load_model
    >>> score = task_score(load_model("tiny-llama"), [Sample("The key is 4712. The key is", " 4712")])
    >>> score.accuracy, score.logprob < 0, score.n
    (0.0, True, 1)
    """
    if not samples:
        raise ConfigError("task_score needs at least one sample")
    correct, logprob = 0.0, 0.0
    for sample in samples:
        logits, answer = _answer_logits(model, sample)
        correct += float(bool((logits.argmax(-1) == answer).all()))
        logprob += float(logits.log_softmax(-1).gather(-1, answer[:, None]).sum())
    return TaskScore(correct / len(samples), logprob / len(samples), len(samples))
