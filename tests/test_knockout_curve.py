"""Knockout curves on a tiny model: each point equals a knockout run by hand; the result round-trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headscope as hs
from headscope.ablation import KnockoutCurve, knockout, knockout_curve
from headscope.errors import HeadIndexError
from headscope.heads import random_heads
from headscope.tasks import Sample, Span


def answer_logprob(model, sample: Sample) -> float:
    enc = sample.encode(model.tokenizer)
    with torch.no_grad():
        logits = model(enc.input_ids[None])
    return logits[0, -1].log_softmax(-1)[enc.answer_ids[0]].item()


def needle_sample(code: str) -> Sample:
    prompt = f"The old city had a quiet river. The secret code is {code}. The market opened. The secret code is"
    start = prompt.index(code)
    return Sample(prompt, f" {code}", spans=(Span("needle", start, start + len(code)),))


@pytest.fixture(scope="module")
def model():
    return hs.load_model("tiny-llama")


@pytest.fixture(scope="module")
def samples():
    return [needle_sample("4821"), needle_sample("7350")]


RANKING = [(1, 2), (0, 1), (1, 0), (0, 3)]


@pytest.fixture(scope="module")
def curve(model, samples):
    return knockout_curve(model, samples, RANKING, answer_logprob, ks=[1, 2], seeds=[0, 1], progress=False)


def test_curve_points_equal_knockouts_run_by_hand(model, samples, curve):
    def mean_score(heads):
        values = []
        for sample in samples:
            with knockout(model, heads, "uniform"):
                values.append(answer_logprob(model, sample))
        return float(np.mean(values))

    assert curve.baseline == pytest.approx(float(np.mean([answer_logprob(model, s) for s in samples])), abs=1e-9)
    assert curve.top == pytest.approx((mean_score(RANKING[:1]), mean_score(RANKING[:2])), abs=1e-9)
    info = hs.model_info(model)
    assert curve.random_sets[1][1] == tuple(random_heads(info, 2, exclude=RANKING[:2], seed=1))
    assert curve.random[1][1] == pytest.approx(mean_score(curve.random_sets[1][1]), abs=1e-9)
    assert curve.top[0] != curve.baseline


def test_random_heads_are_drawn_outside_the_top_of_the_ranking(curve):
    excluded = set(RANKING[: curve.exclude_top])
    assert curve.exclude_top == 2
    for per_seed in curve.random_sets:
        for k, heads in zip(curve.ks, per_seed, strict=True):
            assert len(heads) == k and not excluded & set(heads)


def test_curve_frame_band_and_round_trip(curve, tmp_path):
    frame = curve.to_frame()
    assert list(frame.columns) == ["k", "kind", "seed", "accuracy"]
    assert len(frame) == (1 + 2) + 2 * (1 + 2)
    assert (frame[frame.k == 0].accuracy == curve.baseline).all()
    random_k2 = frame[(frame.kind == "random") & (frame.k == 2)].accuracy
    assert curve.random_mean()[1] == pytest.approx(random_k2.mean())
    assert curve.random_std()[1] == pytest.approx(random_k2.std(ddof=0))
    fig = curve.plot()
    assert [trace.name for trace in fig.data][-1] == "top-ranked heads"
    upper, lower = fig.data[0].y, fig.data[1].y
    assert np.allclose(np.asarray(upper) - np.asarray(lower), 2 * np.concatenate([[0], curve.random_std()]))
    curve.save(tmp_path / "curve.json")
    assert KnockoutCurve.load(tmp_path / "curve.json") == curve


def test_edge_and_mean_curves_resolve_spans_and_means_per_run(model, samples):
    edge = knockout_curve(
        model, samples, RANKING, answer_logprob, ks=[2], seeds=[0], mode="edge", key_label="needle", progress=False
    )
    by_hand = []
    for sample in samples:
        with knockout(model, RANKING[:2], "edge", key_label="needle", sample=sample):
            by_hand.append(answer_logprob(model, sample))
    assert edge.top[0] == pytest.approx(float(np.mean(by_hand)), abs=1e-9)
    mean = knockout_curve(model, samples, RANKING, answer_logprob, ks=[1], seeds=[0], mode="mean", progress=False)
    assert mean.mode == "mean" and mean.top[0] != mean.baseline


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ks": [5]}, HeadIndexError, "ranking holds only 4 heads"),
        ({"ks": [0, 1]}, HeadIndexError, "head counts >= 1"),
        ({"ks": [1], "seeds": []}, ValueError, "at least one seed"),
        ({"ks": [1], "mode": "edge"}, ValueError, "needs key_label="),
    ],
)
def test_curve_rejects_bad_settings(model, samples, kwargs, error, message):
    with pytest.raises(error, match=message):
        knockout_curve(model, samples, RANKING, answer_logprob, progress=False, **kwargs)


def test_curve_rejects_a_ranking_with_heads_outside_the_model(model, samples):
    with pytest.raises(HeadIndexError, match=r"within a 2x4 model; got \(3, 0\)"):
        knockout_curve(model, samples, [(3, 0)], answer_logprob, ks=[1], progress=False)
