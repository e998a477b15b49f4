"""Scores for generated answers: SQuAD exact match and F1, ROUGE-1 recall, citation precision and recall.

Answers are compared after SQuAD normalization (lower case, no punctuation, no articles,
single spaces), taking the best score over the gold answers. :func:`rouge1_recall` is Wu et
al.'s filter for whether a needle was retrieved (they count a sample when it exceeds 0.5; they
also stem words, which this does not). :func:`names_value` asks whether an output names a value
as whole words (``"Ann"`` is not named by ``"Anna"``), the half of headscope's success rule
(:class:`~headscope.retrieval.RougeRecall`) that ROUGE recall cannot give.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from headscope.errors import TaskError

__all__ = [
    "CitationScores",
    "citation_scores",
    "exact_match",
    "names_value",
    "normalize_answer",
    "parse_citations",
    "rouge1_recall",
    "subspan_match",
    "token_f1",
]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NO_PUNCT = str.maketrans("", "", string.punctuation)
_CITES = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_WORD = re.compile(r"[^\W_]+")  # a run of letters and digits, in any script


@functools.lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """SQuAD normalization (cached: real MDQA normalizes every passage of its file for each set it builds).

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = text.lower().translate(_NO_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(answers: str | Sequence[str]) -> list[str]:
    golds = [answers] if isinstance(answers, str) else list(answers)
    if not golds:
        raise TaskError("answers is empty: pass at least one gold answer")
    return golds


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if the normalized prediction equals a normalized gold answer, else 0.0.

    >>> exact_match("the Eiffel tower.", ["Eiffel Tower", "Tour Eiffel"])
    1.0
    """
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(answers)))


def subspan_match(prediction: str, answers: str | Sequence[str], *, whole_words: bool = False) -> float:
    """1.0 if a normalized gold answer occurs in the normalized prediction, else 0.0: Liu et al.'s MDQA accuracy.

    This is Lost in the Middle's ``best_subspan_em``: both sides SQuAD-normalized
    (:func:`normalize_answer`), then a plain substring test, so ``"1990"`` counts in ``"the
    1990s"``. The seed paper scores its multi-document QA with Lost in the Middle's metric, so
    headscope follows it by default, to keep its numbers comparable with theirs (including their
    leniency: a gold answer inside a longer word counts, and a gold answer that normalizes to
    nothing, such as ``"The"``, counts everywhere). ``whole_words=True`` asks for the gold answer's
    words as whole words of the prediction instead, a stricter variant of no paper's.

    >>> subspan_match("I think it is the Eiffel Tower in Paris", "eiffel tower")
    1.0
    >>> text = "It peaked in the 1990s."
    >>> subspan_match(text, "1990"), subspan_match(text, "1990", whole_words=True)
    (1.0, 0.0)
    """
    pred = normalize_answer(prediction)
    if whole_words:
        return float(any(f" {normalize_answer(g)} " in f" {pred} " for g in _golds(answers)))
    return float(any(normalize_answer(g) in pred for g in _golds(answers)))


def names_value(output: str, value: str) -> bool:
    """Does ``output`` name ``value`` as whole words? Case and punctuation are ignored.

    Both texts are read as runs of letters and digits (case-folded; every other character
    separates words); the value's words must appear in the output consecutively, each a whole
    word there. A value with no letters or digits must appear verbatim.

    >>> names_value("Her name is Anna.", "Ann"), names_value("Her name is ANN!", "Ann")
    (False, True)
    >>> names_value("She moved to New-York.", "New York"), names_value("the code is 47123", "4712")
    (True, False)
    """
    want = _WORD.findall(value.casefold())
    if not want:
        return value.strip() in output
    have = _WORD.findall(output.casefold())
    n = len(want)
    return any(have[i : i + n] == want for i in range(len(have) - n + 1))


def _f1(pred: list[str], gold: list[str]) -> float:
    common = sum((Counter(pred) & Counter(gold)).values())
    if not pred or not gold:
        return float(pred == gold)
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """SQuAD token F1, best over the gold answers.

    >>> round(token_f1("Eiffel Tower in Paris", "the Eiffel Tower"), 3)
    0.667
    """
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(g).split()) for g in _golds(answers))


def _rouge_tokens(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge1_recall(prediction: str, references: str | Sequence[str]) -> float:
    """Fraction of the reference's words (with multiplicity) found in the prediction, best over references.

    >>> rouge1_recall("The password is moonbeam, I believe.", "moonbeam")
    1.0
    """
    pred = Counter(_rouge_tokens(prediction))
    best = 0.0
    for ref in _golds(references):
        words = Counter(_rouge_tokens(ref))
        if words:
            best = max(best, sum((pred & words).values()) / sum(words.values()))
    return best


def parse_citations(text: str) -> list[tuple[str, tuple[int, ...]]]:
    """Bullets of ``text`` as ``(statement, cited document ids)``; every non-empty line if none is a bullet.

    >>> parse_citations("- Bees dance [2][5]\\n- Wasps sting [1, 3]")
    [('Bees dance', (2, 5)), ('Wasps sting', (1, 3))]
    """
    lines = [line for line in text.splitlines() if line.strip()]
    bullets = [line for line in lines if _BULLET.match(line)] or lines
    parsed = []
    for line in bullets:
        ids = tuple(int(n) for group in _CITES.findall(line) for n in group.split(","))
        statement = _CITES.sub("", _BULLET.sub("", line)).strip()
        parsed.append((statement, tuple(dict.fromkeys(ids))))
    return parsed


@dataclass(frozen=True)
class CitationScores:
    """Citation precision, recall and F1 over matched bullets, and the share of gold bullets covered."""

    precision: float
    recall: float
    f1: float
    coverage: float


def citation_scores(prediction: str, reference: str, *, match_threshold: float = 0.5) -> CitationScores:
    """Compare the cited ids of a predicted bullet summary with a gold one.

    Each gold bullet is matched to the unused predicted bullet with the highest token F1 (at
    least ``match_threshold``). Precision is the share of all predicted citations that are correct
    for their matched gold bullet; recall the share of all gold citations recovered.

    >>> citation_scores("- Bees dance [2]\\n- Ants march [4]", "- Bees dance [2][5]")
    CitationScores(precision=0.5, recall=0.5, f1=0.5, coverage=1.0)
    """
    pred, gold = parse_citations(prediction), parse_citations(reference)
    used: set[int] = set()
    hits = covered = 0
    for statement, ids in gold:
        scores = [(token_f1(p, statement), j) for j, (p, _) in enumerate(pred) if j not in used]
        best = max(scores, default=(0.0, -1))
        if best[0] >= match_threshold:
            used.add(best[1])
            covered += 1
            hits += len(set(ids) & set(pred[best[1]][1]))
    n_pred = sum(len(ids) for _, ids in pred)
    n_gold = sum(len(ids) for _, ids in gold)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return CitationScores(precision, recall, f1, covered / len(gold) if gold else 0.0)
