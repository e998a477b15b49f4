"""Head sets: overlap measures, and head sets cut from per-head score maps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from headscope.errors import HeadIndexError
from headscope.heads import Head, parse_head

__all__ = ["as_grid", "head_set", "jaccard", "recall"]

Scores = Float[torch.Tensor, "layer head"] | Float[np.ndarray, "layer head"]


def _heads(heads: Iterable[Head | str], name: str) -> set[Head]:
    pairs = set()
    for h in heads:
        if isinstance(h, str):
            pairs.add(parse_head(h))
            continue
        try:
            layer, head = h
            pairs.add((int(layer), int(head)))
        except (TypeError, ValueError):
            raise HeadIndexError(f"{name} must hold (layer, head) pairs or 'L3H7' labels; got {h!r}") from None
    return pairs


def recall(reference: Iterable[Head | str], candidate: Iterable[Head | str]) -> float:
    """``|reference ∩ candidate| / |reference|``: how many reference heads the candidate set recovers.

    Zhao et al. measure synthetic-data heads against the real-data model's heads this way.

    >>> recall([(0, 1), (2, 3), (4, 5), (6, 7)], ["L0H1", "L2H3", "L9H9"])
    0.5
    """
    ref = _heads(reference, "reference")
    if not ref:
        raise HeadIndexError("recall needs a non-empty reference set (it divides by its size)")
    return len(ref & _heads(candidate, "candidate")) / len(ref)


def jaccard(a: Iterable[Head | str], b: Iterable[Head | str]) -> float:
    """``|a ∩ b| / |a ∪ b|``, symmetric overlap of two head sets.

    >>> jaccard([(0, 1), (2, 3)], [(2, 3), (4, 5)])
    0.3333333333333333
    """
    sa, sb = _heads(a, "a"), _heads(b, "b")
    if not sa | sb:
        raise HeadIndexError("jaccard of two empty head sets is undefined; give at least one head")
    return len(sa & sb) / len(sa | sb)


def as_grid(scores: Any, name: str = "scores") -> np.ndarray:
    """A per-head score map as a float ``[layer, head]`` array (tensors, arrays and nested lists)."""
    grid = scores.detach().cpu().double().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores, float)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{name} must be a non-empty [layer, head] grid; got shape {grid.shape}")
    return grid


def head_set(scores: Scores, *, top_k: int | None = None, threshold: float | None = None) -> list[Head]:
    """Heads of a ``[layer, head]`` score map, best first: the ``top_k`` highest, those above ``threshold``, or both.

    With both, the set is the top ``top_k`` among heads scoring above ``threshold``. Ties are broken by
    (layer, head); NaN scores (heads never scored) are never selected.

    >>> grid = torch.tensor([[0.1, 0.9], [0.5, float("nan")]])
    >>> head_set(grid, top_k=2), head_set(grid, threshold=0.3)
    ([(0, 1), (1, 0)], [(0, 1), (1, 0)])
    """
    if top_k is None and threshold is None:
        raise ValueError("head_set needs top_k=, threshold= or both")
    if top_k is not None and top_k < 1:
        raise HeadIndexError(f"top_k must be at least 1; got {top_k}")
    grid = as_grid(scores)
    order = sorted(
        ((float(v), (layer, head)) for (layer, head), v in np.ndenumerate(grid) if not np.isnan(v)),
        key=lambda item: (-item[0], item[1]),
    )
    if top_k is not None and threshold is None and top_k > len(order):
        raise HeadIndexError(f"top_k={top_k} but only {len(order)} heads have a score")
    heads = [(int(h[0]), int(h[1])) for v, h in order if threshold is None or v > threshold]
    return heads if top_k is None else heads[:top_k]
