"""How stable a detected ranking is: a bootstrap over samples, and the overlap of runs on other needle sets."""

from __future__ import annotations

import functools
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from word_samples import always, word_sample

import headscope as hs
from headscope.compare import RunOverlap, run_overlap
from headscope.retrieval import RetrievalScores, Stability, stability
from headscope.viz import retrieval_report


def _scores(per) -> RetrievalScores:
    per = torch.as_tensor(per, dtype=torch.float64)
    return RetrievalScores(per.sum(0), len(per), len(per), "m", "teacher_forced", per_sample=per)


def _manual(per: np.ndarray, *, top_k: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample by a loop with the documented draws; each resample's set by hs.head_set. Returns means, P(top k)."""
    n = len(per)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = np.stack([per[row].mean(0) for row in draws])
    counts = np.zeros(per.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resamples with fewer than k positive heads
        for grid in means:
            for head in hs.head_set(grid, top_k=top_k):
                counts[head] += 1
    return means, counts / n_boot


def test_a_head_scoring_on_every_sample_is_always_in_the_top_and_a_zero_head_never_is():
    n = 12
    per = torch.zeros(n, 2, 3, dtype=torch.float64)
    per[:, 1, 2] = 0.8  # every sample
    per[::3, 0, 1] = 0.3  # a third of the samples
    result = stability(_scores(per), top_k=4, n_boot=500, seed=3)  # top 4 > the 2 heads that ever score
    assert result.p_top[1, 2] == 1.0 and result.low[1, 2] == result.high[1, 2]  # every resample has the same mean
    assert result.high[1, 2].item() == pytest.approx(0.8, rel=1e-12)
    zero = per.sum(0) == 0
    assert (result.p_top[zero] == 0).all()  # never picked to fill the top 4
    # L0H1 is in the top 4 exactly when a resample draws one of its samples
    draws = np.random.default_rng(3).integers(0, n, size=(500, n))
    assert result.p_top[0, 1].item() == np.isin(draws, [0, 3, 6, 9]).any(1).mean() < 1
    assert result.stable() == [(1, 2), (0, 1)] and result.top == ((1, 2), (0, 1))


def test_a_head_scoring_on_half_the_samples_wins_with_the_binomial_probability():
    """Top 1 of A (0.5 on every sample) and B (1 on 5 of 10 samples): B wins iff more than 5 draws hit its samples.

    A resample's B mean is X/10 with X ~ Binomial(10, 1/2); a tie (X = 5) goes to A, the earlier head.
    So P(B) = P(X >= 6) = 386/1024, and the result must equal the share of the documented draws with X >= 6.
    """
    n, n_boot, seed = 10, 20_000, 7
    per = torch.zeros(n, 1, 2, dtype=torch.float64)
    per[:, 0, 0] = 0.5
    per[:5, 0, 1] = 1.0
    result = stability(_scores(per), top_k=1, n_boot=n_boot, seed=seed)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    wins = ((draws < 5).sum(1) >= 6).mean()
    assert result.p_top[0, 1].item() == wins and result.p_top[0, 0].item() == 1 - wins
    exact = sum(math.comb(10, x) for x in range(6, 11)) / 2**10
    assert abs(wins - exact) < 4.5 * math.sqrt(exact * (1 - exact) / n_boot)  # 4.5 standard errors


def test_intervals_and_probabilities_match_a_manual_bootstrap_with_ties():
    generator = torch.Generator().manual_seed(0)
    per = torch.randint(0, 3, (9, 3, 4), generator=generator).double() / 4  # values 0, 0.25, 0.5: many ties
    per[:, 2, 3] = 0  # a head that never scores
    result = stability(_scores(per), top_k=3, n_boot=300, seed=11, confidence=0.9)
    means, p_top = _manual(per.numpy(), top_k=3, n_boot=300, seed=11)
    low, high = np.percentile(means, [5, 95], axis=0)
    np.testing.assert_allclose(result.low.numpy(), low, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.high.numpy(), high, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(result.p_top.numpy(), p_top)
    assert 0 < p_top.max() and ((p_top > 0) & (p_top < 1)).any()  # the ties and the cut both matter here


@pytest.fixture(scope="module")
def detected():
    """A real detection on tiny-llama: random heads score chance copy hits on word samples."""
    model = hs.load_model("tiny-llama")
    samples = [word_sample(seed) for seed in range(8)]
    return hs.detect_retrieval_heads(model, samples, require_prediction=False, success=always, progress=False)


def test_bootstrap_of_a_real_detection_matches_a_manual_one(detected):
    per = detected.per_sample
    assert detected.n_counted == 8 and (per.std(0) > 0).any()  # the samples disagree, so resampling matters
    result = stability(detected, top_k=3, n_boot=200)
    assert result.top == tuple(hs.head_set(detected.scores, top_k=3)) and torch.equal(result.score, detected.scores)
    means, p_top = _manual(per.numpy(), top_k=3, n_boot=200, seed=0)
    np.testing.assert_array_equal(result.p_top.numpy(), p_top)
    low, high = np.percentile(means, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(result.low.numpy(), low, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(result.high.numpy(), high, rtol=1e-12, atol=1e-15)
    assert (result.low <= detected.scores + 1e-12).all() and (detected.scores <= result.high + 1e-12).all()


def test_stability_round_trips_and_draws_its_likeliest_heads(detected, tmp_path):
    result = stability(detected, top_k=2, n_boot=100, seed=5)
    assert Stability.load(result.save(tmp_path / "stability.json")) == result
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "head", "label", "score", "low", "high", "p_top", "top"]
    assert len(frame) == 8 and frame["top"].sum() == len(result.top)
    fig = result.plot()
    shown = frame[frame["p_top"] > 0].sort_values(["p_top", "score"], ascending=False, kind="stable")
    assert list(fig.data[0].x) == list(shown["label"]) and list(fig.data[0].y) == list(shown["p_top"])
    sections = retrieval_report(detected, stability=result)
    assert [s.key for s in sections] == ["heads", "stability", "table"]


def test_stable_keeps_heads_at_the_threshold_most_often_first():
    grid = torch.tensor([[0.89, 0.9, 1.0, 0.95]], dtype=torch.float64)
    zeros = torch.zeros_like(grid)
    result = Stability("m", 2, 100, 0, 0.95, 10, grid.clone(), zeros, zeros, grid)
    assert result.stable() == [(0, 2), (0, 3), (0, 1)] and result.stable(0.96) == [(0, 2)]
    with pytest.raises(hs.ConfigError, match=r"threshold is a share of resamples in \(0, 1\]; got 0"):
        result.stable(0)


def test_scores_without_per_sample_values_say_to_keep_them():
    per = torch.ones(3, 1, 2, dtype=torch.float64)
    bare = RetrievalScores(per.sum(0), 3, 3, "m", "teacher_forced")
    with pytest.raises(hs.ConfigError, match="detect with keep_per_sample=True"):
        stability(bare)
    with pytest.raises(hs.ConfigError, match="no sample was counted"):
        stability(RetrievalScores(torch.zeros(1, 2), 0, 3, "m", "g", per_sample=torch.zeros(0, 1, 2)))
    with pytest.raises(hs.ConfigError, match="top_k and n_boot must be at least 1; got 0 and 1000"):
        stability(_scores(per), top_k=0)
    with pytest.raises(hs.ConfigError, match=r"confidence must lie in \(0, 1\); got 1"):
        stability(_scores(per), confidence=1)
    with pytest.raises(
        hs.InputTypeError, match=r"bootstraps a RetrievalScores \(from detect_retrieval_heads\); got a Tensor"
    ):
        stability(per)
    with pytest.warns(UserWarning, match="a bootstrap over 1 sample"):
        stability(_scores(per[:1]), n_boot=10)


def test_run_overlap_gives_pairwise_jaccard_and_common_heads():
    generator = torch.Generator().manual_seed(1)
    runs = {
        f"seed {i}": stability(_scores(torch.rand(6, 2, 4, generator=generator) ** 3), top_k=3, n_boot=200)
        for i in range(3)
    }
    overlap = run_overlap(runs, threshold=0.5)
    assert overlap.tops == tuple(tuple(hs.head_set(r.score, top_k=3)) for r in runs.values())
    assert overlap.stables == tuple(tuple(r.stable(0.5)) for r in runs.values())
    for which, sets in (("top", overlap.tops), ("stable", overlap.stables)):
        matrix = overlap.jaccard(which)
        for i in range(3):
            for j in range(3):
                expected = hs.jaccard(sets[i], sets[j]) if set(sets[i]) | set(sets[j]) else np.nan
                np.testing.assert_equal(matrix[i, j], expected)
        assert set(overlap.common(which)) == set(sets[0]) & set(sets[1]) & set(sets[2])
    frame = overlap.to_frame()
    assert list(zip(frame["a"], frame["b"], strict=True)) == [("seed 0", "seed 1"), ("seed 0", "seed 2"),
                                                              ("seed 1", "seed 2")]  # fmt: skip
    assert frame["jaccard_top"].tolist() == [overlap.jaccard()[0, 1], overlap.jaccard()[0, 2], overlap.jaccard()[1, 2]]


def test_run_overlap_of_empty_stable_sets_is_nan_and_round_trips(tmp_path):
    spread = torch.zeros(4, 1, 3, dtype=torch.float64)
    spread[range(4), 0, [0, 1, 2, 0]] = 1.0  # no head is in the top 1 of 90% of resamples
    runs = {"a": stability(_scores(spread), top_k=1, n_boot=200), "b": stability(_scores(spread), top_k=1, n_boot=200)}
    overlap = run_overlap(runs)
    assert overlap.stables == ((), ()) and np.isnan(overlap.jaccard("stable")).all()
    assert overlap.jaccard("top").tolist() == [[1.0, 1.0], [1.0, 1.0]] and overlap.common() == ((0, 0),)
    assert RunOverlap.load(overlap.save(tmp_path / "overlap.json")) == overlap
    assert len(overlap.plot().data) == 2


def test_run_overlap_refuses_runs_it_cannot_compare():
    one = stability(_scores(torch.ones(2, 1, 2)), top_k=1, n_boot=10)
    with pytest.raises(hs.ConfigError, match="at least 2 runs"):
        run_overlap({"a": one})
    with pytest.raises(hs.ConfigError, match=r"one top_k; got \{'a': 1, 'b': 2\}"):
        run_overlap({"a": one, "b": stability(_scores(torch.ones(2, 1, 2)), top_k=2, n_boot=10)})
    with pytest.raises(hs.ModelMismatchError, match="one shape"):
        run_overlap({"a": one, "b": stability(_scores(torch.ones(2, 2, 1)), top_k=1, n_boot=10)})


def test_detect_with_seeds_writes_each_run_and_their_overlap(tmp_path, capsys, monkeypatch):
    """The CLI's --seeds: one detection per needle set, each bootstrapped, then the overlap of their sets.

    A random tiny model answers nothing, so the test counts every sample and credits heads without
    the model's own prediction (random heads then score chance copy hits, as in word_samples).
    """
    import headscope.retrieval
    from headscope.cli import main
    from headscope.models import tiny_folder

    monkeypatch.setattr(headscope.retrieval, "DEFAULT_SUCCESS", always)
    detect = functools.partial(headscope.retrieval.detect_retrieval_heads, require_prediction=False)
    monkeypatch.setattr(headscope.retrieval, "detect_retrieval_heads", detect)
    task = ["--no-chat", "--needle", "symbolic", "--haystack", "symbolic", "--lengths", "60", "--depths", "0", "100",
            "--n-samples", "2"]  # fmt: skip
    out = tmp_path / "seeds"
    argv = ["detect", "--model", str(tiny_folder("llama")), *task, "--top", "3", "--out", str(out)]
    assert main([*argv, "--seeds", "0", "1"]) == 0
    printed = capsys.readouterr().out
    answers = [set(pd.read_csv(out / f"seed-{s}" / "outcomes.csv")["answer"]) for s in (0, 1)]
    assert answers[0] != answers[1]  # two needle sets
    runs = {f"seed {s}": Stability.load(out / f"seed-{s}" / "stability.json") for s in (0, 1)}
    for s in (0, 1):
        scores = RetrievalScores.load(out / f"seed-{s}" / "scores.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fewer than 3 heads may score above 0
            assert runs[f"seed {s}"].top == tuple(hs.head_set(scores.scores, top_k=3)) and scores.n_counted == 4
    assert RunOverlap.load(out / "overlap.json") == run_overlap(runs)
    frame = pd.read_csv(out / "overlap.csv")
    tops = [r.top for r in runs.values()]
    assert frame["jaccard_top"].tolist() == [pytest.approx(hs.jaccard(*tops))]
    common = ", ".join(map(str, sorted(set(tops[0]) & set(tops[1])))) or "none"
    assert f"in the top 3 of every seed: {common}" in printed and "heads in the top 3 in at least 90%" in printed
    assert "Pairwise Jaccard overlap" in (out / "report.html").read_text()
    assert json.loads((out / "seed-0" / "stability.json").read_text())["n_boot"] == 1000
    assert main([*argv, "--seeds", "1", "1"]) == 2
    assert "--seeds needs at least 2 distinct seeds; got [1, 1]" in capsys.readouterr().err
