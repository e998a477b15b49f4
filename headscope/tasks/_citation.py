"""Synthetic citation task (after SummHay): insights spread over documents, cited in a summary.

Several facts about one subject are inserted into one or more documents each. The question
asks for a bullet summary of what the documents say about the subject, citing the documents;
the gold answer lists each fact once, with the ids of every document that states it:
``- fact [2][5]``. Score predictions with :func:`citation_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from headscope.errors import TaskError
from headscope.tasks._documents import CorpusItem, HaystackKind, NeedleKind, WriteDocument, check_kinds, document_stream
from headscope.tasks._facts import make_facts
from headscope.tasks._mdqa import with_fact
from headscope.tasks._render import documents_sample
from headscope.tasks._sample import ANSWER, Sample
from headscope.tasks._text import rng_for

__all__ = ["CITATION_INSTRUCTION", "citation"]

CITATION_INSTRUCTION = (
    "Answer the question using only the documents below. Write one bullet point per fact, and after each fact "
    "cite every document that states it, like [1][3]."
)


def citation(
    *,
    n_docs: int = 10,
    n_insights: int = 3,
    max_cites: int = 2,
    needle: NeedleKind = "natural",
    haystack: HaystackKind = "diverse",
    n_samples: int = 1,
    seed: int = 0,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
) -> list[Sample]:
    """``n_samples`` citation samples: ``n_insights`` facts, each in 1 to ``max_cites`` documents.

    Spans: ``"doc"``, ``"gold_doc"`` (documents holding an insight), ``"needle"`` and
    ``"answer"`` (every inserted insight sentence). ``meta["insights"]`` lists each insight with
    its 1-based document ids. The samples have no ``lead_in``: the answer is the whole summary,
    which starts the assistant's turn.

    >>> s = citation(n_docs=6, n_insights=2, needle="templated", haystack="templated", seed=3)[0]
    >>> s.answer.strip().startswith("- "), len(s.meta["insights"])
    (True, 2)
    """
    check_kinds(needle, haystack)
    problems = []
    if n_insights < 1:
        problems.append(f"n_insights must be at least 1; got {n_insights}")
    if not 1 <= max_cites <= n_docs:
        problems.append(f"max_cites must lie in [1, n_docs={n_docs}]; got {max_cites}")
    if problems:
        raise TaskError("; ".join(problems))
    samples = []
    for i in range(n_samples):
        rng = rng_for(seed, "citation", i)
        subject = make_facts(rng, needle, 1, same_relation=True)[0].subject
        facts = make_facts(rng, needle, n_insights, same_relation=False, subject=subject)
        stream = document_stream(
            rng_for(seed, "citation-docs", i),
            haystack,
            corpus=corpus,
            write_document=write_document,
            avoid=[subject, *(f.value for f in facts)],
        )
        docs = list(islice(stream, n_docs))
        homes = [sorted(rng.sample(range(n_docs), rng.randint(1, max_cites))) for _ in facts]
        for j, fact in enumerate(facts):
            for d in homes[j]:
                docs[d] = with_fact(rng, docs[d], fact)[0]
        needles = []
        for j, fact in enumerate(facts):
            for d in homes[j]:
                start = docs[d].text.index(fact.sentence)
                needles.append((d, start, start + len(fact.sentence)))
        order = sorted(range(n_insights), key=lambda j: homes[j])
        bullets = [f"- {facts[j].sentence} " + "".join(f"[{d + 1}]" for d in homes[j]) for j in order]
        question = f"What do the documents say about {subject}?"
        meta = {
            "answers": ["\n".join(bullets)],
            "question": question,
            "subject": subject,
            "insights": [{"text": facts[j].sentence, "docs": [d + 1 for d in homes[j]]} for j in order],
            "needle_kind": needle,
            "haystack_kind": haystack,
            "seed": seed,
            "index": i,
        }
        samples.append(
            documents_sample(
                docs,
                question,
                " " + "\n".join(bullets),
                gold=sorted({d for h in homes for d in h}),
                answers=[],
                needles=needles,
                extra=[(ANSWER, d, a, b) for d, a, b in needles],
                instruction=CITATION_INSTRUCTION,
                task="citation",
                meta=meta,
            )
        )
    return samples
