"""Head-set comparison: overlaps on hand-made sets, rank agreement and correlations against independent formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from headscope.compare import Correlation, RankAgreement, correlate, head_set, jaccard, rank_correlation, recall
from headscope.errors import HeadIndexError, HeadscopeError, ModelMismatchError
from headscope.viz import correlation_figure

# -- recall, jaccard, head_set ------------------------------------------------------------------


def test_recall_counts_reference_heads_found_in_candidate():
    reference = [(0, 1), (1, 2), (3, 0), (5, 5), (7, 7)]
    candidate = [(1, 2), (5, 5), (9, 9), (0, 0)]
    assert recall(reference, candidate) == pytest.approx(2 / 5)
    assert recall(candidate, reference) == pytest.approx(2 / 4)  # asymmetric: divides by the reference


def test_recall_accepts_labels_and_ignores_duplicates():
    assert recall(["L0H1", "L0H1", "2-3"], [(2, 3)]) == pytest.approx(1 / 2)


def test_jaccard_matches_set_formula_and_is_symmetric():
    a, b = {(0, 1), (1, 2), (2, 3)}, {(1, 2), (2, 3), (4, 4), (5, 0)}
    assert jaccard(a, b) == jaccard(b, a) == pytest.approx(len(a & b) / len(a | b))
    assert jaccard(a, a) == 1.0


def test_empty_sets_raise_clear_errors():
    with pytest.raises(HeadIndexError, match="non-empty reference"):
        recall([], [(0, 1)])
    with pytest.raises(HeadIndexError, match="two empty head sets"):
        jaccard([], [])
    assert recall([(0, 1)], []) == 0.0  # an empty candidate is fine: it recovers nothing
    with pytest.raises(HeadIndexError, match=r"\(layer, head\) pairs"):
        recall([(0, 1, 2)], [(0, 1)])


def test_head_set_top_k_and_threshold_match_a_sort_by_hand():
    rng = np.random.default_rng(3)
    grid = rng.random((5, 6))
    flat = sorted(((grid[l_, h], (l_, h)) for l_ in range(5) for h in range(6)), reverse=True)
    assert head_set(grid, top_k=7) == [h for _, h in flat[:7]]
    assert head_set(torch.tensor(grid), threshold=0.6) == [h for v, h in flat if v > 0.6]
    assert head_set(grid, top_k=3, threshold=0.95) == [h for v, h in flat if v > 0.95][:3]


def test_head_set_skips_nan_heads_and_breaks_ties_by_position():
    grid = np.array([[0.5, np.nan], [0.5, 0.7]])
    assert head_set(grid, top_k=3) == [(1, 1), (0, 0), (1, 0)]
    with pytest.warns(UserWarning, match="only 3 heads score above 0, fewer than top_k=4: the head set has 3"):
        assert head_set(grid, top_k=4) == [(1, 1), (0, 0), (1, 0)]


def test_head_set_never_fills_up_with_zero_or_below_threshold_heads():
    grid = np.zeros((4, 6))
    grid[2, 5], grid[3, 1], grid[1, 1] = 0.4, 0.2, 0.05
    with pytest.warns(UserWarning, match="only 3 heads score above 0"):
        assert head_set(grid, top_k=10) == [(2, 5), (3, 1), (1, 1)]
    with pytest.warns(UserWarning, match="only 2 heads score above 0.1, fewer than top_k=5"):
        assert head_set(grid, top_k=5, threshold=0.1) == [(2, 5), (3, 1)]


def test_maps_that_share_no_positive_head_share_no_top_k_head():
    """The issue's example: zero-score heads in layer order used to give an overlap of 2/3."""
    a, b = np.zeros((2, 4)), np.zeros((2, 4))
    a[1, 3], b[1, 2] = 0.7, 0.6
    with pytest.warns(UserWarning, match="the head set has 1 heads"):
        agreement = rank_correlation(a, b, top_k=3)
    assert agreement.overlap == 0.0 and agreement.sizes == (1, 1)
    assert agreement.top_a == ((1, 3),) and agreement.top_b == ((1, 2),)
    with pytest.warns(UserWarning):
        set_a, set_b = head_set(a, top_k=3), head_set(b, top_k=3)
    assert recall(set_a, set_b) == 0.0 and jaccard(set_a, set_b) == 0.0
    b[1, 3] = 0.1  # now one head is shared; the overlap divides by the larger set
    with pytest.warns(UserWarning):
        assert rank_correlation(a, b, top_k=3).overlap == pytest.approx(1 / 2)


def test_every_head_form_is_read_alike():
    forms = [(1, 0), [1, 0], "L1H0", "1-0", np.array([1, 0]), torch.tensor([1, 0]), (np.int64(1), np.int32(0))]
    assert recall([(1, 0)], forms) == 1.0 and jaccard(forms, ["L1H0"]) == 1.0
    with pytest.raises(HeadIndexError, match="non-negative"):
        recall(["L-1H0"], [(1, 0)])
    with pytest.raises(HeadIndexError, match=r"pairs of ints.*got \(1\.5, 0\)"):
        recall([(1.5, 0)], [(1, 0)])


def test_head_set_rejects_missing_criteria_and_bad_grids():
    with pytest.raises(ValueError, match="top_k=, threshold= or both"):
        head_set(np.zeros((2, 2)))
    with pytest.raises(HeadIndexError, match="at least 1"):
        head_set(np.zeros((2, 2)), top_k=0)
    with pytest.raises(ValueError, match=r"\[layer, head\] grid; got shape \(4,\)"):
        head_set(np.zeros(4), top_k=1)


# -- rank_correlation ---------------------------------------------------------------------------


def _hand_spearman(a: np.ndarray, b: np.ndarray) -> float:
    """1 - 6 Σd² / (n(n²-1)), valid without ties."""
    ra, rb = a.argsort().argsort(), b.argsort().argsort()
    n = len(a)
    return 1 - 6 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))


def test_rank_correlation_matches_hand_rank_formula():
    rng = np.random.default_rng(0)
    a = rng.random((6, 5))
    b = a + rng.normal(scale=0.3, size=a.shape)
    agreement = rank_correlation(a, b, top_k=5)
    assert agreement.spearman == pytest.approx(_hand_spearman(a.ravel(), b.ravel()), abs=1e-12)
    assert agreement.n_heads == 30
    top_a = set(head_set(a, top_k=5))
    top_b = set(head_set(b, top_k=5))
    assert agreement.overlap == pytest.approx(len(top_a & top_b) / 5)


def test_rank_correlation_leaves_out_nan_heads():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 4)), rng.random((4, 4))
    a[0, 0] = np.nan
    agreement = rank_correlation(a, b, top_k=3)
    keep = ~np.isnan(a.ravel())
    assert agreement.n_heads == 15
    assert agreement.spearman == pytest.approx(_hand_spearman(a.ravel()[keep], b.ravel()[keep]), abs=1e-12)


def test_rank_correlation_rejects_grids_of_different_models():
    with pytest.raises(ModelMismatchError, match="got 3x4 and 4x3"):
        rank_correlation(np.zeros((3, 4)), np.zeros((4, 3)))


def test_rank_agreement_round_trips_and_plots(tmp_path):
    rng = np.random.default_rng(2)
    agreement = rank_correlation(rng.random((3, 4)), rng.random((3, 4)), top_k=4)
    agreement.save(tmp_path / "r.json")
    assert RankAgreement.load(tmp_path / "r.json") == agreement
    frame = agreement.to_frame()
    assert list(frame.columns[:3]) == ["layer", "head", "label"] and len(frame) == 12
    assert frame.top_a.sum() == 4
    assert len(agreement.plot().data) == 3


# -- correlate ----------------------------------------------------------------------------------


def test_correlate_matches_scipy_and_hand_pearson():
    rng = np.random.default_rng(4)
    x = rng.random(12)
    y = 2 * x + rng.normal(scale=0.4, size=12)
    pearson = correlate(x, y, method="pearson", n_boot=300)
    hand = float(
        ((x - x.mean()) * (y - y.mean())).sum() / np.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    )
    assert pearson.value == pytest.approx(hand, abs=1e-12)
    assert pearson.p_asymptotic == pytest.approx(stats.pearsonr(x, y).pvalue)  # kept for reference
    assert pearson.p_method == "monte-carlo-permutation"  # 12 points: see tests/test_correlation_exact.py
    spearman = correlate(x, y, n_boot=300)
    assert spearman.method == "spearman" and spearman.value == pytest.approx(_hand_spearman(x, y), abs=1e-12)


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_more_points():
    rng = np.random.default_rng(5)
    small_x = rng.random(8)
    small = correlate(small_x, small_x + rng.normal(scale=0.3, size=8), n_boot=2000, seed=1)
    big_x = rng.random(200)
    big = correlate(big_x, big_x + rng.normal(scale=0.3, size=200), n_boot=2000, seed=1)
    for r in (small, big):
        assert -1 <= r.ci_low <= r.value <= r.ci_high <= 1
    assert big.ci_high - big.ci_low < small.ci_high - small.ci_low


def test_bootstrap_interval_matches_a_resampling_loop_by_hand():
    x = np.array([0.1, 0.3, 0.35, 0.5, 0.8, 0.9])
    y = np.array([10.0, 14.0, 12.0, 20.0, 19.0, 25.0])
    r = correlate(x, y, method="pearson", n_boot=500, seed=7)
    idx = np.random.default_rng(7).integers(0, 6, size=(500, 6))
    boot = [np.corrcoef(x[i], y[i])[0, 1] for i in idx if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)


def test_correlate_pairs_mappings_by_label():
    recalls = {"symbolic": 0.3, "templated": 0.5, "realistic": 0.8, "real": 1.0}
    scores = {"real": 60.0, "symbolic": 20.0, "realistic": 50.0, "templated": 40.0}
    r = correlate(recalls, scores, n_boot=100)
    assert r.value == pytest.approx(1.0)
    assert dict(zip(r.labels, r.y, strict=True)) == scores


def test_correlation_round_trips_and_plots(tmp_path):
    r = correlate([0.1, 0.4, 0.2, 0.9], [1.0, 3.0, 2.5, 4.0], n_boot=50, labels=["a", "b", "c", "d"])
    r.save(tmp_path / "c.json")
    assert Correlation.load(tmp_path / "c.json") == r
    assert r.to_frame().label.tolist() == ["a", "b", "c", "d"]
    fig = r.plot(title="recall vs score")
    assert fig.to_dict() == correlation_figure(r, title="recall vs score").to_dict()
    assert [t.name for t in fig.data] == ["variants", "least-squares fit"] and "spearman" in fig.layout.title.text
    assert f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" in fig.layout.title.text


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        ([0.1, 0.2], [1.0, 2.0], {}, "at least 3 points; got 2"),
        ([0.1, 0.2, 0.3], [1.0, 2.0], {}, "equal length"),
        ([0.5, 0.5, 0.5], [1.0, 2.0, 3.0], {}, "x is constant"),
        ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0], {"method": "kendall"}, "'spearman' or 'pearson'"),
        ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0], {"n_boot": 0}, "n_boot must be at least 1"),
        ({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1.0, "b": 2.0, "d": 3.0}, {}, "only in x: \\['c'\\]"),
    ],
)
def test_correlate_rejects_bad_input(x, y, kwargs, message):
    with pytest.raises(ValueError, match=message):
        correlate(x, y, **kwargs)


def test_shape_mismatch_is_a_headscope_error():
    with pytest.raises(HeadscopeError):
        rank_correlation(np.zeros((2, 2)), np.zeros((2, 3)))
