"""Does head-set recall predict downstream score? A correlation with a bootstrap confidence interval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope._types import Choice
from headscope.errors import ConfigError
from headscope.results import Saved

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Correlation", "correlate"]

Method = Choice["spearman", "pearson"]


@dataclass(frozen=True)
class Correlation(Saved):
    """A correlation between paired values ``x`` and ``y`` (e.g. head-set recall and task score per model).

    ``value`` and ``p_value`` (two-sided, against no correlation) come from ``scipy.stats``;
    ``ci_low`` / ``ci_high`` is the percentile bootstrap interval at ``confidence`` from ``n_boot``
    resamples of the pairs (resamples whose ``x`` or ``y`` is constant are skipped).
    """

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    method: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    labels: tuple[str, ...]
    confidence: float = 0.95
    n_boot: int = 1000
    seed: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per point: label, x, y."""
        import pandas as pd

        return pd.DataFrame({"label": list(self.labels), "x": list(self.x), "y": list(self.y)})

    def plot(self, title: str = "", x_title: str = "recall", y_title: str = "score") -> Any:
        """Scatter of the points with a least-squares line, by :func:`~headscope.viz.correlation_figure`."""
        from headscope.viz import correlation_figure

        return correlation_figure(self, title=title, x_title=x_title, y_title=y_title)


def _statistic(x: np.ndarray, y: np.ndarray, method: str) -> np.ndarray:
    """Row-wise correlation of ``[resample, n]`` arrays (NaN where a row is constant)."""
    from scipy import stats

    if method == "spearman":
        x, y = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    denom = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (x * y).sum(-1) / np.where(denom > 0, denom, 1.0), np.nan)


def correlate(
    x: Sequence[float] | np.ndarray | Mapping[str, float],
    y: Sequence[float] | np.ndarray | Mapping[str, float],
    *,
    method: Method = "spearman",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    labels: Sequence[str] | None = None,
) -> Correlation:
    """Correlate paired values, e.g. each variant's head-set recall with its downstream task score.

    ``x`` and ``y`` are equal-length sequences, or mappings from a label (a model variant) to its
    value, paired by key. Zhao et al. report Spearman across the fine-tuned variants of a task.

    >>> r = correlate([0.2, 0.4, 0.5, 0.7, 0.9], [31.0, 35.0, 33.0, 40.0, 44.0], n_boot=200)
    >>> round(r.value, 2), r.n, r.ci_low <= r.value <= r.ci_high
    (0.9, 5, True)
    """
    from scipy import stats

    if method not in ("spearman", "pearson"):
        raise ConfigError(f"method must be 'spearman' or 'pearson'; got {method!r}")
    if isinstance(x, Mapping) != isinstance(y, Mapping):
        raise ConfigError("give x and y both as sequences or both as mappings from label to value")
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        if set(x) != set(y):
            raise ConfigError(
                f"x and y must have the same labels; only in x: {sorted(set(x) - set(y))}, "
                f"only in y: {sorted(set(y) - set(x))}"
            )
        labels = list(x)
        x, y = [x[k] for k in labels], [y[k] for k in labels]
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ConfigError(f"x and y must be 1-d and of equal length; got shapes {xs.shape} and {ys.shape}")
    if len(xs) < 3:
        raise ConfigError(f"a correlation needs at least 3 points; got {len(xs)}")
    if np.isnan(xs).any() or np.isnan(ys).any():
        raise ConfigError("x and y must not contain NaN")
    for name, values in (("x", xs), ("y", ys)):
        if np.ptp(values) == 0:
            raise ConfigError(f"{name} is constant ({values[0]}), so no correlation is defined")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1); got {confidence}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be at least 1; got {n_boot}")
    labels = [str(i) for i in range(len(xs))] if labels is None else [str(label) for label in labels]
    if len(labels) != len(xs):
        raise ConfigError(f"got {len(labels)} labels for {len(xs)} points")
    result = stats.spearmanr(xs, ys) if method == "spearman" else stats.pearsonr(xs, ys)
    idx = np.random.default_rng(seed).integers(0, len(xs), size=(n_boot, len(xs)))
    boot = _statistic(xs[idx], ys[idx], method)
    boot = boot[~np.isnan(boot)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    return Correlation(
        value=float(result.statistic),
        ci_low=float(low),
        ci_high=float(high),
        p_value=float(result.pvalue),
        n=len(xs),
        method=method,
        x=tuple(float(v) for v in xs),
        y=tuple(float(v) for v in ys),
        labels=tuple(labels),
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )
