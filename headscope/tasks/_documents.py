"""Haystacks along the diversity axis: varied natural documents, templated filler, symbolic filler.

``haystack="diverse"`` draws natural documents from the corpus shipped in ``headscope/data``, from
texts the caller passes (``corpus=[...]``), or from a caller's ``write_document(rng, topic)``
(an LLM, say). ``"templated"`` fills documents with sentences from a handful of templates;
``"symbolic"`` with random letter-digit strings. Every source is an endless, seeded stream.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources

from headscope._types import Choice
from headscope.errors import TaskError

__all__ = ["Document", "HaystackKind", "NeedleKind", "document_stream", "shipped_corpus"]

HaystackKind = Choice["diverse", "templated", "symbolic"]
NeedleKind = Choice["natural", "templated", "symbolic"]
HAYSTACKS = ("diverse", "templated", "symbolic")
NEEDLES = ("natural", "templated", "symbolic")
CorpusItem = str | tuple[str, str] | dict
WriteDocument = Callable[[random.Random, str], str]

_FILLER_NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
_FILLER_NOUNS = ["box", "chair", "lamp", "table", "cup", "book", "basket", "ladder", "bucket", "kettle"]
_FILLER_PLACES = ["station", "market", "school", "office", "harbor", "square", "church", "mill", "depot", "hall"]
_FILLER_ADJS = ["quiet", "busy", "small", "large", "old", "new", "clean", "dusty", "narrow", "wide"]
_FILLER_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_FILLER_TEMPLATES = [
    "The {adj} {noun} is next to the {place}.",
    "{name} walked to the {place} with a {noun}.",
    "There are {num} {noun}s in the {place}.",
    "The {place} opens at {num} o'clock on {day}.",
    "{name} bought a {adj} {noun} on {day}.",
    "It was {adj} near the {place} today.",
    "{name} and {name2} cleaned the {place} together.",
    "Every {day} the {noun} is moved to the {place}.",
]
_SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(frozen=True)
class Document:
    """A titled document of a haystack."""

    title: str
    text: str


@cache
def _shipped() -> tuple[Document, ...]:
    raw = resources.files("headscope").joinpath("data/documents.json").read_text(encoding="utf-8")
    return tuple(Document(d["title"], d["text"]) for d in json.loads(raw))


def shipped_corpus() -> list[Document]:
    """The varied natural documents shipped with headscope (short encyclopedic texts on many topics).

    >>> docs = shipped_corpus()
    >>> len(docs) > 30, docs[0].title
    (True, 'Beekeeping')
    """
    return list(_shipped())


def check_kinds(needle: str, haystack: str) -> None:
    problems = []
    if needle not in NEEDLES:
        problems.append(f"needle must be one of {NEEDLES}; got {needle!r}")
    if haystack not in HAYSTACKS:
        problems.append(f"haystack must be one of {HAYSTACKS}; got {haystack!r}")
    if problems:
        raise TaskError("; ".join(problems))


def _as_document(item: CorpusItem, i: int) -> Document:
    if isinstance(item, Document):
        return item
    if isinstance(item, str):
        words = item.split()
        return Document(" ".join(words[:4]).rstrip(".,;:!?") or f"Document {i}", item)
    if isinstance(item, dict) and "text" in item:
        return Document(str(item.get("title", f"Document {i}")), str(item["text"]))
    if isinstance(item, tuple) and len(item) == 2:
        return Document(str(item[0]), str(item[1]))
    raise TaskError(f"corpus item {i} must be a text, a (title, text) pair or a {{'title', 'text'}} dict; got {item!r}")


def resolve_corpus(corpus: Sequence[CorpusItem] | None) -> list[Document]:
    if corpus is None:
        return shipped_corpus()
    docs = [_as_document(item, i) for i, item in enumerate(corpus)]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise TaskError("corpus is empty: pass at least one non-empty document, or corpus=None for the shipped one")
    return docs


def _templated(rng: random.Random, n: int) -> Document:
    sentences = []
    for _ in range(rng.randint(5, 9)):
        name, name2 = rng.sample(_FILLER_NAMES, 2)
        sentences.append(
            rng.choice(_FILLER_TEMPLATES).format(
                adj=rng.choice(_FILLER_ADJS),
                noun=rng.choice(_FILLER_NOUNS),
                place=rng.choice(_FILLER_PLACES),
                day=rng.choice(_FILLER_DAYS),
                name=name,
                name2=name2,
                num=rng.randint(2, 12),
            )
        )
    return Document(f"Note {n} on the {rng.choice(_FILLER_PLACES)}", " ".join(sentences))


def symbol(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_SYMBOLS) for _ in range(n))


def _symbolic(rng: random.Random) -> Document:
    sentences = [" ".join(symbol(rng, rng.randint(3, 6)) for _ in range(rng.randint(4, 8))) + "." for _ in range(6)]
    return Document(f"Block {symbol(rng, 4)}", " ".join(sentences))


def document_stream(
    rng: random.Random,
    haystack: HaystackKind,
    *,
    corpus: Sequence[CorpusItem] | None = None,
    write_document: WriteDocument | None = None,
    avoid: Sequence[str] = (),
) -> Iterator[Document]:
    """An endless seeded stream of haystack documents, skipping any that mention a string in ``avoid``.

    >>> import random
    >>> docs = document_stream(random.Random(0), "templated")
    >>> next(docs).text.endswith(".")
    True
    """
    if haystack != "diverse" and (corpus is not None or write_document is not None):
        raise TaskError(f"corpus= and write_document= apply to haystack='diverse' only; got haystack={haystack!r}")
    if corpus is not None and write_document is not None:
        raise TaskError("pass corpus= or write_document=, not both")
    banned = [a.lower() for a in avoid if a.strip()]
    return _filtered(_raw_stream(rng, haystack, corpus, write_document), banned)


def _filtered(stream: Iterator[Document], banned: list[str]) -> Iterator[Document]:
    skipped = 0
    for doc in stream:
        text = (doc.title + " " + doc.text).lower()
        if any(b in text for b in banned):
            skipped += 1
            if skipped > 1000:
                raise TaskError(f"every haystack document mentions one of {banned}; use a larger or different corpus")
            continue
        skipped = 0
        yield doc


def _raw_stream(
    rng: random.Random, haystack: str, corpus: Sequence[CorpusItem] | None, write_document: WriteDocument | None
) -> Iterator[Document]:
    n = 0
    while True:
        if haystack == "templated":
            yield _templated(rng, n)
        elif haystack == "symbolic":
            yield _symbolic(rng)
        elif write_document is not None:
            topics = [d.title for d in shipped_corpus()]
            rng.shuffle(topics)
            for topic in topics:
                text = write_document(rng, topic)
                if not isinstance(text, str) or not text.strip():
                    raise TaskError(f"write_document(rng, {topic!r}) must return non-empty text; got {text!r}")
                yield Document(topic, text.strip())
        else:
            docs = resolve_corpus(corpus)
            rng.shuffle(docs)
            yield from docs
        n += 1
