"""Shared figures: top-heads bar, knockout curve with its random-head band, recall scatter,
the needle-in-a-haystack heatmap, the thresholded head map and the ranked table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from headscope.viz import head_map, knockout_curve_figure, needle_heatmap, ranked_table, recall_scatter, top_heads_bar


def test_top_heads_bar_orders_heads_by_score_and_skips_nan():
    scores = torch.rand(5, 7)
    scores[2, 3] = float("nan")
    fig = top_heads_bar(scores, k=6)
    filled = torch.nan_to_num(scores, nan=-1.0).flatten()
    expected = torch.topk(filled, 6).indices.tolist()
    assert list(fig.data[0].x) == [f"L{i // 7}H{i % 7}" for i in expected]
    np.testing.assert_allclose(fig.data[0].y, filled[expected].numpy(), rtol=1e-6)
    assert len(top_heads_bar(scores, k=100).data[0].x) == 34  # every head but the NaN one


def test_top_heads_bar_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be at least 1; got 0"):
        top_heads_bar(np.ones((2, 2)), k=0)
    with pytest.raises(ValueError, match=r"\[layer, head\] grid; got shape \(2, 2, 2\)"):
        top_heads_bar(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="every score is NaN"):
        top_heads_bar(np.full((2, 2), np.nan))


def _knockout_frame() -> pd.DataFrame:
    top = [(k, acc, "top", np.nan) for k, acc in [(0, 0.9), (2, 0.5), (4, 0.1)]]
    random = [
        (k, acc, "random", seed)
        for seed, accs in enumerate([[0.9, 0.85, 0.8], [0.9, 0.8, 0.6], [0.9, 0.9, 0.7]])
        for k, acc in zip([0, 2, 4], accs, strict=True)
    ]
    return pd.DataFrame(top + random, columns=["k", "value", "kind", "seed"])


@pytest.mark.parametrize("band", ["std", "minmax"])
def test_knockout_curve_draws_top_line_and_random_band(band):
    frame = _knockout_frame()
    fig = knockout_curve_figure(frame, band=band)
    traces = {t.name: t for t in fig.data}
    runs = np.array([[0.9, 0.85, 0.8], [0.9, 0.8, 0.6], [0.9, 0.9, 0.7]])  # seeds x k
    mean = runs.mean(axis=0)
    lower, upper = (mean - runs.std(axis=0), mean + runs.std(axis=0)) if band == "std" else (runs.min(0), runs.max(0))
    label = "random heads (mean ± std)" if band == "std" else "random heads (mean, min–max)"
    np.testing.assert_allclose(traces[label].y, mean)
    np.testing.assert_allclose(traces["random heads: upper"].y, upper)
    np.testing.assert_allclose(traces["random heads: lower"].y, lower)
    names = [t.name for t in fig.data]
    # the lower edge fills up to the trace drawn just before it: the upper edge
    assert traces["random heads: lower"].fill == "tonexty"
    assert names.index("random heads: lower") == names.index("random heads: upper") + 1
    assert list(traces["top heads"].x) == [0, 2, 4]
    np.testing.assert_allclose(traces["top heads"].y, [0.9, 0.5, 0.1])


def test_knockout_curve_uses_the_named_metric_and_top_rows_alone():
    frame = _knockout_frame().rename(columns={"value": "logprob"})
    fig = knockout_curve_figure(frame[frame["kind"] == "top"], value="logprob")
    assert [t.name for t in fig.data] == ["top heads"]
    assert fig.layout.yaxis.title.text == "logprob"


def test_knockout_curve_rejects_frames_that_break_the_contract():
    frame = _knockout_frame()
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['seed'\]; expected k, value, kind, seed"):
        knockout_curve_figure(frame.drop(columns="seed"))
    with pytest.raises(ValueError, match=r"kind must be 'top' or 'random'; got \['random', 'top', 'zero'\]"):
        knockout_curve_figure(frame.assign(kind=["zero", *frame["kind"][1:]]))
    with pytest.raises(ValueError, match="band must be 'std' or 'minmax'"):
        knockout_curve_figure(frame, band="iqr")


def test_recall_scatter_fit_line_is_least_squares_and_title_has_correlations():
    rng = np.random.default_rng(0)
    recalls = rng.uniform(0, 1, 8)
    scores = 0.6 * recalls + rng.normal(0, 0.1, 8)
    fig = recall_scatter(recalls, scores, [f"v{i}" for i in range(8)])
    points, line = fig.data
    slope, intercept = np.polyfit(recalls, scores, 1)
    np.testing.assert_allclose(np.diff(line.y) / np.diff(line.x), [slope])
    np.testing.assert_allclose(line.y[0], slope * line.x[0] + intercept)
    assert (line.x[0], line.x[1]) == (recalls.min(), recalls.max())
    assert list(points.text) == [f"v{i}" for i in range(8)]
    rho, r = stats.spearmanr(recalls, scores)[0], stats.pearsonr(recalls, scores)[0]
    assert f"Spearman ρ = {rho:.2f}" in fig.layout.title.text
    assert f"Pearson r = {r:.2f}" in fig.layout.title.text


def test_recall_scatter_options_and_degenerate_input():
    assert len(recall_scatter([0.1, 0.5, 0.7], [1, 2, 2.5], fit=False).data) == 1
    given = recall_scatter([0.1, 0.5, 0.7], [1, 2, 2.5], correlation="Spearman ρ = 0.5 (from compare)", title="MDQA")
    assert given.layout.title.text == "MDQA<br><sup>Spearman ρ = 0.5 (from compare)</sup>"
    flat = recall_scatter([0.5, 0.5, 0.5], [1, 2, 3])
    assert len(flat.data) == 1  # no line through points that share one x
    assert "too few distinct points" in flat.layout.title.text
    with pytest.raises(ValueError, match=r"1-D and of equal length; got \(3,\) and \(2,\)"):
        recall_scatter([0.1, 0.2, 0.3], [1, 2])
    with pytest.raises(ValueError, match="got 2 labels for 3 points"):
        recall_scatter([0.1, 0.2, 0.3], [1, 2, 3], ["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        recall_scatter([0.1, np.nan, 0.3], [1, 2, 3])


def test_needle_heatmap_cells_are_success_rates_per_length_and_depth():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "length": rng.choice([2000, 500, 1000], 60),
            "depth": rng.choice([0.0, 50.0, 100.0, 25.0], 60),
            "success": rng.random(60) < 0.6,
        }
    )
    fig = needle_heatmap(frame)
    heat = fig.data[0]
    assert list(heat.y) == ["500", "1000", "2000"] and list(heat.x) == ["0%", "25%", "50%", "100%"]
    for i, length in enumerate([500, 1000, 2000]):
        for j, depth in enumerate([0.0, 25.0, 50.0, 100.0]):
            cell = frame[(frame["length"] == length) & (frame["depth"] == depth)]["success"]
            if len(cell):
                assert heat.z[i][j] == pytest.approx(cell.mean())
                assert heat.text[i][j] == f"{cell.sum()}/{len(cell)}"
            else:
                assert np.isnan(heat.z[i][j]) and heat.text[i][j] == ""
    assert (heat.zmin, heat.zmax) == (0, 1)


def test_needle_heatmap_needs_length_and_depth():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['depth'\]"):
        needle_heatmap(pd.DataFrame({"length": [1], "success": [True]}))
    with pytest.raises(ValueError, match="only needle samples"):
        needle_heatmap(pd.DataFrame({"length": [np.nan], "depth": [np.nan], "success": [True]}))


def test_head_map_outlines_heads_above_the_threshold_and_labels_the_top():
    grid = torch.rand(6, 5) * 0.2
    grid[3, 1] = float("nan")
    fig = head_map(grid, threshold=0.1, label_top=3)
    outlined = fig.data[1]
    above = [(int(y), int(x)) for x, y in zip(outlined.x, outlined.y, strict=True)]
    expected = [(layer, head) for layer in range(6) for head in range(5) if grid[layer, head] > 0.1]
    assert sorted(above) == expected and list(outlined.text) == [f"L{a}H{b}" for a, b in above]
    assert outlined.name == "above 0.1"
    filled = torch.nan_to_num(grid, nan=-1.0).flatten()
    top3 = [f"L{i // 5}H{i % 5}" for i in torch.topk(filled, 3).indices.tolist()]
    assert [a.text for a in fig.layout.annotations] == top3
    assert 0.1 in list(fig.data[0].colorbar.tickvals)
    plain = head_map(grid)
    assert len(plain.data) == 1 and not plain.layout.annotations


def test_ranked_table_shows_the_top_rows_and_folds_the_rest():
    frame = pd.DataFrame({"label": [f"L0H{i}" for i in range(30)], "value": np.r_[np.linspace(0, 1, 29), np.nan]})
    page = ranked_table(frame, shown=20)
    top, folded = page.split("<details>")
    order = [f"L0H{i}" for i in range(28, -1, -1)] + ["L0H29"]
    assert [label for label in order if f">{label}<" in top] == order[:20]
    assert [label for label in order if f">{label}<" in folded] == order[20:]
    assert "the other 10 rows" in folded
    assert "<details>" not in ranked_table(frame, shown=30)
