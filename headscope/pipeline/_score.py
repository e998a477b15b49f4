"""Task score of a model on needle samples: teacher-forced exact match and answer log-probability."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headscope.errors import ConfigError, ModelError
from headscope.evaluate import generate_answer
from headscope.models import hf_twin, tokenizer_of, twin_unavailable
from headscope.tasks import Sample, subspan_match
from headscope.tasks._forced import answer_logits

__all__ = ["TaskScore", "answer_correct", "answer_logprob", "generated_match", "sample_scores", "task_score"]


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


def sample_scores(model: Any, samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """Per sample, ``(exact match, answer log-probability)`` teacher-forced, from one forward pass each.

    >>> from headscope import load_model
    >>> [(em, lp < 0) for em, lp in sample_scores(load_model("tiny-llama"), [Sample("The key is", " 4712")])]
    [(0.0, True)]
    """
    if not samples:
        raise ConfigError("scoring needs at least one sample; got none")
    out = []
    for sample in samples:
        logits, answer = _answer_logits(model, sample)
        correct = float(bool((logits.argmax(-1) == answer).all()))
        out.append((correct, float(logits.log_softmax(-1).gather(-1, answer[:, None]).sum())))
    return out


def task_score(model: Any, samples: Sequence[Sample]) -> TaskScore:
    """Exact-match accuracy and mean answer log-probability of ``model`` on ``samples``.

    >>> from headscope import load_model
    >>> score = task_score(load_model("tiny-llama"), [Sample("The key is 4712. The key is", " 4712")])
    >>> score.accuracy, score.logprob < 0, score.n
    (0.0, True, 1)
    """
    pairs = sample_scores(model, samples)
    return TaskScore(sum(c for c, _ in pairs) / len(pairs), sum(lp for _, lp in pairs) / len(pairs), len(pairs))


def answer_logprob(model: Any, sample: Sample) -> float:
    """Log-probability of the gold answer (nats, summed over its tokens), teacher-forced.

    A ``score_fn`` for :func:`~headscope.ablation.knockout_curve` that moves smoothly where
    exact answers are rare.

    >>> from headscope import load_model
    >>> answer_logprob(load_model("tiny-llama"), Sample("The key is 4712. The key is", " 4712")) < 0
    True
    """
    logits, answer = _answer_logits(model, sample)
    return float(logits.log_softmax(-1).gather(-1, answer[:, None]).sum())


def generated_match(
    model: Any, samples: Sequence[Sample], *, max_new_tokens: int, attention: str = "auto"
) -> list[float]:
    """Per sample, 1.0 if a gold answer (``meta["answers"]``, else the answer) occurs in the greedy generation.

    Lost in the Middle's best-subspan exact match (:func:`~headscope.tasks.subspan_match`) on
    ``max_new_tokens`` greedily generated tokens. ``attention="fused"`` (or ``"auto"`` where the
    model allows it and no hook is attached) generates with Hugging Face's sdpa twin of the bridge,
    which shares its weights and honours a knockout active on the bridge's fused route; otherwise
    through the bridge itself with a KV cache (every attached hook runs).

    >>> from headscope import load_model
    >>> generated_match(load_model("tiny-llama"), [Sample("The key is", " 4712")], max_new_tokens=2)
    [0.0]
    """
    if attention not in ("auto", "fused", "eager"):
        raise ConfigError(f"attention must be 'auto', 'fused' or 'eager'; got {attention!r}")
    reason = twin_unavailable(model) if attention != "eager" else "attention='eager'"
    if reason is not None and attention == "fused":
        raise ModelError(f"attention='fused' cannot generate with this model: {reason}. Use attention='auto'.")
    tokenizer = tokenizer_of(model)
    twin = hf_twin(model) if reason is None else None
    out = []
    for sample in samples:
        golds = sample.meta.get("answers") or [sample.answer]
        if twin is None:
            text = generate_answer(model, sample, max_new_tokens=max_new_tokens)
        else:
            text = _generate(twin, tokenizer, sample, max_new_tokens)
        out.append(subspan_match(text, golds))
    return out


def _generate(twin: Any, tokenizer: Any, sample: Sample, max_new_tokens: int) -> str:
    ids = sample.encode(tokenizer).input_ids[None].to(twin.device)
    stop = tokenizer.eos_token_id
    with torch.no_grad():
        out = twin.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=stop)
    return tokenizer.decode(getattr(out, "sequences", out)[0, ids.shape[1] :], skip_special_tokens=True)
