"""Key-value retrieval (after *Lost in the Middle*): find one key's value in a JSON object.

``needle`` sets how the gold pair reads: ``"symbolic"`` (UUID keys and values, as Liu et al.),
``"templated"`` (``"hometown of Elena Vasquez": "Kelmora"``) or ``"natural"`` (the key is a
natural question). ``haystack`` sets the distractor pairs: UUIDs, templated relations, or titles
and sentences of varied documents (``"diverse"``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from headscope.errors import TaskError
from headscope.tasks._documents import CorpusItem, HaystackKind, NeedleKind, WriteDocument, check_kinds, document_stream
from headscope.tasks._facts import make_facts
from headscope.tasks._mdqa import check_docs
from headscope.tasks._sample import ANSWER, DOC, GOLD_DOC, NEEDLE, Sample
from headscope.tasks._text import PromptWriter, rng_for

__all__ = ["kv_retrieval"]

KV_INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below."
#: The prompt's last line, repeated as the answer's lead-in (SmolLM2 reproduces the value after it
#: more often than after the ``"key":`` pair or ``The value of "key" is``).
KV_CUE = "Corresponding value:"


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _pair(rng: random.Random, kind: str) -> tuple[str, str]:
    if kind == "symbolic":
        return _uuid(rng), _uuid(rng)
    fact = make_facts(rng, kind, 1, same_relation=True)[0]
    if kind == "natural":
        return fact.question, fact.value
    relation = fact.question.removeprefix("What is the ").removesuffix("?")
    return relation, fact.value


def _distractors(rng: random.Random, n: int, haystack: str, docs: object, banned: set[str]) -> list[tuple[str, str]]:
    pairs, keys = [], set(banned)
    for _ in range(50 * n + 100):
        if len(pairs) == n:
            return pairs
        if haystack == "diverse":
            doc = next(docs)  # type: ignore[call-overload]
            sentences = [s.strip() + "." for s in doc.text.split(". ") if s.strip()]
            key, value = doc.title, rng.choice(sentences).rstrip(".") + "."
        else:
            key, value = _pair(rng, "symbolic" if haystack == "symbolic" else "templated")
        if key not in keys:
            keys.add(key)
            pairs.append((key, value))
    raise TaskError(f"could only make {len(pairs)} distinct distractor keys of the {n} asked; use fewer pairs")


def kv_retrieval(
    *,
    n_pairs: int = 20,
    gold_position: int | None = None,
    needle: NeedleKind = "symbolic",
    haystack: HaystackKind = "symbolic",
    n_samples: int = 1,
    seed: int = 0,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
) -> list[Sample]:
    """``n_samples`` key-value retrieval samples over ``n_pairs`` JSON pairs.

    Spans: ``"doc"`` (each ``"key": "value"`` pair), ``"gold_doc"`` (the gold pair), ``"needle"``
    and ``"answer"`` (the gold value inside its pair). ``lead_in`` repeats the prompt's cue,
    ``"Corresponding value:"``.

    >>> s = kv_retrieval(n_pairs=4, gold_position=1, seed=0)[0]
    >>> s.text("needle") == [s.answer.strip()], s.prompt.splitlines()[-1]
    (True, 'Corresponding value:')
    """
    check_kinds(needle, haystack)
    check_docs(n_pairs, [gold_position], 1)
    samples = []
    for i in range(n_samples):
        rng = rng_for(seed, "kv", i)
        key, value = _pair(rng, needle)
        docs = document_stream(rng_for(seed, "kv-docs", i), haystack, corpus=corpus, write_document=write_document)
        pairs = _distractors(rng, n_pairs - 1, haystack, docs, {key})
        position = rng.randrange(n_pairs) if gold_position is None else gold_position
        pairs.insert(position, (key, value))
        writer = PromptWriter()
        writer.add(KV_INSTRUCTION + "\n\nJSON data:\n{")
        for j, (k, v) in enumerate(pairs):
            if j:
                writer.add(",\n ")
            key_json, value_json = json.dumps(k, ensure_ascii=False), json.dumps(v, ensure_ascii=False)
            start = writer.add(f"{key_json}: {value_json}", *((DOC, GOLD_DOC) if j == position else (DOC,)))
            if j == position:
                value_start = start + len(key_json) + 3
                for label in (NEEDLE, ANSWER):
                    writer.mark(label, value_start, value_start + len(value_json) - 2)
        writer.add(f"}}\n\nKey: {json.dumps(key, ensure_ascii=False)}\n{KV_CUE}")
        meta = {
            "answers": [value],
            "key": key,
            "gold_position": position,
            "needle_kind": needle,
            "haystack_kind": haystack,
            "seed": seed,
            "index": i,
        }
        samples.append(Sample(writer.text, " " + value, tuple(writer.spans), task="kv", meta=meta, lead_in=KV_CUE))
    return samples
