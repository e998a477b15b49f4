"""Every result class saves through one format: JSON read back equal, with the class checked."""

from __future__ import annotations

import json

import pytest
import torch

import headscope as hs
from headscope.ablation import Knockout, KnockoutCurve
from headscope.compare import Correlation, RankAgreement
from headscope.heads import Head
from headscope.patching import PatchingComparison, PatchingResult
from headscope.pipeline._result import VariantResult
from headscope.retrieval import AttentionRows, RetrievalScores
from headscope.training import FinetuneResult


def _examples() -> list:
    grid = torch.tensor([[0.1, 0.0, 0.7], [0.3, 0.9, 0.2]])
    return [
        hs.correlate([0.1, 0.4, 0.5, 0.9], [1.0, 2.0, 2.5, 3.0], labels=["a", "b", "c", "d"], n_boot=50),
        hs.rank_correlation(grid, grid.flip(0), top_k=2),
        PatchingResult(torch.randn(2, 3, dtype=torch.float64), metric="logit_diff", baseline=0.5, settings={"k": [1]}),
        PatchingComparison(
            "logprob", {"target": 0.1, "source": 0.9, "shared": 0.5}, {"shared": [Head(1, 2), Head(0, 0)]}
        ),
        FinetuneResult((2.0, 1.5), (1e-3, 1e-3), ({"step": 0, "acc": 0.2},), ("blocks.0.attn.W_Q",)),
        Knockout([(1, 2), (0, 3)], "mean", queries=(4, 5), means=[[0.1, 1 / 3], [2.0, -0.5]]),
        Knockout([(0, 1)], "edge", span="needle"),
        KnockoutCurve(
            ks=(1, 2),
            top=(0.5, 0.25),
            random=((0.9, 0.8), (1.0, 0.7)),
            baseline=1.0,
            seeds=(0, 1),
            ranking=(Head(1, 0), Head(0, 2)),
            random_sets=(((Head(0, 0),), (Head(1, 1), Head(0, 1))), ((Head(1, 2),), (Head(0, 0), Head(1, 3)))),
            exclude_top=2,
            mode="uniform",
            n_samples=3,
            model="tiny",
            positions="answer",
        ),
        RetrievalScores(
            2 * grid.double(), 2, 3, "m", "teacher_forced", {"rule": "rouge"}, torch.stack([grid, grid]).double()
        ),
        RetrievalScores(torch.zeros(2, 3), 0, 4, "m", "generation", {}, torch.zeros(0, 2, 3), "mass"),
        AttentionRows(
            torch.tensor([[[1.0, 0.0], [0.25, 0.75]]]),
            (0, 7),
            ("<s>", " é"),
            (Head(1, 0),),
            (7,),
            torch.tensor([[3]]),
            torch.tensor([[0.6]]),
            ((" key",),),
            (5, 6),
            9,
            meta={"depth": 0.5},
        ),
        VariantResult("real", "real", "real", 0.5, -1.25, (Head(0, 1), Head(1, 2)), None, 1.0),
    ]


@pytest.mark.parametrize("result", _examples(), ids=lambda r: type(r).__name__)
def test_save_returns_the_path_and_load_reads_back_equal(result, tmp_path) -> None:
    path = result.save(tmp_path / "r.json")
    assert path == tmp_path / "r.json"
    assert json.loads(path.read_text())["headscope"] == type(result).__name__
    back = type(result).load(path)
    assert back.to_dict() == result.to_dict()  # tensors compared with dtype, shape and every value
    if type(result).__eq__ is not object.__eq__:
        assert back == result
    if isinstance(result, KnockoutCurve):
        assert all(type(h) is hs.Head for per_seed in back.random_sets for heads in per_seed for h in heads)
    if isinstance(result, RetrievalScores) and result.per_sample is not None:
        assert back.per_sample.shape == result.per_sample.shape and back.hit_sums.dtype == torch.float64
    if isinstance(result, PatchingResult):
        assert back.values.dtype == torch.float64


def test_loading_a_file_of_another_class_names_both(tmp_path) -> None:
    path = _examples()[0].save(tmp_path / "c.json")
    with pytest.raises(hs.ConfigError, match="holds a Correlation, not a RankAgreement"):
        RankAgreement.load(path)
    (tmp_path / "other.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(hs.ConfigError, match="not written by headscope"):
        Correlation.load(tmp_path / "other.json")


def test_heads_come_back_as_head_values(tmp_path) -> None:
    from dataclasses import dataclass

    from headscope.results import Saved

    @dataclass(frozen=True)
    class Picked(Saved):
        heads: tuple[hs.Head, ...]

    back = Picked.load(Picked((hs.Head(1, 0), hs.Head(2, 3))).save(tmp_path / "p.json"))
    assert back.heads == ((1, 0), (2, 3)) and [str(h) for h in back.heads] == ["L1H0", "L2H3"]


def test_retrieval_scores_files_in_the_first_format_still_load(tmp_path) -> None:
    """``scores.json`` as detection wrote it before results shared one format (what ``knockout --scores`` reads)."""
    old = {
        "format": "headscope.RetrievalScores",
        "version": 1,
        "model": "m",
        "mode": "teacher_forced",
        "score": "copy",
        "settings": {"span": "needle"},
        "n_counted": 2,
        "n_samples": 3,
        "hit_sums": [[0.5, 0.0], [1.5, 0.25]],
        "per_sample": [[[0.5, 0.0], [1.0, 0.25]], [[0.0, 0.0], [0.5, 0.0]]],
    }
    (tmp_path / "scores.json").write_text(json.dumps(old))
    scores = RetrievalScores.load(tmp_path / "scores.json")
    assert scores.scores.tolist() == [[0.25, 0.0], [0.75, 0.125]] and scores.n_samples == 3
    assert scores.per_sample.shape == (2, 2, 2) and scores.settings == {"span": "needle"}
    del old["score"], old["per_sample"]
    (tmp_path / "older.json").write_text(json.dumps({**old, "per_sample": None}))
    assert RetrievalScores.load(tmp_path / "older.json").score == "copy"
    (tmp_path / "wu.json").write_text(json.dumps({"0-0": [0.5]}))
    with pytest.raises(hs.ConfigError, match=r"not a saved RetrievalScores.*from_wu_json"):
        RetrievalScores.load(tmp_path / "wu.json")
