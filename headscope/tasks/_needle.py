"""Needle in a haystack, after Wu et al. (2024): a grid of context lengths and needle depths.

The haystack is cut to an exact token budget: the context (haystack plus needles) tokenizes to
exactly ``length`` tokens, not counting the question. The needle goes at token
``int(n * depth / 100)`` of the ``n`` haystack tokens, walked back to the previous sentence end;
depth 100 appends it at the end. With ``n_needles > 1`` the other needles share the target's
relation with different subjects and values (distractors), at depths drawn once per sample.
The same ``(seed, sample)`` gives the same needles and haystack in every cell of the grid, so
cells differ only in length and depth.

``answer="value"`` (default) asks for the needle's value (``" teal"``, after the lead-in "The
favorite color of X is"); ``answer="sentence"`` asks for the whole needle sentence, copied, as
Wu et al. do: the needle span is the sentence, and a head's copy score is graded over its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headscope._types import Choice
from headscope.errors import ContextLengthError, TaskError
from headscope.tasks._documents import CorpusItem, HaystackKind, NeedleKind, WriteDocument, check_kinds, document_stream
from headscope.tasks._facts import Fact, make_facts
from headscope.tasks._sample import ANSWER, NEEDLE, Sample, Span
from headscope.tasks._text import PromptWriter, occurrences, rng_for, sentence_boundaries, sentence_start_before

__all__ = ["NEEDLE_QUESTION", "Answer", "needle_grid", "needle_sample"]

#: What a needle sample asks the model to produce: the needle's value or its whole sentence.
Answer = Choice["value", "sentence"]

#: The question block after the context (Wu et al.'s wording, with "the text" for "the book").
NEEDLE_QUESTION = "\n\nBased on the content of the text above, answer the question.\nQuestion: {question}\nAnswer:"


def _ids(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets, verbose=False)


def _count(tokenizer: Any, text: str) -> int:
    return len(_ids(tokenizer, text)["input_ids"])


def _check(length: int, depth: float, n_needles: int, n_ctx: int | None, answer: str) -> None:
    problems = []
    if not isinstance(length, int) or length < 1:
        problems.append(f"length must be a positive number of tokens; got {length!r}")
    if not 0 <= depth <= 100:
        problems.append(f"depth must be a percentage in [0, 100]; got {depth!r}")
    if n_needles < 1:
        problems.append(f"n_needles must be at least 1; got {n_needles}")
    if answer not in ("value", "sentence"):
        problems.append(f"answer must be 'value' or 'sentence'; got {answer!r}")
    if problems:
        raise TaskError("; ".join(problems))
    if n_ctx is not None and length > n_ctx:
        raise ContextLengthError(f"a context of {length} tokens is longer than the model's context of {n_ctx} tokens")


def _haystack(tokenizer: Any, stream: Any, n_tokens: int) -> str:
    texts, total = [], 0
    while total < n_tokens + 16:
        text = next(stream).text
        texts.append(text)
        total += _count(tokenizer, text) + 1
    return "\n\n".join(texts)


def _place(hay: str, points: list[tuple[int, Fact]]) -> tuple[str, list[int]]:
    """Insert each fact's sentence at its character position of ``hay``; return the text and each sentence start."""
    writer, starts, cursor = PromptWriter(), [0] * len(points), 0
    for pos, j in sorted((pos, j) for j, (pos, _) in enumerate(points)):
        writer.add(hay[cursor:pos])
        if writer.text and not writer.text[-1].isspace():
            writer.add(" ")
        starts[j] = writer.add(points[j][1].sentence)
        cursor = pos
        if cursor < len(hay) and not hay[cursor].isspace():
            writer.add(" ")
    writer.add(hay[cursor:])
    return writer.text, starts


def _build(hay: str, offsets: list[tuple[int, int]], needles: list[tuple[float, Fact]], k: int, extra: int = 0):
    """The context from the first ``k`` haystack tokens (plus ``extra`` characters) with each needle at its depth."""
    cut = min((offsets[k - 1][1] if k else 0) + extra, len(hay))
    part, points = hay[:cut], []
    for depth, fact in needles:
        t = int(k * depth / 100)
        if depth >= 100 or t >= k:
            points.append((cut, fact))
        else:
            points.append((sentence_start_before(part, offsets[t][0]), fact))
    return _place(part, points)


def _fit(tokenizer: Any, hay: str, offsets: list, needles: list[tuple[float, Fact]], length: int) -> Any:
    """Cut the haystack so that the context with its needles is exactly ``length`` tokens long.

    Cuts fall on haystack token boundaries; where merges make a length unreachable that way, the
    cut moves a few characters into the next token. ``None`` if no cut gives exactly ``length``.
    """
    k = length - _count(tokenizer, " ".join(f.sentence for _, f in needles))
    tried: dict[int, int] = {}
    for _ in range(16):
        k = max(0, min(k, len(offsets)))
        if k in tried:
            break
        text, starts = _build(hay, offsets, needles, k)
        tried[k] = _count(tokenizer, text)
        if tried[k] == length:
            return text, starts
        k += length - tried[k]
    below = [k for k, n in tried.items() if n < length]
    start = max(below, key=lambda k: tried[k]) if below else min(tried)
    for k in range(start, max(start - 32, -1), -1):
        for extra in range(1, 64):
            text, starts = _build(hay, offsets, needles, k, extra)
            n = _count(tokenizer, text)
            if n == length:
                return text, starts
            if n > length + 2:
                break
    return None


def _fit_dropping_sentences(tokenizer: Any, stream: Any, needles: list[tuple[float, Fact]], length: int):
    """Fit the haystack; if the tokenizer cannot hit ``length`` exactly near the cut, drop leading sentences."""
    hay = _haystack(tokenizer, stream, length + 64)
    for start in sentence_boundaries(hay)[:12]:
        rest = hay[start:].lstrip()
        fitted = _fit(tokenizer, rest, list(_ids(tokenizer, rest, offsets=True)["offset_mapping"]), needles, length)
        if fitted is not None:
            return fitted
    raise TaskError(f"could not cut the haystack to exactly {length} tokens; try a length one token longer")


def needle_sample(
    tokenizer: Any,
    length: int,
    depth: float,
    *,
    needle: NeedleKind = "natural",
    haystack: HaystackKind = "diverse",
    n_needles: int = 1,
    answer: Answer = "value",
    seed: int = 0,
    index: int = 0,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
    n_ctx: int | None = None,
) -> Sample:
    """One needle-in-a-haystack sample whose context is exactly ``length`` tokens of ``tokenizer``.

    ``depth`` is a percentage (0 = start, 100 = end). ``index`` picks the sample within a seed.
    ``answer`` is what the gold answer is: ``"value"`` (the needle's value) or ``"sentence"`` (the
    whole needle sentence). Spans: ``"needle"`` is the answer inside the context (the value, or
    the whole sentence), ``"answer"`` every occurrence of the answer in the context,
    ``"distractor"`` the values of the other needles. ``lead_in`` is the needle sentence up to the
    value, which :meth:`Sample.with_chat_template` writes at the start of the assistant's turn;
    a sentence answer has none (the model writes the sentence from its start).
    ``n_ctx`` (a model's context window) raises :class:`~headscope.ContextLengthError` when the
    whole prompt, BOS included, would not fit.

    >>> from headscope.models import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> s = needle_sample(tok, 200, 50, needle="templated", seed=1)
    >>> len(tok(s.prompt[: s.prompt.index("\\n\\nBased")])["input_ids"])
    200
    >>> s.text("needle") == [s.answer.strip()]
    True
    >>> whole = needle_sample(tok, 200, 50, needle="templated", seed=1, answer="sentence")
    >>> whole.text("needle") == [whole.answer.strip()] == [whole.meta["needle_sentence"]], whole.lead_in
    (True, '')
    """
    check_kinds(needle, haystack)
    _check(length, depth, n_needles, n_ctx, answer)
    rng = rng_for(seed, "needle", index)
    facts = make_facts(rng, needle, n_needles, same_relation=True)
    depths = [float(depth)] + [float(rng.randint(0, 100)) for _ in facts[1:]]
    needle_tokens = _count(tokenizer, " ".join(f.sentence for f in facts))
    if needle_tokens >= length:
        raise TaskError(
            f"the needle{'s' if n_needles > 1 else ''} alone take {needle_tokens} tokens, which leaves no haystack "
            f"in a context of {length} tokens; use a longer length or fewer needles"
        )
    stream = document_stream(
        rng_for(seed, "haystack", index),
        haystack,
        corpus=corpus,
        write_document=write_document,
        avoid=[f.value for f in facts],
    )
    context, starts = _fit_dropping_sentences(tokenizer, stream, list(zip(depths, facts, strict=True)), length)
    target = facts[0]
    prompt = context + NEEDLE_QUESTION.format(question=target.question)
    gold, start = (target.value, target.value_start) if answer == "value" else (target.sentence, 0)
    spans = [Span(NEEDLE, starts[0] + start, starts[0] + start + len(gold))]
    spans += [Span(ANSWER, a, b) for a, b in occurrences(context, gold)]
    spans += [
        Span("distractor", s + f.value_start, s + f.value_end) for s, f in zip(starts[1:], facts[1:], strict=True)
    ]
    if n_ctx is not None and _count(tokenizer, prompt) + 1 > n_ctx:
        raise ContextLengthError(
            f"the prompt takes {_count(tokenizer, prompt) + 1} tokens with BOS, more than the model's {n_ctx}; "
            f"use a shorter length"
        )
    meta = {
        "answers": [gold],
        "answer_kind": answer,
        "question": target.question,
        "needle_sentence": target.sentence,
        "value": target.value,
        "length": length,
        "depth": float(depth),
        "needle_depths": depths,
        "needle_kind": needle,
        "haystack_kind": haystack,
        "seed": seed,
        "index": index,
    }
    lead_in = target.lead_in if answer == "value" else ""
    return Sample(prompt, " " + gold, tuple(spans), task="needle", meta=meta, lead_in=lead_in)


def needle_grid(
    tokenizer: Any,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    needle: NeedleKind = "natural",
    haystack: HaystackKind = "diverse",
    n_needles: int = 1,
    answer: Answer = "value",
    n_samples: int = 1,
    seed: int = 0,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
    n_ctx: int | None = None,
) -> list[Sample]:
    """Needle samples for every (length, depth, sample index), in that nesting order.

    Wu et al. use ``lengths=numpy.linspace(1000, 50000, 20)`` and ``depths=numpy.linspace(0, 100, 10)``
    (pass ints for lengths). See :func:`needle_sample` for the parameters.

    >>> from headscope.models import tiny_tokenizer
    >>> grid = needle_grid(tiny_tokenizer(), [120, 240], [0, 100], needle="symbolic", haystack="symbolic")
    >>> [(s.meta["length"], s.meta["depth"]) for s in grid]
    [(120, 0.0), (120, 100.0), (240, 0.0), (240, 100.0)]
    """
    lengths = [int(n) for n in lengths]
    for length in lengths:
        for depth in depths:
            _check(length, depth, n_needles, n_ctx, answer)
    return [
        needle_sample(
            tokenizer,
            length,
            depth,
            needle=needle,
            haystack=haystack,
            n_needles=n_needles,
            answer=answer,
            seed=seed,
            index=i,
            corpus=corpus,
            write_document=write_document,
            n_ctx=n_ctx,
        )
        for length in lengths
        for depth in depths
        for i in range(n_samples)
    ]
