"""Do two per-head score maps rank heads alike? Spearman over all heads, and top-k overlap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.compare._sets import Scores, as_grid, head_set
from headscope.errors import ConfigError, ModelMismatchError
from headscope.heads import Head, as_heads
from headscope.results import Saved

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["RankAgreement", "rank_correlation"]


@dataclass(frozen=True)
class RankAgreement(Saved):
    """How alike two ``[layer, head]`` score maps rank the heads.

    ``spearman`` and ``p_value`` come from ``scipy.stats.spearmanr`` over the ``n_heads`` heads scored
    in both maps (average ranks for ties). ``top_a`` and ``top_b`` are each map's
    :func:`~headscope.compare.head_set` of ``top_k``: only heads scoring above 0, so either may hold
    fewer than ``top_k`` heads (``sizes``). ``overlap`` is ``|top_a ∩ top_b| / max(|top_a|, |top_b|)``
    (``top_k`` when both sets are full; NaN when both are empty).
    """

    spearman: float
    p_value: float
    n_heads: int
    top_k: int
    overlap: float
    top_a: tuple[Head, ...]
    top_b: tuple[Head, ...]
    scores_a: tuple[tuple[float, ...], ...]
    scores_b: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:  # heads as Head values, however they were given (or loaded)
        object.__setattr__(self, "top_a", tuple(as_heads(self.top_a)))
        object.__setattr__(self, "top_b", tuple(as_heads(self.top_b)))

    @property
    def sizes(self) -> tuple[int, int]:
        """``(len(top_a), len(top_b))``: below ``top_k`` when a map has fewer positive heads."""
        return len(self.top_a), len(self.top_b)

    def to_frame(self) -> pd.DataFrame:
        """One row per head: layer, head, label, score_a, score_b, and whether it is in each top-k."""
        import pandas as pd

        a, b = np.asarray(self.scores_a), np.asarray(self.scores_b)
        top_a, top_b = set(self.top_a), set(self.top_b)
        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "head": head,
                    "label": str(Head(layer, head)),
                    "score_a": a[layer, head],
                    "score_b": b[layer, head],
                    "top_a": (layer, head) in top_a,
                    "top_b": (layer, head) in top_b,
                }
                for layer, head in np.ndindex(a.shape)
            ]
        )

    def plot(self, title: str = "") -> Any:
        """Scatter of the two scores per head, top-k heads highlighted: :func:`~headscope.viz.rank_scatter`."""
        from headscope.viz import rank_scatter

        return rank_scatter(
            self.to_frame(), title=title or f"Spearman {self.spearman:.3f}, top-{self.top_k} overlap {self.overlap:.2f}"
        )


def rank_correlation(scores_a: Scores, scores_b: Scores, *, top_k: int = 20) -> RankAgreement:
    """Spearman correlation of two ``[layer, head]`` score maps over all heads, and their top-``k`` overlap.

    Heads with a NaN score in either map are left out of the correlation. The top-``k`` sets hold
    only heads scoring above 0 (see :class:`RankAgreement`).

    >>> import torch
    >>> a = torch.tensor([[0.9, 0.1, 0.3], [0.0, 0.5, 0.2]])
    >>> agreement = rank_correlation(a, 2 * a + 1, top_k=2)
    >>> round(agreement.spearman, 6), agreement.overlap
    (1.0, 1.0)
    """
    from scipy import stats

    a, b = as_grid(scores_a, "scores_a"), as_grid(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ModelMismatchError(
            f"score maps must come from models of one shape (layers x heads); "
            f"got {a.shape[0]}x{a.shape[1]} and {b.shape[0]}x{b.shape[1]}"
        )
    both = ~(np.isnan(a) | np.isnan(b))
    if both.sum() < 3:
        raise ConfigError(f"a rank correlation needs at least 3 heads scored in both maps; got {int(both.sum())}")
    result = stats.spearmanr(a[both], b[both])
    top_a, top_b = head_set(a, top_k=top_k), head_set(b, top_k=top_k)
    larger = max(len(top_a), len(top_b))
    return RankAgreement(
        spearman=float(result.statistic),
        p_value=float(result.pvalue),
        n_heads=int(both.sum()),
        top_k=top_k,
        overlap=len(set(top_a) & set(top_b)) / larger if larger else float("nan"),
        top_a=tuple(top_a),
        top_b=tuple(top_b),
        scores_a=tuple(tuple(float(x) for x in row) for row in a),
        scores_b=tuple(tuple(float(x) for x in row) for row in b),
    )
