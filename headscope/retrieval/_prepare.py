"""Encode samples once and check them all before any forward pass: labels, spans, lengths."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from headscope.errors import ConfigError, ContextLengthError, InputTypeError, SpanError
from headscope.models import ModelInfo
from headscope.tasks import Sample

__all__ = ["Prepared", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """One sample as tokens, with its needle positions (the union of every ``label`` span)."""

    sample: Sample
    input_ids: Int[Tensor, " pos"]
    answer_ids: Int[Tensor, " answer"]
    spans: tuple[tuple[int, int], ...]

    @property
    def needle_len(self) -> int:
        """Tokens in the longest needle span: a head that copies one span whole scores 1."""
        return max(end - start for start, end in self.spans)


def _listing(items: Sequence[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def prepare(
    samples: Sequence[Sample],
    tokenizer: Any,
    info: ModelInfo,
    *,
    span: str,
    extra_tokens: int | None,
    same: Callable[[Tensor], Tensor] | None = None,
) -> list[Prepared]:
    """Encode ``samples`` and report every bad one at once.

    ``extra_tokens`` is how many tokens the forward passes add after the prompt: the gold answer
    less one in teacher-forced mode (``None``), ``max_new_tokens - 1`` in generation mode.
    ``same`` maps token ids to the classes detection compares (a
    :class:`~headscope.retrieval._match.TokenMatch`; default: the ids themselves).
    """
    if len(samples) == 0:
        raise ConfigError("samples is empty: retrieval scores need at least one sample with a labelled needle")
    prepared: list[Prepared] = []
    span_problems: list[str] = []
    for i, sample in enumerate(samples):
        if not isinstance(sample, Sample):
            raise InputTypeError(
                f"samples[{i}] is a {type(sample).__name__}; expected a headscope.tasks.Sample "
                "(build samples with headscope.tasks, e.g. needle_grid)"
            )
        if span not in sample.labels():
            span_problems.append(f"sample {i} has no {span!r} span (its labels: {sample.labels()})")
            continue
        try:
            enc = sample.encode(tokenizer)
        except SpanError as err:
            span_problems.append(f"sample {i}: {err}")
            continue
        if extra_tokens is None and enc.answer_ids.numel() == 0:
            span_problems.append(f"sample {i} has an empty answer; teacher-forced scoring needs gold answer tokens")
            continue
        prepared.append(Prepared(sample, enc.input_ids, enc.answer_ids, tuple(enc.spans[span])))
    if span_problems:
        raise SpanError(
            f"{len(span_problems)} of {len(samples)} samples cannot be scored on {span!r}: "
            f"{_listing(span_problems)}. Pass span= to score another labelled span."
        )
    too_long = []
    for i, p in enumerate(prepared):
        n = p.input_ids.numel() + (p.answer_ids.numel() - 1 if extra_tokens is None else extra_tokens)
        if n > info.n_ctx:
            too_long.append(f"sample {i}: {n} tokens")
    if too_long:
        what = "prompt + answer - 1" if extra_tokens is None else f"prompt + max_new_tokens - 1 ({extra_tokens})"
        raise ContextLengthError(
            f"{len(too_long)} samples need more than {info.name}'s context of {info.n_ctx} tokens ({what}): "
            f"{_listing(too_long)}. Shorten the contexts"
            + ("." if extra_tokens is None else " or lower max_new_tokens.")
        )
    if extra_tokens is None:
        blind = [i for i, p in enumerate(prepared) if not _needle_holds_answer(p, same or (lambda ids: ids))]
        if blind:
            why = (
                "the span words the answer differently (another case, spelling or form)"
                if getattr(same, "match", "id") == "text"
                else "the answer is probably tokenized differently inside the prompt (check the leading space "
                "of Sample.answer, or detect with match='text', which takes ' Paris' and 'Paris' for one token)"
            )
            warnings.warn(
                f"{len(blind)} samples hold none of their gold answer tokens inside the {span!r} span "
                f"(first: {blind[:5]}), so no head can score on them; {why}",
                stacklevel=3,
            )
    return prepared


def _needle_holds_answer(p: Prepared, same: Callable[[Tensor], Tensor]) -> bool:
    inside = {int(t) for start, end in p.spans for t in same(p.input_ids[start:end])}
    return any(int(t) in inside for t in same(p.answer_ids))
