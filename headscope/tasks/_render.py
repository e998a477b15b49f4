"""Multi-document prompts in the *Lost in the Middle* format, with document, gold and answer spans."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headscope.errors import SpanError
from headscope.tasks._documents import Document
from headscope.tasks._sample import ANSWER, DOC, GOLD_DOC, NEEDLE, Sample
from headscope.tasks._text import PromptWriter, occurrences

__all__ = ["MDQA_INSTRUCTION", "documents_sample"]

#: Liu et al.'s instruction for multi-document QA.
MDQA_INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant)."
)


def documents_sample(
    docs: Sequence[Document],
    question: str,
    answer: str,
    *,
    gold: Sequence[int],
    answers: Sequence[str],
    needles: Sequence[tuple[int, int, int]] = (),
    extra: Sequence[tuple[str, int, int, int]] = (),
    instruction: str = MDQA_INSTRUCTION,
    task: str,
    meta: dict[str, Any],
    lead_in: str = "",
) -> Sample:
    """Render ``docs`` as ``Document [i](Title: ...) text`` lines, then the question and ``Answer:``.

    ``gold`` indexes the gold documents; every whole-word occurrence of any of ``answers`` in
    them (title or text) becomes an ``"answer"`` span. ``needles`` are ``(doc, start, end)``
    character ranges of a document's text, labelled ``"needle"``; ``extra`` are
    ``(label, doc, start, end)`` ranges likewise; ``lead_in`` is the sample's answer lead-in.
    :class:`SpanError` if no answer occurs in a gold document.
    """
    writer = PromptWriter()
    writer.add(instruction + "\n\n")
    text_starts, gold_set = [], set(gold)
    for i, doc in enumerate(docs):
        if i:
            writer.add("\n")
        head = f"Document [{i + 1}](Title: {doc.title}) "
        labels = (DOC, GOLD_DOC) if i in gold_set else (DOC,)
        start = writer.add(head + doc.text, *labels)
        text_starts.append(start + len(head))
        if i in gold_set:
            title_start = start + len(f"Document [{i + 1}](Title: ")
            for seg_start, seg in ((title_start, doc.title), (start + len(head), doc.text)):
                for answer_text in answers:
                    for a, b in occurrences(seg, answer_text):
                        writer.mark(ANSWER, seg_start + a, seg_start + b)
    writer.add(f"\n\nQuestion: {question}\nAnswer:")
    for doc, a, b in needles:
        writer.mark(NEEDLE, text_starts[doc] + a, text_starts[doc] + b)
    for label, doc, a, b in extra:
        writer.mark(label, text_starts[doc] + a, text_starts[doc] + b)
    if answers and not any(s.label == ANSWER for s in writer.spans):
        raise SpanError(
            f"no answer of {list(answers)} occurs in the gold document(s) {[g + 1 for g in gold]} "
            f"for question {question!r}"
        )
    spans = sorted(set(writer.spans), key=lambda s: (s.start, s.end, s.label))
    return Sample(writer.text, answer, tuple(spans), task=task, meta=meta, lead_in=lead_in)
