"""Correlations on a few points: exact permutation p-values, the bootstrap over items, and the verdicts built on them.

Each p-value is checked against an independent computation: a brute-force loop over every
pairing with ``scipy.stats.spearmanr`` / ``pearsonr``, ``scipy.stats.permutation_test``, and the
known value for four points in the same order (2 of the 24 pairings reach |rho| = 1: p = 1/12).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats

from headscope.compare import Correlation, correlate


def _brute_force_p(x, y, method: str) -> float:
    """Two-sided exact p by hand: the share of all n! pairings with |r| at least the observed |r|.

    Spearman is Pearson on average ranks, and permuting ``y`` permutes its ranks, so ranking once suffices.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
    observed = abs(np.corrcoef(x, y)[0, 1])
    pairings = [abs(np.corrcoef(x, y[list(order)])[0, 1]) for order in itertools.permutations(range(len(x)))]
    return sum(r >= observed - 1e-10 for r in pairings) / len(pairings)


def test_four_points_in_the_same_order_give_the_exact_p_of_one_twelfth():
    """scipy's asymptotic p-value said 0.0 here; no ordering of 4 points can give less than 1/12."""
    r = correlate([0.1, 0.2, 0.3, 0.4], [10.0, 20.0, 30.0, 40.0], method="spearman")
    assert r.value == 1.0 and (r.ci_low, r.ci_high) == (1.0, 1.0)
    assert r.p_value == pytest.approx(1 / 12, rel=1e-12)
    assert r.p_value == _brute_force_p(r.x, r.y, "spearman")
    assert r.p_min == pytest.approx(1 / 12, rel=1e-12) and r.n_permutations == math.factorial(4)
    assert not r.significant and "1/12" in r.p_text()
    assert r.p_asymptotic is not None and r.p_asymptotic < 1e-6  # what the p-value used to be


@pytest.mark.parametrize("method", ["spearman", "pearson"])
@pytest.mark.parametrize("n", [3, 5, 7, 8])
def test_exact_p_equals_a_brute_force_loop_over_every_pairing(method, n):
    rng = np.random.default_rng(n)
    x = rng.random(n)
    y = x + rng.normal(scale=0.5, size=n)
    if n == 7:  # ties on both axes, as exact match on few questions gives
        x, y = np.round(x, 1), np.round(y * 4) / 4
    r = correlate(x, y, method=method, n_boot=50)
    assert r.p_method == "exact-permutation" and r.n_permutations == math.factorial(n)
    assert r.p_value == pytest.approx(_brute_force_p(x, y, method), rel=1e-12)


@pytest.mark.parametrize("method", ["spearman", "pearson"])
def test_exact_p_equals_scipy_permutation_test_of_the_absolute_correlation(method):
    rng = np.random.default_rng(11)
    x, y = rng.random(6), rng.random(6)
    fn = stats.spearmanr if method == "spearman" else stats.pearsonr
    reference = stats.permutation_test(
        (y,), lambda v: abs(fn(x, v).statistic), permutation_type="pairings", n_resamples=np.inf, alternative="greater"
    ).pvalue
    assert correlate(x, y, method=method, n_boot=50).p_value == pytest.approx(reference, rel=1e-9)


def test_without_ties_spearman_p_equals_scipy_two_sided_permutation_test():
    """Spearman's null is symmetric when no value ties, so |rho| >= |observed| is scipy's two-sided rule."""
    rng = np.random.default_rng(12)
    x, y = rng.random(7), rng.random(7)
    reference = stats.permutation_test(
        (y,), lambda v: stats.spearmanr(x, v).statistic, permutation_type="pairings", n_resamples=np.inf
    ).pvalue
    assert correlate(x, y, n_boot=50).p_value == pytest.approx(reference, rel=1e-9)


def test_more_than_eight_points_get_a_seeded_monte_carlo_p_with_its_count():
    rng = np.random.default_rng(3)
    x = rng.random(14)
    y = x + rng.normal(scale=0.6, size=14)
    r = correlate(x, y, n_boot=50, n_permutations=4000, seed=5)
    assert r.p_method == "monte-carlo-permutation" and r.n_permutations == 4000
    assert r.p_min == pytest.approx(1 / 4001) and r.p_value >= r.p_min
    assert correlate(x, y, n_boot=50, n_permutations=4000, seed=5).p_value == r.p_value
    reference = stats.permutation_test(
        (y,), lambda v: stats.spearmanr(x, v).statistic, permutation_type="pairings", n_resamples=20000, random_state=1
    ).pvalue
    tolerance = 4 * math.sqrt(reference * (1 - reference) * (1 / 4000 + 1 / 20000)) + 1 / 4000
    assert abs(r.p_value - reference) < tolerance
    assert "4,000 random pairings" in r.p_text()


def test_five_points_can_reach_significance_and_four_cannot():
    five = correlate([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], n_boot=50)
    assert five.p_value == pytest.approx(2 / 120) and five.significant
    four = correlate([1, 2, 3, 4], [2, 4, 6, 8], n_boot=50)
    assert not four.significant


def test_item_bootstrap_matches_a_paired_resampling_loop_by_hand():
    rng = np.random.default_rng(2)
    items = rng.integers(0, 2, size=(5, 20)).astype(float)  # exact match of 5 variants on 20 shared questions
    recalls = [0.2, 0.4, 0.5, 0.7, 0.9]
    r = correlate(recalls, items.mean(1), y_items=items, n_boot=400, seed=9)
    gen = np.random.default_rng(9)
    gen.integers(0, 5, size=(400, 5))  # the bootstrap over variants draws first
    idx = gen.integers(0, 20, size=(400, 20))
    boot = [stats.spearmanr(recalls, items[:, i].mean(1)).statistic for i in idx]
    boot = [b for b in boot if not np.isnan(b)]
    assert (r.item_ci_low, r.item_ci_high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)
    assert r.item_resampling == "paired" and r.n_items == (20,) * 5


def test_item_bootstrap_independent_resamples_each_point_on_its_own():
    items = [[1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0, 1.0], [1.0, 1.0], [0.0, 1.0, 0.0, 0.0]]
    means = [float(np.mean(i)) for i in items]
    r = correlate([1, 2, 3, 4], means, y_items=items, paired=False, n_boot=300, seed=4)
    gen = np.random.default_rng(4)
    gen.integers(0, 4, size=(300, 4))
    cols = [np.asarray(i)[gen.integers(0, len(i), size=(300, len(i)))].mean(1) for i in items]
    boot = [stats.spearmanr([1, 2, 3, 4], row).statistic for row in np.stack(cols, 1)]
    boot = [b for b in boot if not np.isnan(b)]
    assert (r.item_ci_low, r.item_ci_high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)
    assert r.item_resampling == "independent" and r.n_items == (3, 5, 2, 4)


def test_noisy_questions_widen_the_interval_that_resampling_variants_cannot():
    """Four variants in order: the bootstrap over variants says [1, 1]; over their 24 questions it does not."""
    rng = np.random.default_rng(0)
    items = np.zeros((4, 24))
    for i, n_right in enumerate((8, 9, 10, 11)):  # each variant right on its own random 8-11 of 24 questions
        items[i, rng.permutation(24)[:n_right]] = 1.0
    recalls = [0.6, 0.7, 0.8, 0.9]  # in the same order as the scores
    r = correlate(recalls, items.mean(1), y_items=items, n_boot=1000)
    assert r.value == 1.0 and (r.ci_low, r.ci_high) == (1.0, 1.0)
    assert r.item_ci_low < 0 < r.item_ci_high


@pytest.mark.parametrize(
    ("y_items", "paired", "message"),
    [
        ([[1.0], [2.0], [3.0]], True, "averages 3 but y is 4"),
        ([[1.0], [2.0, 2.0], [3.0], [4.0]], True, "same number of items per point; got \\[1, 2, 1, 1\\]"),
        ([[1.0], [2.0], [3.0]], False, "y_items must give the items of each of the 4 points; got 3"),
        ([[1.0], [], [3.0], [4.0]], False, "non-empty 1-d list"),
    ],
)
def test_bad_items_are_refused_with_what_was_expected(y_items, paired, message):
    if len(y_items) == 3 and paired:  # the mean check: a fourth point whose items average 3, not 4
        y_items = [*y_items, [3.0]]
    with pytest.raises(ValueError, match=message):
        correlate([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], y_items=y_items, paired=paired)


def test_items_given_by_label_pair_with_the_points_by_label():
    x = {"a": 0.1, "b": 0.5, "c": 0.9}
    y = {"c": 1.0, "a": 0.0, "b": 0.5}
    r = correlate(x, y, y_items={"b": [0.0, 1.0], "a": [0.0, 0.0], "c": [1.0, 1.0]}, n_boot=50)
    assert r.labels == ("a", "b", "c") and r.n_items == (2, 2, 2)


def test_new_fields_round_trip_and_old_files_still_load(tmp_path):
    r = correlate([1, 2, 3, 4, 5], [2.0, 1.0, 4.0, 3.0, 5.0], y_items=[[2, 2], [1, 1], [4, 4], [3, 3], [5, 5]])
    assert Correlation.load(r.save(tmp_path / "new.json")) == r
    old = {k: v for k, v in json.loads((tmp_path / "new.json").read_text()).items()}
    for key in ("p_method", "n_permutations", "p_min", "p_asymptotic", "item_ci_low", "item_ci_high"):
        old.pop(key)
    old.pop("item_resampling"), old.pop("n_items")
    old["p_value"] = 0.0  # an old file's p-value: scipy's asymptotic one
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = Correlation.load(tmp_path / "old.json")
    assert loaded.p_method == "asymptotic" and loaded.p_min is None and loaded.item_ci_low is None
    assert not loaded.significant and loaded.p_text() == "p = 0 (asymptotic)"
    assert loaded.plot().layout.title.text  # still draws
