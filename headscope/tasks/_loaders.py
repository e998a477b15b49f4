"""Real data as samples: Lost-in-the-Middle MDQA, its "real" variant from the oracle file, MuSiQue, plain QA.

Files are JSON Lines, optionally gzip-compressed (``.gz``). A line that is not a JSON object,
or lacks a field, raises :class:`TaskError` naming the file and line. Rows whose answers never
occur in a gold document cannot give an ``"answer"`` span; they are skipped with a warning
(``skip_unanswerable=False`` raises instead).
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from headscope.errors import SpanError, TaskError
from headscope.tasks._documents import Document
from headscope.tasks._render import documents_sample
from headscope.tasks._sample import ANSWER, NEEDLE, Sample, Span
from headscope.tasks._scoring import normalize_answer
from headscope.tasks._text import PromptWriter, occurrences, rng_for

__all__ = ["load_mdqa", "load_musique", "load_qa_jsonl", "read_jsonl", "real_mdqa"]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"no such file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TaskError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


def _field(row: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in row:
        raise TaskError(f"{where}: missing field {key!r} (fields present: {sorted(row)})")
    if not isinstance(row[key], kind):
        raise TaskError(f"{where}: field {key!r} should be {kind}, got {type(row[key]).__name__}")
    return row[key]


def _answers(row: dict, keys: Sequence[str], where: str) -> list[str]:
    out: list[str] = []
    for key in keys:
        value = row.get(key, [])
        out += [value] if isinstance(value, str) else [str(v) for v in value]
    out = [a for a in dict.fromkeys(out) if a.strip()]
    if not out:
        raise TaskError(f"{where}: no answer in field(s) {list(keys)}")
    return out


def _with_needle(sample: Sample, within: tuple[int, int] | None = None) -> Sample:
    """Mark the first answer occurrence (inside ``within`` if one is there) as the needle."""
    answers = [s for s in sample.spans if s.label == ANSWER]
    inside = [s for s in answers if within and within[0] <= s.start and s.end <= within[1]]
    first = (inside or answers)[0]
    return replace(sample, spans=(*sample.spans, Span(NEEDLE, first.start, first.end)))


def _warn_skipped(skipped: list[int], path: Path) -> None:
    if skipped:
        warnings.warn(
            f"{path}: skipped {len(skipped)} row(s) whose answers occur in no gold document "
            f"(lines {skipped[:5]}{'...' if len(skipped) > 5 else ''})",
            stacklevel=4,  # the caller of load_*
        )


def _docs(row: dict, key: str, text_key: str, where: str) -> list[tuple[Document, dict]]:
    out = []
    for j, ctx in enumerate(_field(row, key, list, where)):
        if not isinstance(ctx, dict) or text_key not in ctx:
            raise TaskError(f"{where}: {key}[{j}] should be an object with {text_key!r}")
        out.append((Document(str(ctx.get("title", "")), str(ctx[text_key])), ctx))
    return out


def _load_rows(
    path: str | Path, row_sample: Callable[[dict, int, str], Sample], limit: int | None, skip_unanswerable: bool
) -> list[Sample]:
    """Run ``row_sample(row, line, where)`` over a JSONL file; rows that raise :class:`SpanError`
    (no answer where one must be) are skipped with one warning, or re-raised naming the line."""
    path = Path(path)
    samples: list[Sample] = []
    skipped: list[int] = []
    for number, row in read_jsonl(path):
        if limit is not None and len(samples) >= limit:
            break
        where = f"{path}, line {number}"
        try:
            samples.append(row_sample(row, number, where))
        except SpanError as err:
            if not skip_unanswerable:
                raise SpanError(f"{where}: {err}") from None
            skipped.append(number)
    _warn_skipped(skipped, path)
    return samples


def load_mdqa(path: str | Path, *, limit: int | None = None, skip_unanswerable: bool = True) -> list[Sample]:
    """Lost-in-the-Middle multi-document QA rows (``question``, ``answers``, ``ctxs``) as samples.

    The gold document is the context with ``isgold`` (or, failing that, ``hasanswer``). Spans:
    ``"doc"``, ``"gold_doc"``, ``"answer"`` (answer occurrences in the gold document) and
    ``"needle"`` (the first of them).
    """

    def row_sample(row: dict, number: int, where: str) -> Sample:
        question = _field(row, "question", str, where)
        answers = _answers(row, ["answers"], where)
        docs = _docs(row, "ctxs", "text", where)
        gold = [j for j, (_, c) in enumerate(docs) if c.get("isgold")] or [
            j for j, (_, c) in enumerate(docs) if c.get("hasanswer")
        ]
        meta = {"answers": answers, "question": question, "gold_position": gold[0] if gold else None, "line": number}
        sample = documents_sample(
            [d for d, _ in docs], question, " " + answers[0], gold=gold, answers=answers, task="mdqa", meta=meta
        )
        return _with_needle(sample)

    return _load_rows(path, row_sample, limit, skip_unanswerable)


def real_mdqa(
    path: str | Path,
    *,
    n_docs: int = 10,
    gold_position: int | None = None,
    n_samples: int = 1,
    seed: int = 0,
    exclude: Sequence[Sample] = (),
) -> list[Sample]:
    """The seed paper's "real" MDQA from the oracle file: each question's distractors are other rows' gold passages.

    A distractor must contain none of the question's answers, even inside a word (after SQuAD
    normalization of both).
    ``gold_position`` is 0-based (drawn per sample when ``None``). ``exclude`` holds samples
    (built by this function) kept apart from the result: no question of theirs is asked and no
    passage of theirs is used, as gold or distractor, so training data built with
    ``exclude=eval_samples`` never shows an evaluation question or gold passage.
    """
    path = Path(path)
    rows = []
    for number, row in read_jsonl(path):
        where = f"{path}, line {number}"
        docs = _docs(row, "ctxs", "text", where)
        gold = [d for d, c in docs if c.get("isgold")] or [d for d, _ in docs[:1]]
        if gold:
            rows.append((number, _field(row, "question", str, where), _answers(row, ["answers"], where), gold[0]))
    if n_docs < 1 or (gold_position is not None and not 0 <= gold_position < n_docs):
        raise TaskError(f"need n_docs >= 1 and gold_position in [0, {n_docs - 1}]; got {n_docs}, {gold_position}")
    questions = {s.meta["question"] for s in exclude}
    shown = "\n".join(s.prompt for s in exclude)
    rows = [r for r in rows if r[1] not in questions and r[3].text not in shown]
    passages = {}
    for _, _, _, doc in rows:
        passages.setdefault(doc.text, (doc, normalize_answer(doc.title + " " + doc.text)))
    pool = list(passages.values())
    rng = rng_for(seed, "real-mdqa")
    samples: list[Sample] = []
    for number, question, answers, gold in rng.sample(rows, len(rows)):
        if len(samples) == n_samples:
            break
        banned = [normalize_answer(a) for a in answers]
        eligible = [d for d, norm in pool if d.text != gold.text and not any(b in norm for b in banned)]
        if len(eligible) < n_docs - 1 or not any(occurrences(gold.text, a) for a in answers):
            continue
        distractors = rng.sample(eligible, n_docs - 1)
        position = rng.randrange(n_docs) if gold_position is None else gold_position
        docs = [*distractors[:position], gold, *distractors[position:]]
        meta = {"answers": answers, "question": question, "gold_position": position, "line": number, "seed": seed}
        sample = documents_sample(
            docs, question, " " + answers[0], gold=[position], answers=answers, task="mdqa", meta=meta
        )
        samples.append(_with_needle(sample))
    if len(samples) < n_samples:
        raise TaskError(f"{path} yields only {len(samples)} usable questions; asked for {n_samples}")
    return samples


def load_musique(path: str | Path, *, limit: int | None = None, skip_unanswerable: bool = True) -> list[Sample]:
    """MuSiQue rows (``paragraphs`` with ``is_supporting``, ``question``, ``answer``, ``answer_aliases``).

    Gold documents are the supporting paragraphs. The needle is the first answer occurrence in
    the paragraph that supports the last hop of ``question_decomposition`` when that is given.
    """

    def row_sample(row: dict, number: int, where: str) -> Sample:
        question = _field(row, "question", str, where)
        answers = _answers(row, ["answer", "answer_aliases"], where)
        docs = _docs(row, "paragraphs", "paragraph_text", where)
        gold = [j for j, (_, p) in enumerate(docs) if p.get("is_supporting")]
        meta = {"answers": answers, "question": question, "id": row.get("id"), "line": number}
        sample = documents_sample(
            [d for d, _ in docs], question, " " + answers[0], gold=gold, answers=answers, task="musique", meta=meta
        )
        last = _last_hop(row, docs)
        doc_spans = [s for s in sample.spans if s.label == "doc"]
        return _with_needle(sample, (doc_spans[last].start, doc_spans[last].end) if last is not None else None)

    return _load_rows(path, row_sample, limit, skip_unanswerable)


def _last_hop(row: dict, docs: list[tuple[Document, dict]]) -> int | None:
    steps = row.get("question_decomposition") or []
    idx = steps[-1].get("paragraph_support_idx") if steps and isinstance(steps[-1], dict) else None
    for j, (_, p) in enumerate(docs):
        if idx is not None and p.get("idx", j) == idx:
            return j
    return None


def load_qa_jsonl(
    path: str | Path,
    *,
    context_key: str = "context",
    question_key: str = "question",
    answer_key: str = "answer",
    limit: int | None = None,
    skip_unanswerable: bool = True,
) -> list[Sample]:
    """Plain ``{context, question, answer}`` rows (``answer`` a string or a list of aliases).

    The prompt is ``context``, a blank line, ``Question: ...`` and ``Answer:``. Spans:
    ``"answer"`` (answer occurrences in the context) and ``"needle"`` (the first).
    """

    def row_sample(row: dict, number: int, where: str) -> Sample:
        context = _field(row, context_key, str, where)
        question = _field(row, question_key, str, where)
        answers = _answers(row, [answer_key], where)
        writer = PromptWriter()
        writer.add(context)
        for answer in answers:
            for a, b in occurrences(context, answer):
                writer.mark(ANSWER, a, b)
        if not writer.spans:
            raise SpanError(f"no answer of {answers} occurs in the context")
        writer.add(f"\n\nQuestion: {question}\nAnswer:")
        spans = sorted(writer.spans, key=lambda s: (s.start, s.end))
        meta = {"answers": answers, "question": question, "line": number}
        return _with_needle(Sample(writer.text, " " + answers[0], tuple(spans), task="qa", meta=meta))

    return _load_rows(path, row_sample, limit, skip_unanswerable)
