"""Synthetic multi-document QA (after *Lost in the Middle*): one gold document among distractors.

The gold document is a haystack document with a needle fact inserted at a random sentence
boundary; ``gold_position`` (0-based) places it. ``n_hard`` distractors carry a fact with the
same relation about another subject, so the model must match the subject, not just the relation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import islice

from headscope.errors import TaskError
from headscope.tasks._documents import (
    CorpusItem,
    Document,
    HaystackKind,
    NeedleKind,
    WriteDocument,
    check_kinds,
    document_stream,
)
from headscope.tasks._facts import Fact, make_facts
from headscope.tasks._render import documents_sample
from headscope.tasks._sample import Sample
from headscope.tasks._text import insert_sentence, rng_for, sentence_boundaries

__all__ = ["mdqa"]


def with_fact(rng: random.Random, doc: Document, fact: Fact) -> tuple[Document, int]:
    """``doc`` with ``fact`` inserted at a random sentence boundary, and where the sentence starts."""
    text, start = insert_sentence(doc.text, rng.choice(sentence_boundaries(doc.text)), fact.sentence)
    return Document(doc.title, text), start


def check_docs(n_docs: int, positions: Sequence[int | None], need: int) -> None:
    if n_docs < need:
        raise TaskError(f"n_docs must be at least {need}; got {n_docs}")
    bad = [p for p in positions if p is not None and not 0 <= p < n_docs]
    if bad:
        raise TaskError(f"document positions are 0-based and must lie in [0, {n_docs - 1}]; got {bad}")


def mdqa(
    *,
    n_docs: int = 10,
    gold_position: int | None = None,
    needle: NeedleKind = "natural",
    haystack: HaystackKind = "diverse",
    n_hard: int = 0,
    n_samples: int = 1,
    seed: int = 0,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
) -> list[Sample]:
    """``n_samples`` multi-document QA samples with ``n_docs`` documents each.

    ``gold_position=None`` draws the position per sample. Spans: ``"doc"`` (each document),
    ``"gold_doc"``, ``"answer"`` (answer occurrences in the gold document), ``"needle"`` (the
    answer inside the inserted fact).

    >>> s = mdqa(n_docs=5, gold_position=2, needle="templated", haystack="templated", seed=1)[0]
    >>> s.meta["gold_position"], s.text("needle") == [s.answer.strip()], len(s.text("doc"))
    (2, True, 5)
    """
    check_kinds(needle, haystack)
    check_docs(n_docs, [gold_position], 1)
    if not 0 <= n_hard < n_docs:
        raise TaskError(f"n_hard must lie in [0, n_docs - 1] = [0, {n_docs - 1}]; got {n_hard}")
    samples = []
    for i in range(n_samples):
        rng = rng_for(seed, "mdqa", i)
        facts = make_facts(rng, needle, 1 + n_hard, same_relation=True)
        stream = document_stream(
            rng_for(seed, "mdqa-docs", i),
            haystack,
            corpus=corpus,
            write_document=write_document,
            avoid=[f.value for f in facts],
        )
        docs = list(islice(stream, n_docs))
        placed = [with_fact(rng, doc, fact) for doc, fact in zip(docs, facts, strict=False)]
        gold_doc, start = placed[0]
        others = [d for d, _ in placed[1:]] + docs[len(facts) :]
        rng.shuffle(others)
        position = rng.randrange(n_docs) if gold_position is None else gold_position
        ordered = [*others[:position], gold_doc, *others[position:]]
        fact = facts[0]
        meta = {
            "answers": [fact.value],
            "question": fact.question,
            "gold_position": position,
            "needle_sentence": fact.sentence,
            "needle_kind": needle,
            "haystack_kind": haystack,
            "seed": seed,
            "index": i,
        }
        samples.append(
            documents_sample(
                ordered,
                fact.question,
                " " + fact.value,
                gold=[position],
                answers=[fact.value],
                needles=[(position, start + fact.value_start, start + fact.value_end)],
                task="mdqa",
                meta=meta,
                lead_in=fact.lead_in,
            )
        )
    return samples
