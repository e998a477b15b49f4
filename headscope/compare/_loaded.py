"""``LoadedHeads``: a published head set read back, and the two rules every format shares.

The rules: how a set is cut from a grid of values (:func:`cut`: by rank or by value), and how
query heads map to key/value heads under grouped-query attention (:func:`pool_kv` and
:func:`expand_kv`: query head ``h`` reads KV head ``h // kv_group``, as Hugging Face's
``repeat_kv`` and :class:`~headscope.models.ModelInfo` have it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from headscope._types import Choice
from headscope.errors import ConfigError
from headscope.heads import Head, Heads, HeadSet, as_heads
from headscope.results import Saved

__all__ = ["LoadedHeads", "Pool", "cut", "expand_kv", "pool_kv"]

#: How the query heads of one KV head pool into its value: ``"max"`` (the default), ``"mean"`` or ``"sum"``.
Pool = Choice["max", "mean", "sum"]


@dataclass(frozen=True, eq=False)
class LoadedHeads(Saved):
    """A head set read by :func:`~headscope.compare.load_heads`, with its per-head values when the file has them.

    ``heads`` is the :class:`~headscope.heads.HeadSet` (checked against the model's ``shape``);
    ``ranked`` holds the same heads best first (a QRHead string's own order; otherwise by value).
    ``scores`` is the ``[layer, head]`` grid of values per query head (Wu et al.'s mean score per
    head; DuoAttention's value of each head's KV head), ``None`` for a QRHead string, which lists
    heads only. ``kv_scores`` is DuoAttention's ``[layer, kv_head]`` grid as the file holds it.
    ``format`` names the reader (``"wu"``, ``"headkv"``, ``"duo"``, ``"qrhead"``, ``"headscope"``),
    ``source`` the file or string, and ``rule`` how the set was cut.

    Every function that takes heads takes it (``hs.recall``, ``hs.jaccard``, ``HeadSet`` operations
    through :attr:`heads`), and :func:`~headscope.compare.rank_correlation` reads its ``scores``.

    >>> loaded = LoadedHeads("qrhead", "1-0,0-2", (2, 4), ((1, 0), (0, 2)), None, None, "as listed")
    >>> loaded.heads.labels, loaded.ranked, len(loaded), (0, 2) in loaded
    (('L0H2', 'L1H0'), ((1, 0), (0, 2)), 2, True)
    """

    format: str
    source: str
    shape: tuple[int, int]
    ranked: Heads  # any head forms; kept as a tuple of Head values, best first
    scores: Float[Tensor, "layer head"] | None = None
    kv_scores: Float[Tensor, "layer kv_head"] | None = None
    rule: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranked", tuple(as_heads(self.ranked)))
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        HeadSet(self.ranked, self.shape)  # every head within the model
        if self.scores is not None and tuple(self.scores.shape) != self.shape:
            raise ConfigError(f"scores must be a {self.shape} [layer, head] grid; got {tuple(self.scores.shape)}")

    @property
    def heads(self) -> HeadSet:
        """The set, sorted and checked against :attr:`shape`."""
        return HeadSet(self.ranked, self.shape)

    def __iter__(self) -> Any:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.ranked)

    def __contains__(self, head: object) -> bool:
        return head in self.heads

    def __repr__(self) -> str:
        shown = ", ".join(map(str, self.ranked[:8])) + (", ..." if len(self.ranked) > 8 else "")
        return f"LoadedHeads({self.format}, {self.source!r}, {len(self)} heads [{shown}], {self.rule})"

    def to_frame(self) -> Any:
        """One row per head: layer, head, label, value (the score; NaN without scores), selected."""
        import pandas as pd

        n_layers, n_heads = self.shape
        values = self.scores if self.scores is not None else torch.full(self.shape, float("nan"))
        chosen = set(self.ranked)
        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": head,
                    "label": str(Head(layer, head)),
                    "value": float(values[layer, head]),
                    "selected": (layer, head) in chosen,
                }
                for layer in range(n_layers)
                for head in range(n_heads)
            ]
        )

    def plot(self, title: str | None = None) -> Any:
        """:func:`~headscope.viz.head_map` of the scores (1 for each listed head when there are none)."""
        from headscope.viz import head_map

        grid = self.scores
        if grid is None:
            grid = torch.zeros(self.shape, dtype=torch.float64)
            for layer, head in self.ranked:
                grid[layer, head] = 1.0
        return head_map(grid, title=title or f"{self.format} heads: {self.source}", value_name=self.format)


def cut(
    grid: np.ndarray,
    *,
    top_k: int | None = None,
    threshold: float | None = None,
    fraction: float | None = None,
    inclusive: bool = False,
) -> list[tuple[int, int]]:
    """Cells of a 2-d grid, best first (ties in row-major order; NaN never chosen), by one rule.

    ``top_k``: the ``k`` best cells; ``fraction``: the best ``round(fraction * cells)``; both count
    cells by rank whatever their value (a cache budget has a size). ``threshold``: the cells above
    it (at or above it with ``inclusive=True``, DuoAttention's rule).

    >>> cut(np.array([[0.2, 0.9], [0.5, 0.5]]), top_k=2), cut(np.array([[0.2, 0.9], [0.5, 0.5]]), fraction=0.25)
    ([(0, 1), (1, 0)], [(0, 1)])
    >>> cut(np.array([[0.2, 0.9], [0.5, 0.5]]), threshold=0.5, inclusive=True)
    [(0, 1), (1, 0), (1, 1)]
    """
    given = {
        name: v for name, v in (("top_k", top_k), ("threshold", threshold), ("fraction", fraction)) if v is not None
    }
    if len(given) != 1:
        raise ConfigError(f"cut heads by one of top_k=, threshold= or fraction=; got {sorted(given) or 'none'}")
    cells = sorted(
        ((float(v), (int(i), int(j))) for (i, j), v in np.ndenumerate(grid) if not np.isnan(v)),
        key=lambda item: (-item[0], item[1]),
    )
    if threshold is not None:
        return [c for v, c in cells if (v >= threshold if inclusive else v > threshold)]
    if top_k is not None:
        if top_k < 0:
            raise ConfigError(f"top_k must be >= 0; got {top_k}")
        return [c for _, c in cells[:top_k]]
    if not 0 <= fraction <= 1:
        raise ConfigError(f"fraction must lie in [0, 1]; got {fraction}")
    return [c for _, c in cells[: round(fraction * grid.size)]]


def pool_kv(grid: np.ndarray, kv_group: int, pool: Pool = "max") -> np.ndarray:
    """A ``[layer, head]`` grid pooled over each KV head's ``kv_group`` query heads: ``[layer, kv_head]``.

    ``"max"`` is the default because a KV head must keep its keys whenever any query head reading
    it retrieves: one strong retrieval head needs its whole group's cache, and a mean or sum would
    let a group of several weak heads outrank it (a mean also dilutes it among its neighbours).

    >>> pool_kv(np.array([[0.1, 0.8, 0.3, 0.3]]), 2), pool_kv(np.array([[0.1, 0.8, 0.3, 0.3]]), 2, "sum")
    (array([[0.8, 0.3]]), array([[0.9, 0.6]]))
    """
    if pool not in ("max", "mean", "sum"):
        raise ConfigError(f"pool must be 'max', 'mean' or 'sum'; got {pool!r}")
    n_layers, n_heads = grid.shape
    if kv_group < 1 or n_heads % kv_group:
        raise ConfigError(f"{n_heads} query heads do not split into KV groups of {kv_group}")
    grouped = grid.reshape(n_layers, n_heads // kv_group, kv_group)
    return {"max": grouped.max, "mean": grouped.mean, "sum": grouped.sum}[pool](axis=-1)


def expand_kv(kv_grid: np.ndarray, kv_group: int) -> np.ndarray:
    """A ``[layer, kv_head]`` grid as ``[layer, head]``: each query head gets its KV head's value.

    >>> expand_kv(np.array([[0.0, 1.0]]), 2)
    array([[0., 0., 1., 1.]])
    """
    return np.repeat(kv_grid, kv_group, axis=1)
