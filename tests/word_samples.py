"""Needle samples made of a few repeated words, for tiny random models.

Tokens of the needle recur in the answer, so random heads score copy hits by chance on every
route, which makes hit counts comparable between routes and dtypes.
"""

from __future__ import annotations

import random

from headscope.tasks import Sample, Span

WORDS = "red blue green gold river stone".split()


def word_sample(seed: int, n_words: int = 60) -> Sample:
    """Words from a small set; the needle is a middle stretch, the answer repeats its first 8 words."""
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    start, stop = n_words // 3, 2 * n_words // 3
    before = " ".join(words[:start]) + " "
    needle = " ".join(words[start:stop])
    prompt = f"{before}{needle} {' '.join(words[stop:])}"
    return Sample(
        prompt,
        " " + " ".join(words[start : start + 8]),
        (Span("needle", len(before), len(before) + len(needle)),),
        meta={"value": words[start]},
    )


def always(sample: Sample, output: str) -> bool:
    """A success rule that counts every sample."""
    return True
