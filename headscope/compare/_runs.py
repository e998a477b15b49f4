"""How much detections on different sample sets agree: pairwise Jaccard of top-k and stable sets.

A bootstrap (:func:`~headscope.retrieval.stability`) resamples the samples of one detection; a
fresh sample set (another needle seed) also redraws the needles and haystacks. :func:`run_overlap`
takes one :class:`~headscope.retrieval.Stability` per run and reports, for each pair of runs, the
Jaccard overlap of their top ``k`` and of their stable sets, and the heads common to every run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope._types import Choice
from headscope.errors import ConfigError, ModelMismatchError
from headscope.heads import Head, as_heads
from headscope.results import Saved

if TYPE_CHECKING:
    import pandas as pd

    from headscope.retrieval import Stability

__all__ = ["RunOverlap", "run_overlap"]

Which = Choice["top", "stable"]


@dataclass(frozen=True)
class RunOverlap(Saved):
    """The top-``k`` set and the stable set of each of several runs, and how they overlap.

    ``tops[i]`` is run ``labels[i]``'s top ``top_k`` (heads scoring above 0, best first);
    ``stables[i]`` its heads in the top ``k`` of at least ``threshold`` of its bootstrap resamples.
    :meth:`jaccard` gives the run x run Jaccard matrix of either (NaN where both sets are empty),
    :meth:`common` the heads in every run's set.
    """

    labels: tuple[str, ...]
    top_k: int
    threshold: float
    tops: tuple[tuple[Head, ...], ...]
    stables: tuple[tuple[Head, ...], ...]

    def __post_init__(self) -> None:
        for name in ("tops", "stables"):
            object.__setattr__(self, name, tuple(tuple(as_heads(s)) for s in getattr(self, name)))
        if not len(self.labels) == len(self.tops) == len(self.stables):
            raise ConfigError(
                f"need one top set and one stable set per run; got {len(self.labels)} labels, "
                f"{len(self.tops)} top sets and {len(self.stables)} stable sets"
            )

    def sets(self, which: Which = "top") -> tuple[tuple[Head, ...], ...]:
        """Each run's ``"top"`` (top-k) or ``"stable"`` set."""
        if which not in ("top", "stable"):
            raise ConfigError(f"which must be 'top' or 'stable'; got {which!r}")
        return self.tops if which == "top" else self.stables

    def jaccard(self, which: Which = "top") -> np.ndarray:
        """``[run, run]`` Jaccard overlap ``|a ∩ b| / |a ∪ b|`` of the runs' sets (NaN where both are empty)."""
        sets = [set(s) for s in self.sets(which)]
        return np.array([[len(a & b) / len(a | b) if a | b else np.nan for b in sets] for a in sets])

    def common(self, which: Which = "top") -> tuple[Head, ...]:
        """The heads in every run's set, in (layer, head) order."""
        return tuple(sorted(set.intersection(*(set(s) for s in self.sets(which)))))

    def to_frame(self) -> pd.DataFrame:
        """One row per pair of runs: a, b, jaccard_top, jaccard_stable and the sizes of the four sets."""
        import pandas as pd

        top, stable = self.jaccard("top"), self.jaccard("stable")
        return pd.DataFrame(
            [
                {
                    "a": self.labels[i],
                    "b": self.labels[j],
                    "jaccard_top": top[i, j],
                    "jaccard_stable": stable[i, j],
                    "n_top_a": len(self.tops[i]),
                    "n_top_b": len(self.tops[j]),
                    "n_stable_a": len(self.stables[i]),
                    "n_stable_b": len(self.stables[j]),
                }
                for i, j in combinations(range(len(self.labels)), 2)
            ]
        )

    def plot(self, title: str = "") -> Any:
        """:func:`~headscope.viz.overlap_figure`: the Jaccard matrices of the top-k sets and of the stable sets."""
        from headscope.viz import overlap_figure

        return overlap_figure(
            list(self.labels),
            {f"top {self.top_k}": self.jaccard("top"), f"stable (≥ {self.threshold:.0%})": self.jaccard("stable")},
            title=title or f"overlap of {len(self.labels)} runs",
        )


def run_overlap(runs: Mapping[str, Stability], *, threshold: float = 0.9) -> RunOverlap:
    """Compare several detections (e.g. one per needle seed) by their top-k and stable heads.

    ``runs`` maps a label (``"seed 1"``) to each run's :func:`~headscope.retrieval.stability`; all
    must share one model shape and one ``top_k``. A run's stable set is
    :meth:`Stability.stable(threshold) <headscope.retrieval.Stability.stable>`.

    >>> import torch
    >>> from headscope.retrieval import RetrievalScores, stability
    >>> def run(*rows):
    ...     per = torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 1, 3)
    ...     return stability(RetrievalScores(per.sum(0), len(rows), len(rows), "m", "g", per_sample=per), top_k=2)
    >>> overlap = run_overlap({"seed 0": run([1, 1, 0], [1, 1, 0]), "seed 1": run([1, 0, 1], [1, 0, 1])})
    >>> overlap.jaccard("top").round(3).tolist(), [str(h) for h in overlap.common("stable")]
    ([[1.0, 0.333], [0.333, 1.0]], ['L0H0'])
    """
    if not isinstance(runs, Mapping) or len(runs) < 2:
        raise ConfigError(
            f"run_overlap compares at least 2 runs, given as a mapping from label to Stability; got {runs!r:.80}"
        )
    shapes = {label: r.shape for label, r in runs.items()}
    if len(set(shapes.values())) > 1:
        raise ModelMismatchError(f"runs must come from models of one shape (layers x heads); got {shapes}")
    ks = {label: r.top_k for label, r in runs.items()}
    if len(set(ks.values())) > 1:
        raise ConfigError(f"runs must be bootstrapped with one top_k; got {ks}")
    first = next(iter(runs.values()))
    return RunOverlap(
        labels=tuple(str(label) for label in runs),
        top_k=first.top_k,
        threshold=threshold,
        tops=tuple(r.top for r in runs.values()),
        stables=tuple(tuple(r.stable(threshold)) for r in runs.values()),
    )
