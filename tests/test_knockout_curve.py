"""Knockout curves on a tiny model: each point equals a knockout run by hand; the result round-trips."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.ablation import KnockoutCurve, knockout, knockout_curve
from headscope.errors import HeadIndexError
from headscope.heads import random_heads
from headscope.models._fused_bridge import fused_bridge
from headscope.tasks import Sample, Span
from headscope.viz import knockout_curve_figure


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


def answer_rows(model, sample: Sample) -> range:
    """The rows that produce the answer: from the last prompt token to the end of the context."""
    return range(len(sample.encode(model.tokenizer).input_ids) - 1, hs.model_info(model).n_ctx)


def test_curve_points_equal_knockouts_run_by_hand(model, samples, curve):
    assert curve.positions == "answer"

    def mean_score(heads):
        values = []
        for sample in samples:
            with knockout(model, heads, "uniform", queries=answer_rows(model, sample)):
                values.append(answer_logprob(model, sample))
        return float(np.mean(values))

    assert curve.attention == "fused"  # a tiny Llama bridge under attention="auto"; the baseline runs there too
    with fused_bridge(model):
        baseline = float(np.mean([answer_logprob(model, s) for s in samples]))
    # the same float32 scores as the curve's, averaged in float64: equal to float64 rounding
    assert_close(curve.baseline, baseline, short=True)
    assert_close(curve.top, (mean_score(RANKING[:1]), mean_score(RANKING[:2])), short=True)
    info = hs.model_info(model)
    assert curve.random_sets[1][1] == tuple(random_heads(info, 2, exclude=RANKING[:2], seed=1))
    assert_close(curve.random[1][1], mean_score(curve.random_sets[1][1]), short=True)
    assert_differs(curve.baseline, curve.top[0], short=True)


def test_curve_at_all_positions_equals_knockouts_of_every_row(model, samples):
    curve = knockout_curve(model, samples, RANKING, answer_logprob, ks=[2], seeds=[0], positions="all", progress=False)
    by_hand = []
    for sample in samples:
        with knockout(model, RANKING[:2], "uniform"):
            by_hand.append(answer_logprob(model, sample))
    assert curve.positions == "all"
    assert_close(curve.top[0], float(np.mean(by_hand)), short=True)


@pytest.mark.parametrize(("mode", "route"), [("edge", "scores"), ("edge", "z"), ("uniform", "scores"),
                                             ("uniform", "z"), ("zero", "auto"), ("mean", "auto")])  # fmt: skip
def test_answer_positions_leave_every_row_before_the_last_prompt_row_bit_identical(tiny_llama, mode, route):
    """Wu et al. prefill unmasked: only the rows that produce the answer see the knockout."""
    sample = needle_sample("4821")
    enc = sample.encode(tiny_llama.tokenizer)
    tokens = torch.cat([enc.input_ids, enc.answer_ids])[None]
    n_prompt = len(enc.input_ids)
    runs = []

    def record(model, sample):
        with torch.no_grad():
            runs.append(model(tokens)[0])
        return 0.0

    kwargs = dict(ks=[4], seeds=[0], mode=mode, route=route, span="needle", progress=False)
    with pytest.warns(UserWarning):  # a score of 0 everywhere: the flat-baseline warning
        knockout_curve(tiny_llama, [sample], RANKING, record, positions="answer", **kwargs)
        knockout_curve(tiny_llama, [sample], RANKING, record, positions="all", **kwargs)
    plain, top_answer, top_all = runs[0], runs[1], runs[4]  # each curve: intact, top k=4, random k=4
    assert torch.equal(top_answer[: n_prompt - 1], plain[: n_prompt - 1])
    assert_differs(plain[n_prompt - 1 :], top_answer[n_prompt - 1 :], short=True)
    assert_differs(plain[: n_prompt - 1], top_all[: n_prompt - 1], short=True)


def test_random_heads_are_drawn_outside_the_top_of_the_ranking(curve):
    excluded = set(RANKING[: curve.exclude_top])
    assert curve.exclude_top == 2
    for per_seed in curve.random_sets:
        for k, heads in zip(curve.ks, per_seed, strict=True):
            assert len(heads) == k and not excluded & set(heads)


def test_curve_frame_band_and_round_trip(curve, tmp_path):
    frame = curve.to_frame()
    assert list(frame.columns) == ["k", "kind", "seed", "value"]
    assert len(frame) == (1 + 2) + 2 * (1 + 2)
    assert (frame[frame.k == 0].value == curve.baseline).all()
    random_k2 = frame[(frame.kind == "random") & (frame.k == 2)].value
    assert curve.random_mean()[1] == pytest.approx(random_k2.mean())
    assert curve.random_std()[1] == pytest.approx(random_k2.std(ddof=0))
    fig = curve.plot()
    assert fig.to_dict() == knockout_curve_figure(frame, title=fig.layout.title.text, value_name="score").to_dict()
    traces = {trace.name: trace for trace in fig.data}
    upper, lower = traces["random heads: upper"].y, traces["random heads: lower"].y
    assert np.allclose(np.asarray(upper) - np.asarray(lower), 2 * np.concatenate([[0], curve.random_std()]))
    assert np.allclose(traces["top heads"].y, [curve.baseline, *curve.top])
    path = curve.save(tmp_path / "curve.json")
    assert path == tmp_path / "curve.json" and KnockoutCurve.load(path) == curve
    assert isinstance(KnockoutCurve.load(path).random_sets[0][0][0], tuple)


def test_edge_and_mean_curves_resolve_spans_and_means_per_run(model, samples):
    edge = knockout_curve(
        model, samples, RANKING, answer_logprob, ks=[2], seeds=[0], mode="edge", span="needle", progress=False
    )
    by_hand = []
    for sample in samples:
        rows = answer_rows(model, sample)
        with knockout(model, RANKING[:2], "edge", span="needle", sample=sample, queries=rows):
            by_hand.append(answer_logprob(model, sample))
    assert_close(edge.top[0], float(np.mean(by_hand)), short=True)
    mean = knockout_curve(model, samples, RANKING, answer_logprob, ks=[1], seeds=[0], mode="mean", progress=False)
    assert mean.mode == "mean" and mean.top[0] != mean.baseline


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ks": [5]}, HeadIndexError, "ranking holds only 4 heads"),
        ({"ks": [0, 1]}, HeadIndexError, "head counts >= 1"),
        ({"ks": [1], "seeds": []}, ValueError, "at least one seed"),
        ({"ks": [1], "mode": "edge"}, ValueError, "needs span="),
        ({"ks": [1], "positions": "prompt"}, ValueError, "positions must be 'answer' or 'all'; got 'prompt'"),
    ],
)
def test_curve_rejects_bad_settings(model, samples, kwargs, error, message):
    with pytest.raises(error, match=message):
        knockout_curve(model, samples, RANKING, answer_logprob, progress=False, **kwargs)


def test_curve_rejects_a_ranking_with_heads_outside_the_model(model, samples):
    with pytest.raises(HeadIndexError, match=r"within a 2x4 model; got \(3, 0\)"):
        knockout_curve(model, samples, [(3, 0)], answer_logprob, ks=[1], progress=False)


def test_a_baseline_of_zero_on_every_sample_warns_why(model, samples):
    """Issue 16: a teacher-forced score that is 0 even with nothing knocked out gave a silent flat curve."""
    with pytest.warns(UserWarning, match=r"score is 0 on every sample with no head knocked out.*answer prefix"):
        curve = knockout_curve(model, samples, RANKING, lambda m, s: 0.0, ks=[1], seeds=[0], progress=False)
    assert curve.baseline == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        knockout_curve(model, samples, RANKING, lambda m, s: float(s is samples[0]), ks=[1], seeds=[0], progress=False)
