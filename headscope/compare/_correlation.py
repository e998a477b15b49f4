"""Does head-set recall predict downstream score? A correlation with a permutation p-value and bootstrap intervals.

Two things make a correlation across a handful of fine-tuned variants weaker than it looks, and
:func:`correlate` reports both. **Few points**: the p-value is a permutation p-value, exact up to
8 points (see :mod:`headscope.compare._permutation`), so four points in the same order give
p = 1/12, not scipy's asymptotic 0.0. **Noisy points**: each variant's score is a mean over a few
questions; ``y_items`` gives those per-question values and a second bootstrap resamples them
within each variant (x held fixed) and recomputes the correlation, beside the bootstrap over the
points themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope._types import Choice
from headscope.compare._permutation import permutation_test, row_correlation
from headscope.errors import ConfigError
from headscope.results import Saved

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Correlation", "correlate"]

Method = Choice["spearman", "pearson"]
Values = Sequence[float] | np.ndarray | Mapping[str, float]
Items = Sequence[Sequence[float] | np.ndarray] | np.ndarray | Mapping[str, Sequence[float] | np.ndarray]


@dataclass(frozen=True)
class Correlation(Saved):
    """A correlation between paired values ``x`` and ``y`` (e.g. head-set recall and task score per model).

    ``value`` is Spearman's rho or Pearson's r. ``p_value`` is two-sided against no association,
    computed as ``p_method`` says: ``"exact-permutation"`` (all ``n_permutations = n!`` pairings,
    ``n <= 8``), ``"monte-carlo-permutation"`` (``n_permutations`` seeded random pairings), or, in
    files saved before permutation p-values, ``"asymptotic"`` (scipy's). ``p_min`` is the smallest
    p-value the test can give on these values (1/12 for any four distinct points): a p-value can
    fall below 0.05 only when ``p_min`` does. ``p_asymptotic`` is scipy's asymptotic p-value, for
    reference only.

    Two percentile bootstrap intervals at ``confidence``, each from ``n_boot`` resamples (resamples
    whose ``x`` or ``y`` is constant are skipped):

    - ``ci_low`` / ``ci_high`` resample the points (the ``(x, y)`` pairs, e.g. the variants);
    - ``item_ci_low`` / ``item_ci_high`` resample the items behind each ``y`` (e.g. the questions
      a variant's exact match averages), ``x`` held fixed; ``item_resampling`` says how
      (``"paired"``: the same item indices for every point, as when every variant answers the same
      questions; ``"independent"``: each point on its own) and ``n_items`` how many items each
      point has. ``None`` / ``""`` / ``()`` when no items were given.
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
    p_method: str = "asymptotic"
    n_permutations: int = 0
    p_min: float | None = None
    p_asymptotic: float | None = None
    item_ci_low: float | None = None
    item_ci_high: float | None = None
    item_resampling: str = ""
    n_items: tuple[int, ...] = ()

    @property
    def significant(self) -> bool:
        """Whether the permutation p-value is below 0.05 (never for an old file's asymptotic p-value)."""
        return self.p_method != "asymptotic" and self.p_value < 0.05

    def p_text(self) -> str:
        """The p-value in words: ``"p = 1/12 (exact, all 24 pairings)"``, ``"p = 0.0123 (9,999 random pairings)"``."""
        if self.p_method == "exact-permutation":
            fraction = Fraction(self.p_value).limit_denominator(self.n_permutations)
            shown = f"{fraction} = {self.p_value:.3g}" if fraction.denominator > 1 else f"{self.p_value:g}"
            return f"p = {shown} (exact, all {self.n_permutations:,} pairings)"
        if self.p_method == "monte-carlo-permutation":
            return f"p = {self.p_value:.3g} ({self.n_permutations:,} random pairings)"
        return f"p = {self.p_value:.2g} (asymptotic)"

    def p_min_text(self) -> str:
        """The smallest possible p-value in words (``"1/12"``), or ``"unknown"`` for an old file."""
        if self.p_min is None:
            return "unknown"
        if self.p_method == "exact-permutation":
            return str(Fraction(self.p_min).limit_denominator(self.n_permutations))
        return f"{self.p_min:.2g}"

    def to_frame(self) -> pd.DataFrame:
        """One row per point: label, x, y."""
        import pandas as pd

        return pd.DataFrame({"label": list(self.labels), "x": list(self.x), "y": list(self.y)})

    def plot(self, title: str = "", x_title: str = "recall", y_title: str = "score") -> Any:
        """Scatter of the points with a least-squares line, by :func:`~headscope.viz.correlation_figure`."""
        from headscope.viz import correlation_figure

        return correlation_figure(self, title=title, x_title=x_title, y_title=y_title)


def _pair(x: Values, y: Values, labels: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Aligned float arrays and labels, from two sequences or two mappings paired by key."""
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
    labels = [str(i) for i in range(len(xs))] if labels is None else [str(label) for label in labels]
    if len(labels) != len(xs):
        raise ConfigError(f"got {len(labels)} labels for {len(xs)} points")
    return xs, ys, labels


def _items(y_items: Items, ys: np.ndarray, labels: list[str], paired: bool) -> list[np.ndarray]:
    """Per-point item arrays, checked: one per point, non-empty, finite, averaging to that point's ``y``."""
    rows = [y_items[k] for k in labels] if isinstance(y_items, Mapping) else list(y_items)
    if len(rows) != len(ys):
        raise ConfigError(f"y_items must give the items of each of the {len(ys)} points; got {len(rows)}")
    out = []
    for label, row, y in zip(labels, rows, ys, strict=True):
        items = np.asarray(row, float)
        if items.ndim != 1 or not len(items) or not np.isfinite(items).all():
            raise ConfigError(f"y_items[{label!r}] must be a non-empty 1-d list of finite numbers; got {row!r}")
        if not np.isclose(items.mean(), y, rtol=1e-9, atol=1e-12):
            raise ConfigError(
                f"y_items[{label!r}] averages {items.mean():.6g} but y is {y:.6g} there: "
                f"give the per-item values whose mean is y"
            )
        out.append(items)
    if paired and len({len(r) for r in out}) > 1:
        raise ConfigError(
            f"paired item resampling needs the same number of items per point; got {[len(r) for r in out]} "
            f"(pass paired=False to resample each point on its own)"
        )
    return out


def _interval(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    boot = boot[~np.isnan(boot)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    return float(low), float(high)


def _item_bootstrap(
    xs: np.ndarray, items: list[np.ndarray], method: str, n_boot: int, paired: bool, rng: np.random.Generator
) -> np.ndarray:
    """``n_boot`` correlations of ``xs`` with each point's mean over a resample of its items."""
    if paired:
        idx = rng.integers(0, len(items[0]), size=(n_boot, len(items[0])))
        ys = np.stack([row[idx].mean(-1) for row in items], axis=-1)
    else:
        ys = np.stack([row[rng.integers(0, len(row), size=(n_boot, len(row)))].mean(-1) for row in items], axis=-1)
    return row_correlation(np.broadcast_to(xs, ys.shape), ys, method)


def correlate(
    x: Values,
    y: Values,
    *,
    method: Method = "spearman",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    y_items: Items | None = None,
    paired: bool = True,
    n_permutations: int = 9999,
) -> Correlation:
    """Correlate paired values, e.g. each variant's head-set recall with its downstream task score.

    ``x`` and ``y`` are equal-length sequences, or mappings from a label (a model variant) to its
    value, paired by key. Zhao et al. report Spearman across the fine-tuned variants of a task.
    The p-value is a two-sided permutation p-value: exact up to 8 points, else from
    ``n_permutations`` seeded random pairings. ``y_items`` (optional) gives the per-item values
    each ``y`` averages (e.g. per-question exact match, as sequences in point order or a mapping
    by label); the result then also holds a bootstrap interval over items, resampled ``paired``
    (the same items for every point) or independently. See :class:`Correlation`.

    >>> r = correlate([0.2, 0.4, 0.5, 0.7, 0.9], [31.0, 35.0, 33.0, 40.0, 44.0], n_boot=200)
    >>> round(r.value, 2), r.n, r.ci_low <= r.value <= r.ci_high, r.p_text()
    (0.9, 5, True, 'p = 1/12 = 0.0833 (exact, all 120 pairings)')
    >>> r = correlate([1, 2, 3, 4], [5, 6, 7, 8], y_items=[[5, 5], [6, 6], [6, 8], [8, 8]], n_boot=200)
    >>> r.p_text(), r.p_min_text(), r.item_resampling, r.n_items
    ('p = 1/12 = 0.0833 (exact, all 24 pairings)', '1/12', 'paired', (2, 2, 2, 2))
    """
    from scipy import stats

    if method not in ("spearman", "pearson"):
        raise ConfigError(f"method must be 'spearman' or 'pearson'; got {method!r}")
    xs, ys, labels = _pair(x, y, labels)
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
    if n_permutations < 1:
        raise ConfigError(f"n_permutations must be at least 1; got {n_permutations}")
    items = _items(y_items, ys, labels, paired) if y_items is not None else None
    asymptotic = stats.spearmanr(xs, ys) if method == "spearman" else stats.pearsonr(xs, ys)
    test = permutation_test(xs, ys, method, n_permutations=n_permutations, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(xs), size=(n_boot, len(xs)))
    low, high = _interval(row_correlation(xs[idx], ys[idx], method), confidence)
    item_low = item_high = None
    if items is not None:
        item_low, item_high = _interval(_item_bootstrap(xs, items, method, n_boot, paired, rng), confidence)
    return Correlation(
        value=float(row_correlation(xs, ys, method)),
        ci_low=low,
        ci_high=high,
        p_value=test.p_value,
        n=len(xs),
        method=method,
        x=tuple(float(v) for v in xs),
        y=tuple(float(v) for v in ys),
        labels=tuple(labels),
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
        p_method=test.method,
        n_permutations=test.n_permutations,
        p_min=test.p_min,
        p_asymptotic=float(asymptotic.pvalue),
        item_ci_low=item_low,
        item_ci_high=item_high,
        item_resampling=("paired" if paired else "independent") if items is not None else "",
        n_items=tuple(len(r) for r in items) if items is not None else (),
    )
