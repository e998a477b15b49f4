"""When does a sample count: ROUGE-1 recall of the gold answer in the model's output.

Wu et al. keep a sample only when the ROUGE-1 recall of the needle in the generated text is
above 50% (``rouge_score`` with stemming). Here words are lower-cased runs of letters and digits,
without stemming, and recall is the clipped count of shared words over the answer's word count.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

__all__ = ["RougeRecall", "rouge1_recall"]

_WORD = re.compile(r"[a-z0-9]+")


def rouge1_recall(reference: str, hypothesis: str) -> float:
    """Fraction of ``reference``'s words (with multiplicity) that also occur in ``hypothesis``.

    >>> rouge1_recall("The magic number is 4712", "the number is 4712.")
    0.8
    >>> rouge1_recall("", "anything")
    0.0
    """
    ref = Counter(_WORD.findall(reference.lower()))
    if not ref:
        return 0.0
    hyp = Counter(_WORD.findall(hypothesis.lower()))
    return sum(min(n, hyp[w]) for w, n in ref.items()) / sum(ref.values())


@dataclass(frozen=True)
class RougeRecall:
    """The default success rule: ``rouge1_recall(sample.answer, output) > min_recall``.

    >>> from headscope.tasks import Sample
    >>> RougeRecall(0.5)(Sample(prompt="p", answer=" Paris, France"), "It is Paris.")
    False
    """

    min_recall: float = 0.5

    def __call__(self, sample: Any, output: str) -> bool:
        return rouge1_recall(sample.answer, output) > self.min_recall

    def __str__(self) -> str:
        return f"rouge1_recall > {self.min_recall}"
