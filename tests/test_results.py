"""Every result class saves through one format: JSON read back equal, with the class checked."""

from __future__ import annotations

import json

import pytest
import torch

import headscope as hs
from headscope.compare import Correlation, RankAgreement
from headscope.patching import PatchingComparison, PatchingResult
from headscope.training import FinetuneResult


def _examples() -> list:
    grid = torch.tensor([[0.1, 0.0, 0.7], [0.3, 0.9, 0.2]])
    return [
        hs.correlate([0.1, 0.4, 0.5, 0.9], [1.0, 2.0, 2.5, 3.0], labels=["a", "b", "c", "d"], n_boot=50),
        hs.rank_correlation(grid, grid.flip(0), top_k=2),
        PatchingResult(torch.randn(2, 3, dtype=torch.float64), metric="logit_diff", baseline=0.5, settings={"k": [1]}),
        PatchingComparison("logprob", {"target": 0.1, "source": 0.9, "shared": 0.5}, {"shared": [(1, 2), (0, 0)]}),
        FinetuneResult((2.0, 1.5), (1e-3, 1e-3), ({"step": 0, "acc": 0.2},), ("blocks.0.attn.W_Q",)),
    ]


@pytest.mark.parametrize("result", _examples(), ids=lambda r: type(r).__name__)
def test_save_returns_the_path_and_load_reads_back_equal(result, tmp_path) -> None:
    path = result.save(tmp_path / "r.json")
    assert path == tmp_path / "r.json"
    assert json.loads(path.read_text())["headscope"] == type(result).__name__
    back = type(result).load(path)
    assert back == result
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
