"""Write head sets in DuoAttention's and QRHead's formats, for their code to read.

Both take scores (:class:`~headscope.retrieval.RetrievalScores`, a
:class:`~headscope.compare.LoadedHeads` with scores, or a ``[layer, head]`` tensor or array) or
heads (a :class:`~headscope.heads.HeadSet`, a :class:`~headscope.compare.LoadedHeads` without
scores, or any collection of heads). ``top_k=``, ``threshold=`` or ``fraction=`` cut a set from
scores; without one, scores are written as values (DuoAttention) or refused (QRHead lists heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from headscope.compare._formats import _shape
from headscope.compare._loaded import LoadedHeads, Pool, cut, pool_kv
from headscope.compare._sets import as_grid
from headscope.errors import ConfigError
from headscope.heads import HeadSet, as_heads
from headscope.retrieval._scores import RetrievalScores

__all__ = ["qrhead_string", "write_duo_tsv"]


def write_duo_tsv(
    source: Any,
    model: Any,
    path: str | Path,
    *,
    pool: Pool = "max",
    top_k: int | None = None,
    threshold: float | None = None,
    fraction: float | None = None,
) -> Path:
    """Write DuoAttention's ``full_attention_heads.tsv``: one row per layer, one value per KV head.

    DuoAttention decides per KV head, so query-head scores are pooled over each KV head's group
    (``pool="max"`` by default: a KV head keeps its full cache when any query head reading it
    retrieves; see :func:`~headscope.compare._loaded.pool_kv`). Without a cut the pooled scores are
    the values (they must lie in [0, 1]); with ``top_k=`` (KV heads), ``fraction=`` (of KV heads)
    or ``threshold=`` (pooled score at or above it) the chosen KV heads get 1 and the rest 0. Heads
    give 1 to every KV head serving one of them. Values are written as ``np.savetxt`` writes them
    (``%.18e``), so :func:`~headscope.compare.load_heads` reads them back exactly.

    >>> import tempfile, pathlib
    >>> from headscope import load_model, model_info
    >>> from headscope.compare import load_heads
    >>> info = model_info(load_model("tiny-llama"))   # 2 layers, 4 query heads on 2 KV heads
    >>> path = write_duo_tsv(["L0H1", "L1H3"], info, pathlib.Path(tempfile.mkdtemp()) / "heads.tsv")
    >>> path.read_text().splitlines()[0].split("\\t")
    ['1.000000000000000000e+00', '0.000000000000000000e+00']
    >>> load_heads(path, info).heads.labels   # each KV head's whole group
    ('L0H0', 'L0H1', 'L1H2', 'L1H3')
    """
    shape = _shape(model)
    if shape is None or shape[2] is None:
        raise ConfigError(
            "write_duo_tsv needs the model's KV heads: pass the model, its ModelInfo or (n_layers, n_heads, n_kv_heads)"
        )
    n_layers, n_heads, n_kv = shape
    rules = dict(top_k=top_k, threshold=threshold, fraction=fraction)
    grid = _scores_of(source)
    if grid is None:
        if any(v is not None for v in rules.values()):
            raise ConfigError("top_k=, threshold= and fraction= cut sets from scores; heads are written as they are")
        member = np.zeros((n_layers, n_heads))
        for layer, head in HeadSet(tuple(as_heads(source)), (n_layers, n_heads)):
            member[layer, head] = 1.0
        kv = pool_kv(member, n_heads // n_kv, "max")
    else:
        if grid.shape != (n_layers, n_heads):
            raise ConfigError(f"scores are {grid.shape[0]}x{grid.shape[1]}; the model is {n_layers}x{n_heads}")
        if np.isnan(grid).any():
            raise ConfigError(
                "scores hold NaN (heads never scored); DuoAttention's file needs a value for every KV head"
            )
        kv = pool_kv(grid, n_heads // n_kv, pool)
        if any(v is not None for v in rules.values()):
            chosen = cut(kv, **rules, inclusive=True)
            kv = np.zeros_like(kv)
            for cell in chosen:
                kv[cell] = 1.0
        elif kv.min() < 0 or kv.max() > 1:
            raise ConfigError(
                f"DuoAttention's values lie in [0, 1]; the {pool}-pooled scores span [{kv.min():g}, {kv.max():g}]: "
                "cut a set with top_k=, threshold= or fraction= to write 0/1"
            )
    path = Path(path)
    path.write_text("".join("\t".join(f"{v:.18e}" for v in row) + "\n" for row in kv))
    return path


def qrhead_string(
    source: Any, *, top_k: int | None = None, threshold: float | None = None, fraction: float | None = None
) -> str:
    """QRHead's ``attn_head_set``: ``"layer-head"`` pairs joined by commas, best first.

    Scores need a cut (``top_k=``, ``threshold=``: above it, or ``fraction=`` of all heads; QRHead
    ships its top 16). Heads are written in their order (a :class:`~headscope.heads.HeadSet` sorted,
    a :class:`~headscope.compare.LoadedHeads` best first).

    >>> import torch
    >>> qrhead_string(torch.tensor([[0.1, 0.9], [0.5, 0.0]]), top_k=2), qrhead_string(["L1H0", (0, 1)])
    ('0-1,1-0', '1-0,0-1')
    """
    rules = dict(top_k=top_k, threshold=threshold, fraction=fraction)
    grid = _scores_of(source)
    if any(v is not None for v in rules.values()):
        if grid is None:
            raise ConfigError("top_k=, threshold= and fraction= cut sets from scores; these heads have none")
        heads = cut(grid, **rules)
    elif isinstance(source, LoadedHeads):
        heads = list(source.ranked)
    elif grid is not None:
        raise ConfigError(
            "QRHead's string lists heads, not scores: cut them with top_k= (QRHead uses 16), threshold= or fraction="
        )
    else:
        heads = list(dict.fromkeys(as_heads(source)))
    return ",".join(f"{layer}-{head}" for layer, head in heads)


def _scores_of(source: Any) -> np.ndarray | None:
    """The ``[layer, head]`` scores of ``source``, or ``None`` when it holds heads only."""
    if isinstance(source, LoadedHeads) and source.scores is None:
        return None
    if isinstance(source, (RetrievalScores, LoadedHeads, torch.Tensor, np.ndarray)):
        return as_grid(source)
    return None
