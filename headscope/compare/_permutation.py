"""Permutation p-values for a correlation: exact for a few points, Monte Carlo beyond.

Under the null hypothesis of no association every pairing of the ``y`` values with the ``x``
values is equally likely, so the p-value is the share of pairings whose correlation is at least
as far from 0 as the observed one (two-sided). Up to ``exact_up_to`` points (8 by default,
40,320 pairings) every pairing is enumerated and the p-value is exact; beyond, ``n_permutations``
seeded random pairings estimate it as ``(1 + hits) / (1 + n_permutations)``, which never returns 0.

Why not scipy's asymptotic p-value: for Spearman on four points in the same order it returns 0.0,
while only 2 of the 24 pairings reach ``|rho| = 1``, so the exact two-sided p-value is 1/12 and
no four points can ever give p < 0.05. ``p_min`` states that floor.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PermutationTest", "permutation_test", "row_correlation", "sign_flip_test"]

#: Two correlations closer than this count as equal (rounding of the same value computed twice).
_TIE = 1e-10


@dataclass(frozen=True)
class PermutationTest:
    """A two-sided permutation p-value: ``p_value``, ``method`` (``"exact-permutation"`` or
    ``"monte-carlo-permutation"``), ``n_permutations`` pairings counted, and ``p_min``, the smallest
    p-value this test can give on these values (for the exact test: the share of pairings that reach
    the largest ``|r|``; for Monte Carlo: ``1 / (1 + n_permutations)``)."""

    p_value: float
    method: str
    n_permutations: int
    p_min: float


def row_correlation(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Correlation of each row of ``x`` with the same row of ``y`` (``[..., n]`` arrays), NaN where a row is constant.

    ``method="spearman"`` ranks each row first (average ranks for ties), as ``scipy.stats.spearmanr`` does.

    >>> row_correlation(np.array([[1.0, 2, 3], [1, 2, 3]]), np.array([[2.0, 4, 7], [3, 2, 1]]), "spearman")
    array([ 1., -1.])
    """
    from scipy import stats

    if method == "spearman":
        x, y = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    denom = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (x * y).sum(-1) / np.where(denom > 0, denom, 1.0), np.nan)


def permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    *,
    exact_up_to: int = 8,
    n_permutations: int = 9999,
    seed: int = 0,
) -> PermutationTest:
    """Two-sided permutation p-value of the correlation of ``x`` and ``y`` (1-d, equal length, not constant).

    Exact (every one of the ``n!`` pairings) when ``len(x) <= exact_up_to``; otherwise
    ``n_permutations`` random pairings drawn with ``seed``.

    >>> t = permutation_test(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4]), "spearman")
    >>> t.p_value == 1 / 12, t.method, t.n_permutations, t.p_min == 1 / 12
    (True, 'exact-permutation', 24, True)
    """
    n = len(x)
    observed = abs(float(row_correlation(x, y, method)))
    if n <= exact_up_to:
        orders = np.array(list(itertools.permutations(range(n))))
        null = np.abs(row_correlation(np.broadcast_to(x, orders.shape), y[orders], method))
        largest = float(np.nanmax(null))
        return PermutationTest(
            p_value=float(np.mean(null >= observed - _TIE)),
            method="exact-permutation",
            n_permutations=math.factorial(n),
            p_min=float(np.mean(null >= largest - _TIE)),
        )
    shuffled = np.random.default_rng(seed).permuted(np.broadcast_to(y, (n_permutations, n)), axis=1)
    null = np.abs(row_correlation(np.broadcast_to(x, shuffled.shape), shuffled, method))
    hits = int(np.sum(null >= observed - _TIE))
    return PermutationTest(
        p_value=(1 + hits) / (1 + n_permutations),
        method="monte-carlo-permutation",
        n_permutations=n_permutations,
        p_min=1 / (1 + n_permutations),
    )


def sign_flip_test(
    differences: np.ndarray, *, exact_up_to: int = 16, n_draws: int = 20_000, seed: int = 0
) -> tuple[float, float]:
    """Two-sided paired sign-flip p-value of the sum of ``differences``, and the smallest one possible.

    Under the null each non-zero paired difference is as likely positive as negative. When they
    all have one size (0/1 accuracy pairs: McNemar's exact sign test) the p-value is the exact
    binomial tail at any n; otherwise every sign pattern is enumerated up to ``exact_up_to``
    non-zero differences, and beyond that ``n_draws`` seeded patterns estimate it as
    ``(1 + hits) / (1 + n_draws)``.

    >>> sign_flip_test(np.array([1.0, 1.0, 1.0, 0.0]))   # 3 non-zero: 2 of 8 flips reach |sum| = 3
    (0.25, 0.25)
    >>> sign_flip_test(np.array([1.0] * 6))[0], sign_flip_test(np.array([1.0, -1.0] * 3))[0]   # a sign test
    (0.03125, 1.0)
    """
    d = np.asarray(differences, dtype=float)
    d = d[d != 0]
    if not len(d):
        return 1.0, 1.0
    n = len(d)
    if np.all(np.abs(d) == abs(d[0])):
        low = int(min((d > 0).sum(), (d < 0).sum()))
        tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
        return min(1.0, 2 * tail), min(1.0, 2 / 2**n)
    observed = abs(d.sum()) - 1e-9 * np.abs(d).sum()
    if n <= exact_up_to:
        sums = np.abs(np.array(list(itertools.product((1.0, -1.0), repeat=n))) @ d)
        return float(np.mean(sums >= observed)), float(np.mean(sums >= sums.max() - 1e-9 * np.abs(d).sum()))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_draws, n))
    hits = int((np.abs(signs @ d) >= observed).sum())
    return (1 + hits) / (1 + n_draws), 1 / (1 + n_draws)
