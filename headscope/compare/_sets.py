"""Head sets: overlap measures, and head sets cut from per-head score maps."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from headscope._types import Grid
from headscope.compare._loaded import LoadedHeads
from headscope.errors import ConfigError, HeadIndexError
from headscope.heads import Head, Heads, HeadSet, as_heads
from headscope.retrieval._scores import RetrievalScores

__all__ = ["as_grid", "head_set", "jaccard", "recall"]

#: A [layer, head] score map (its shape is checked here), or a result holding one.
Scores = Grid | RetrievalScores | LoadedHeads


def recall(reference: Heads, candidate: Heads) -> float:
    """``|reference ∩ candidate| / |reference|``: how many reference heads the candidate set recovers.

    Zhao et al. measure synthetic-data heads against the real-data model's heads this way.
    :meth:`HeadSet.recall <headscope.heads.HeadSet.recall>` of the reference, for any head forms.

    >>> recall([(0, 1), (2, 3), (4, 5), (6, 7)], ["L0H1", "L2H3", "L9H9"])
    0.5
    """
    return _set(reference).recall(_set(candidate))


def jaccard(a: Heads, b: Heads) -> float:
    """``|a ∩ b| / |a ∪ b|``, symmetric overlap of two head sets (:meth:`~headscope.heads.HeadSet.jaccard`).

    >>> jaccard([(0, 1), (2, 3)], [(2, 3), (4, 5)])
    0.3333333333333333
    """
    return _set(a).jaccard(_set(b))


def _set(heads: Heads) -> HeadSet:
    if isinstance(heads, LoadedHeads):
        return heads.heads
    return heads if isinstance(heads, HeadSet) else HeadSet(tuple(as_heads(heads)))


def as_grid(scores: Any, name: str = "scores") -> np.ndarray:
    """A per-head score map as a float ``[layer, head]`` array.

    Reads tensors, arrays, nested lists, :class:`~headscope.retrieval.RetrievalScores` (their mean
    scores) and :class:`~headscope.compare.LoadedHeads` (their scores; a QRHead string has none).
    """
    if isinstance(scores, LoadedHeads):
        if scores.scores is None:
            raise ConfigError(
                f"{name} is a {scores.format} head list ({scores.source}) without scores; "
                "compare it as a set (hs.recall, hs.jaccard) or give a scored file"
            )
        scores = scores.scores
    elif isinstance(scores, RetrievalScores):
        scores = scores.scores
    grid = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, float)
    if grid.ndim != 2 or grid.size == 0:
        raise ConfigError(f"{name} must be a non-empty [layer, head] grid; got shape {grid.shape}")
    return grid


def head_set(scores: Scores, *, top_k: int | None = None, threshold: float | None = None) -> list[Head]:
    """Heads of a ``[layer, head]`` score map scoring above ``threshold`` (default 0), best first, at most ``top_k``.

    A head must score strictly above the threshold to enter a set: with the default of 0, a head
    that never scored is never picked, so two maps with few positive heads do not share a tail of
    zero-score heads. When fewer than ``top_k`` heads qualify, the set is smaller (its length says
    how small) and a warning says so. Ties are broken by (layer, head); NaN scores (heads never
    scored) are never selected.

    >>> grid = torch.tensor([[0.1, 0.9], [0.5, float("nan")]])
    >>> head_set(grid, top_k=2), head_set(grid, threshold=0.3)
    ([(0, 1), (1, 0)], [(0, 1), (1, 0)])
    >>> import warnings
    >>> with warnings.catch_warnings(record=True):
    ...     head_set(torch.tensor([[0.0, 0.4], [0.0, 0.0]]), top_k=3)
    [(0, 1)]
    """
    if top_k is None and threshold is None:
        raise ConfigError("head_set needs top_k=, threshold= or both; got neither (try top_k=20)")
    if top_k is not None and top_k < 1:
        raise HeadIndexError(f"top_k must be at least 1; got {top_k}")
    cut = 0.0 if threshold is None else float(threshold)
    grid = as_grid(scores)
    order = sorted(
        ((float(v), Head(int(layer), int(head))) for (layer, head), v in np.ndenumerate(grid) if v > cut),
        key=lambda item: (-item[0], item[1]),
    )
    heads = [h for _, h in order]
    if top_k is not None and len(heads) < top_k:
        warnings.warn(
            f"only {len(heads)} heads score above {cut:g}, fewer than top_k={top_k}: the head set has "
            f"{len(heads)} heads (heads scoring {cut:g} or less, or NaN, are never picked to fill it)",
            UserWarning,
            stacklevel=2,
        )
    return heads if top_k is None else heads[:top_k]
