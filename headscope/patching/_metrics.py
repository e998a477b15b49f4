"""Patching metrics: functions of a run's logits that patching tries to move.

A metric is any callable ``logits [batch, pos, vocab] -> scalar tensor`` (TransformerLens's
convention). The two standard ones are values you can print and compare:
:class:`LogitDiff` (answer minus distractor logit at one position) and :class:`AnswerLogProb`
(the teacher-forced log-probability of an answer that ends the input). :func:`generation_score`
measures a task score on a greedy generation instead, through a user ``score_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import ConfigError
from headscope.models import tokenizer_of

Metric = Callable[[Tensor], Tensor]

__all__ = ["AnswerLogProb", "LogitDiff", "Metric", "generation_score", "metric_name"]


def metric_name(metric: Any) -> str:
    """A readable name for a metric: its ``name`` attribute, else its function name."""
    return str(getattr(metric, "name", None) or getattr(metric, "__name__", None) or type(metric).__name__)


@dataclass(frozen=True)
class LogitDiff:
    """``logit[answer] - logit[distractor]`` at ``position`` (default: the last), averaged over the batch.

    >>> metric = LogitDiff(answer=3, distractor=1)
    >>> metric(torch.tensor([[[0.0, 1.0, 0.0, 4.0]]])).item()
    3.0
    """

    answer: int
    distractor: int
    position: int = -1
    name: str = "logit_diff"

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        last = logits[:, self.position]
        return (last[:, self.answer] - last[:, self.distractor]).mean()


@dataclass(frozen=True)
class AnswerLogProb:
    """Teacher-forced log-probability of ``answer_ids``, which must be the last tokens of the input.

    Sums ``log p(answer_i | everything before it)`` over the answer tokens; averages over the
    batch. Build the input as ``prompt_ids + answer_ids``.

    >>> import math
    >>> logits = torch.zeros(1, 4, 5)  # uniform over 5 tokens
    >>> math.isclose(AnswerLogProb((2, 4))(logits).item(), 2 * -math.log(5), rel_tol=1e-5)  # float32 rounding
    True
    """

    answer_ids: tuple[int, ...]
    name: str = "answer_logprob"

    def __post_init__(self) -> None:
        ids = tuple(
            int(i) for i in (self.answer_ids.tolist() if isinstance(self.answer_ids, Tensor) else self.answer_ids)
        )
        if not ids:
            raise ConfigError("AnswerLogProb needs at least one answer token; got none: pass the answer's token ids")
        object.__setattr__(self, "answer_ids", ids)

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        n = len(self.answer_ids)
        if logits.shape[1] <= n:
            raise ConfigError(
                f"the input has {logits.shape[1]} positions, too few to hold a prompt and the {n} answer tokens; "
                "pass prompt_ids + answer_ids as the input"
            )
        logprobs = torch.log_softmax(logits[:, -n - 1 : -1].float(), dim=-1)
        target = torch.tensor(self.answer_ids, device=logits.device)
        picked = logprobs.gather(-1, target.expand(logits.shape[0], n).unsqueeze(-1)).squeeze(-1)
        return picked.sum(-1).mean()


def generation_score(
    model: Any,
    tokens: Int[Tensor, "*batch pos"] | Sequence[int],
    score_fn: Callable[[str], float],
    *,
    max_new_tokens: int = 20,
    stop_at_eos: bool = True,
) -> float:
    """Greedy-decode up to ``max_new_tokens`` after one prompt and return ``score_fn(generated_text)``.

    Decoding runs a full forward per step (no key/value cache), so under :func:`patched` the
    prompt positions are patched at every step and generated positions never are.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> score = generation_score(model, [0, 5, 9], lambda text: float(len(text) > 0), max_new_tokens=3)
    >>> score
    1.0
    """
    ids = torch.as_tensor(tokens, device=next(model.parameters()).device)
    ids = ids.unsqueeze(0) if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[0] != 1:
        raise ConfigError(
            f"generation_score takes one prompt ([pos] or [1, pos]); got shape {tuple(ids.shape)}: "
            "score prompts one by one"
        )
    tokenizer = tokenizer_of(model)
    eos = getattr(tokenizer, "eos_token_id", None)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(ids)
            nxt = int(logits[0, -1].argmax())
            if stop_at_eos and eos is not None and nxt == eos:
                break
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]], device=ids.device)], dim=1)
    return float(score_fn(tokenizer.decode(new)))
