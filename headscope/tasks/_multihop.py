"""Synthetic multi-hop QA: two linked facts in separate documents among distractors.

The first fact links a subject to a bridge entity (``a -> b``), the second gives the bridge
entity's attribute (``b -> value``); the question names only ``a``, so it needs both facts,
and the answer is in the second one.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

from headscope.errors import TaskError
from headscope.tasks._documents import CorpusItem, HaystackKind, NeedleKind, WriteDocument, check_kinds, document_stream
from headscope.tasks._facts import bridge_fact
from headscope.tasks._mdqa import check_docs, with_fact
from headscope.tasks._render import documents_sample
from headscope.tasks._sample import Sample
from headscope.tasks._text import rng_for

__all__ = ["multihop_qa"]


def multihop_qa(
    *,
    n_docs: int = 10,
    positions: tuple[int, int] | None = None,
    needle: NeedleKind = "natural",
    haystack: HaystackKind = "diverse",
    n_samples: int = 1,
    seed: int = 0,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
) -> list[Sample]:
    """``n_samples`` two-hop questions over ``n_docs`` documents.

    ``positions`` are the 0-based positions of the first-hop and second-hop documents (drawn
    per sample when ``None``). Spans: ``"doc"``, ``"gold_doc"`` (both hop documents),
    ``"answer"`` (answer occurrences in them), ``"needle"`` (the answer in the second fact) and
    ``"bridge"`` (the bridge entity in both facts).

    >>> s = multihop_qa(n_docs=4, positions=(3, 0), needle="templated", haystack="symbolic")[0]
    >>> s.meta["positions"], s.text("needle") == [s.answer.strip()], len(s.text("bridge"))
    ([3, 0], True, 2)
    """
    check_kinds(needle, haystack)
    check_docs(n_docs, list(positions or ()), 2)
    if positions is not None and (len(positions) != 2 or positions[0] == positions[1]):
        raise TaskError(f"positions must be two different document positions; got {positions}")
    samples = []
    for i in range(n_samples):
        rng = rng_for(seed, "multihop", i)
        hop1, hop2, question, lead_in = bridge_fact(rng, needle)
        stream = document_stream(
            rng_for(seed, "multihop-docs", i),
            haystack,
            corpus=corpus,
            write_document=write_document,
            avoid=[hop2.value, hop1.value],
        )
        docs = list(islice(stream, n_docs))
        first, start1 = with_fact(rng, docs[0], hop1)
        second, start2 = with_fact(rng, docs[1], hop2)
        p1, p2 = positions if positions is not None else rng.sample(range(n_docs), 2)
        others = docs[2:]
        rng.shuffle(others)
        ordered = list(others)
        for pos, doc in sorted([(p1, first), (p2, second)]):
            ordered.insert(pos, doc)
        bridge = hop2.sentence.index(hop2.subject)
        meta = {
            "answers": [hop2.value],
            "question": question,
            "positions": [p1, p2],
            "facts": [hop1.sentence, hop2.sentence],
            "bridge": hop1.value,
            "needle_kind": needle,
            "haystack_kind": haystack,
            "seed": seed,
            "index": i,
        }
        samples.append(
            documents_sample(
                ordered,
                question,
                " " + hop2.value,
                gold=sorted([p1, p2]),
                answers=[hop2.value],
                needles=[(p2, start2 + hop2.value_start, start2 + hop2.value_end)],
                extra=[
                    ("bridge", p1, start1 + hop1.value_start, start1 + hop1.value_end),
                    ("bridge", p2, start2 + bridge, start2 + bridge + len(hop2.subject)),
                ],
                task="multihop",
                meta=meta,
                lead_in=lead_in,
            )
        )
    return samples
