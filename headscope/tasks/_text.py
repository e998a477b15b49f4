"""Small text helpers shared by the builders: seeded RNGs, prompt assembly with spans, sentence ends."""

from __future__ import annotations

import random
import re

from headscope.tasks._sample import Span

_SENTENCE_END = re.compile(r"[.!?](?=\s)|\n")


def rng_for(seed: int, *parts: object) -> random.Random:
    """A ``random.Random`` fixed by ``seed`` and ``parts`` (string seeding is stable across runs and platforms)."""
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def sentence_start_before(text: str, pos: int) -> int:
    """The largest sentence boundary ``<= pos``: just after a ``.``, ``!``, ``?`` or newline (0 if none)."""
    best = 0
    for m in _SENTENCE_END.finditer(text, 0, pos):
        best = m.end()
    return best


def sentence_boundaries(text: str) -> list[int]:
    """Every position where a new sentence may be inserted, including 0 and ``len(text)``."""
    return sorted({0, len(text), *(m.end() for m in _SENTENCE_END.finditer(text))})


def insert_sentence(text: str, pos: int, sentence: str) -> tuple[str, int]:
    """``text`` with ``sentence`` inserted at boundary ``pos`` (spaces added as needed) and where it starts."""
    left, right = text[:pos], text[pos:]
    lead = " " if left and not left[-1].isspace() else ""
    trail = " " if right and not right[0].isspace() else ""
    return left + lead + sentence + trail + right, len(left) + len(lead)


def occurrences(text: str, needle: str) -> list[tuple[int, int]]:
    """Non-overlapping case-insensitive whole-word occurrences of ``needle`` in ``text``."""
    if not needle.strip():
        return []
    pattern = re.compile(r"(?<!\w)" + re.escape(needle.strip()) + r"(?!\w)", re.IGNORECASE)
    return [(m.start(), m.end()) for m in pattern.finditer(text)]


class PromptWriter:
    """Builds a prompt piece by piece and records labelled character spans as it goes."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._length = 0
        self.spans: list[Span] = []

    def add(self, text: str, *labels: str) -> int:
        """Append ``text``, label its whole range with each of ``labels``, and return where it starts."""
        start = self._length
        self._parts.append(text)
        self._length += len(text)
        for label in labels:
            self.mark(label, start, self._length)
        return start

    def mark(self, label: str, start: int, end: int) -> None:
        self.spans.append(Span(label, start, end))

    @property
    def text(self) -> str:
        return "".join(self._parts)
