"""Plotly figures shared by the result objects: top heads, knockout curves, scatters, patching and training.

Each function takes plain arrays or a long pandas frame (the contract is in its docstring),
returns a ``plotly.graph_objects.Figure`` and shows nothing. Result classes call them from
their ``.plot()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from headscope._types import Choice, Grid
from headscope.errors import ConfigError
from headscope.heads import Head

if TYPE_CHECKING:
    from headscope.compare import Correlation

__all__ = [
    "correlation_figure",
    "knockout_curve_figure",
    "loss_curves",
    "patching_sets_figure",
    "rank_scatter",
    "recall_scatter",
    "top_heads_bar",
    "training_figure",
]


Band = Choice["std", "minmax"]


def top_heads_bar(
    scores: Grid,
    k: int = 20,
    *,
    title: str = "",
    value_name: str = "score",
) -> Any:
    """Bar chart of the ``k`` highest-scoring heads, best first, labelled ``L{layer}H{head}``.

    ``scores`` is a ``[layer, head]`` grid; NaN cells (heads never scored) are left out, and
    ties keep layer-major order. ``k`` larger than the number of scored heads shows them all.

    >>> fig = top_heads_bar(np.array([[0.1, 0.9], [0.5, 0.0]]), k=2)
    >>> list(fig.data[0].x), list(fig.data[0].y)
    (['L0H1', 'L1H0'], [0.9, 0.5])
    """
    import plotly.graph_objects as go

    grid = _grid(scores)
    if k < 1:
        raise ConfigError(f"k must be at least 1; got {k}")
    flat = grid.ravel()
    order = [i for i in np.argsort(-flat, kind="stable") if not np.isnan(flat[i])][:k]
    if not order:
        raise ConfigError("every score is NaN: no head to show (were any samples counted?)")
    n_heads = grid.shape[1]
    labels = [str(Head(i // n_heads, i % n_heads)) for i in order]
    fig = go.Figure(
        go.Bar(x=labels, y=flat[order].tolist(), hovertemplate="%{x}<br>" + value_name + " %{y:.4g}<extra></extra>")
    )
    fig.update_layout(
        title=title or f"top {len(order)} heads by {value_name}",
        xaxis_title="head",
        yaxis_title=value_name,
        xaxis={"type": "category"},
        width=max(480, 28 * len(order) + 160),
        height=400,
    )
    return fig


def knockout_curve_figure(
    frame: Any,
    *,
    value: str = "value",
    band: Band = "std",
    title: str = "",
    value_name: str = "",
) -> Any:
    """Task metric against the number of heads knocked out: top heads versus random heads.

    ``frame`` is a long pandas frame with one row per (kind, k, seed) run and columns:

    - ``k``: number of heads knocked out (0 for the intact model);
    - ``value`` (default ``"value"``, as in :meth:`~headscope.ablation.KnockoutCurve.to_frame`):
      the metric of that run, named ``value_name`` on the axis (default: the column name);
    - ``kind``: ``"top"`` (the highest-scoring heads) or ``"random"`` (random heads);
    - ``seed``: the random draw (any value, e.g. NaN, for ``"top"`` rows).

    Top rows are drawn as one line (averaged if a ``k`` repeats). Random rows are drawn as the
    mean over seeds with a shaded band: mean ± standard deviation (``band="std"``, population
    std, so one seed gives a zero-width band) or the min-max range over seeds (``"minmax"``).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"k": [0, 4, 0, 4, 0, 4], "value": [0.9, 0.2, 0.9, 0.8, 0.9, 0.7],
    ...                       "kind": ["top"] * 2 + ["random"] * 4, "seed": [None, None, 0, 0, 1, 1]})
    >>> [trace.name for trace in knockout_curve_figure(frame).data]
    ['random heads (mean ± std)', 'random heads: upper', 'random heads: lower', 'top heads']
    """
    import plotly.graph_objects as go

    name = value_name or value
    missing = [c for c in ("k", value, "kind", "seed") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"knockout frame lacks column(s) {missing}; expected k, {value}, kind, seed; got {list(frame.columns)}"
        )
    kinds = set(frame["kind"].unique())
    if not kinds <= {"top", "random"} or not kinds:
        raise ConfigError(f"kind must be 'top' or 'random'; got {sorted(map(str, kinds))}")
    if band not in ("std", "minmax"):
        raise ConfigError(f"band must be 'std' or 'minmax'; got {band!r}")
    fig = go.Figure()
    random = frame[frame["kind"] == "random"]
    if len(random):
        stats = random.groupby("k")[value].agg(["mean", "min", "max", lambda v: float(np.std(v))]).sort_index()
        stats.columns = ["mean", "min", "max", "std"]
        ks, mean = stats.index.tolist(), stats["mean"].to_numpy()
        upper, lower = (
            (mean + stats["std"].to_numpy(), mean - stats["std"].to_numpy())
            if band == "std"
            else (stats["max"].to_numpy(), stats["min"].to_numpy())
        )
        label = "random heads (mean ± std)" if band == "std" else "random heads (mean, min–max)"
        n_seeds = random.groupby("k")["seed"].nunique().reindex(stats.index).to_numpy()
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=mean,
                name=label,
                mode="lines+markers",
                line={"color": "gray", "dash": "dash"},
                customdata=np.stack([lower, upper, n_seeds], axis=-1),
                hovertemplate="k=%{x}<br>mean %{y:.3g} [%{customdata[0]:.3g}, %{customdata[1]:.3g}]"
                "<br>%{customdata[2]} seeds<extra></extra>",
            )
        )
        band_style = {"mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False}
        fig.add_trace(go.Scatter(x=ks, y=upper, name="random heads: upper", **band_style))
        fig.add_trace(
            go.Scatter(
                x=ks,
                y=lower,
                name="random heads: lower",
                fill="tonexty",
                fillcolor="rgba(128,128,128,0.25)",
                **band_style,
            )
        )
    top = frame[frame["kind"] == "top"]
    if len(top):
        curve = top.groupby("k")[value].mean().sort_index()
        fig.add_trace(
            go.Scatter(
                x=curve.index.tolist(),
                y=curve.to_numpy(),
                name="top heads",
                mode="lines+markers",
                line={"color": "crimson"},
                hovertemplate="k=%{x}<br>" + name + " %{y:.3g}<extra></extra>",
            )
        )
    fig.update_layout(
        title=title or f"{name} with the top heads knocked out, against random heads",
        xaxis_title="heads knocked out (k)",
        yaxis_title=name,
        width=640,
        height=420,
    )
    return fig


def recall_scatter(
    recalls: Sequence[float] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    fit: bool = True,
    correlation: str | None = None,
    title: str = "",
    x_title: str = "retrieval-head recall",
    y_title: str = "task score",
) -> Any:
    """Scatter of one point per model variant (head recall against task score), with a fit line.

    ``recalls[i]`` and ``scores[i]`` describe variant ``labels[i]`` (e.g. ``"symbolic needle"``).
    ``fit=True`` adds the least-squares line ``score = slope * recall + intercept``. The title
    ends with Spearman's ρ and Pearson's r (with two-sided permutation p-values, exact up to 8
    points) computed here, unless
    ``correlation`` gives the text to show instead (e.g. ``str`` of a ``Correlation`` result).

    >>> fig = recall_scatter([0.2, 0.5, 0.9], [0.3, 0.4, 0.8], ["a", "b", "c"])
    >>> [trace.name for trace in fig.data], "Spearman ρ = 1.00" in fig.layout.title.text
    (['variants', 'least-squares fit'], True)
    """
    import plotly.graph_objects as go

    x, y = np.asarray(recalls, dtype=float), np.asarray(scores, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ConfigError(f"recalls and scores must be 1-D and of equal length; got {x.shape} and {y.shape}")
    if len(x) < 2:
        raise ConfigError(f"a scatter with a fit needs at least 2 points; got {len(x)}")
    if labels is not None and len(labels) != len(x):
        raise ConfigError(f"got {len(labels)} labels for {len(x)} points")
    if not np.isfinite(x).all() or not np.isfinite(y).all():
        raise ConfigError("recalls and scores must be finite numbers (no NaN or inf)")
    text = list(labels) if labels is not None else None
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=y,
            text=text,
            mode="markers+text" if text else "markers",
            textposition="top center",
            name="variants",
            marker={"size": 10},
        )
    )
    line = _least_squares(x, y) if fit else None
    if line is not None:
        slope, intercept = line
        xs = np.array([x.min(), x.max()])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=slope * xs + intercept,
                mode="lines",
                name="least-squares fit",
                line={"dash": "dot", "color": "gray"},
                hovertemplate=f"slope {slope:.3g}, intercept {intercept:.3g}<extra></extra>",
            )
        )
    stats = correlation if correlation is not None else _correlation_text(x, y)
    fig.update_layout(
        title=f"{title}<br><sup>{stats}</sup>" if title else stats,
        xaxis_title=x_title,
        yaxis_title=y_title,
        width=600,
        height=460,
    )
    return fig


def correlation_figure(
    correlation: Correlation, *, title: str = "", x_title: str = "recall", y_title: str = "score"
) -> Any:
    """A :class:`~headscope.compare.Correlation`'s points with a least-squares line; the title gives its estimate.

    The scatter is :func:`recall_scatter`'s; the title states the estimate, its bootstrap interval
    over points, its p-value (with how it was computed) and ``n`` as the correlation measured them
    (nothing is recomputed).

    >>> from headscope.compare import correlate
    >>> r = correlate([0.2, 0.4, 0.5, 0.9], [1.0, 3.0, 2.0, 4.0], labels=["a", "b", "c", "d"], n_boot=50)
    >>> fig = correlation_figure(r)
    >>> list(fig.data[0].text), fig.layout.title.text.startswith("spearman 0.800")
    (['a', 'b', 'c', 'd'], True)
    """
    c = correlation
    interval = f"[{c.ci_low:.3f}, {c.ci_high:.3f}] ({c.confidence:.0%} CI over points)"
    summary = f"{c.method} {c.value:.3f} {interval}, {c.p_text()}, n={c.n}"
    return recall_scatter(c.x, c.y, c.labels, correlation=summary, title=title, x_title=x_title, y_title=y_title)


def rank_scatter(frame: Any, *, title: str = "") -> Any:
    """Two score maps head by head: one point per head, heads in either top-k set highlighted.

    ``frame`` has one row per head with ``label``, ``score_a``, ``score_b`` and the booleans
    ``top_a`` / ``top_b`` (as :meth:`~headscope.compare.RankAgreement.to_frame` gives it).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"label": ["L0H0", "L0H1"], "score_a": [0.9, 0.1], "score_b": [0.8, 0.3],
    ...                       "top_a": [True, False], "top_b": [True, True]})
    >>> [(t.name, len(t.x)) for t in rank_scatter(frame).data]
    [('other', 0), ('top-k in one', 1), ('top-k in both', 1)]
    """
    import plotly.graph_objects as go

    group = np.where(
        frame.top_a & frame.top_b, "top-k in both", np.where(frame.top_a | frame.top_b, "top-k in one", "other")
    )
    fig = go.Figure()
    for name in ("other", "top-k in one", "top-k in both"):
        part = frame[group == name]
        fig.add_trace(go.Scatter(x=part.score_a, y=part.score_b, mode="markers", name=name, text=part.label))
    fig.update_layout(title=title, xaxis_title="score a", yaxis_title="score b")
    return fig


def patching_sets_figure(frame: Any, *, metric: str, title: str = "") -> Any:
    """The metric per patched head set as bars; random sets as points around their mean bar.

    ``frame`` has one row per run with ``set``, ``kind`` (``"random"`` for random sets) and
    ``value`` (as :meth:`~headscope.patching.PatchingComparison.to_frame` gives it).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"set": ["target", "shared", "random-0", "random-1"],
    ...                       "kind": ["target", "shared", "random", "random"], "value": [0.1, 0.7, 0.25, 0.75]})
    >>> [(t.name, list(t.y)) for t in patching_sets_figure(frame, metric="m").data][1]
    ('random (mean)', [0.5])
    """
    import plotly.graph_objects as go

    fixed = frame[frame.kind != "random"]
    rand = frame[frame.kind == "random"]
    fig = go.Figure(go.Bar(x=list(fixed["set"]), y=list(fixed["value"]), name=metric))
    if len(rand):
        fig.add_bar(x=["random"], y=[float(rand["value"].mean())], name="random (mean)")
        fig.add_scatter(x=["random"] * len(rand), y=list(rand["value"]), mode="markers", name="random sets")
    fig.update_layout(title=title or f"patching source into target: {metric}", yaxis_title=metric)
    return fig


def training_figure(frame: Any, *, title: str = "Fine-tuning") -> Any:
    """The answer loss against the step, with the evaluations in a second panel when there are any.

    ``frame`` is long, ``step, metric, value``: ``metric`` ``"loss"`` rows draw the loss, ``"lr"``
    rows are left out, every other metric is an evaluation (as
    :meth:`~headscope.training.FinetuneResult.to_frame` gives it).

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"step": [0, 1, 1], "metric": ["loss", "loss", "acc"], "value": [2.0, 1.0, 0.5]})
    >>> [t.name for t in training_figure(frame).data]
    ['answer loss', 'acc']
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [m for m in frame["metric"].unique() if m not in ("loss", "lr")]
    fig = make_subplots(rows=2 if metrics else 1, cols=1, shared_xaxes=True)
    loss = frame[frame["metric"] == "loss"]
    fig.add_trace(go.Scatter(x=loss["step"], y=loss["value"], mode="lines", name="answer loss"), row=1, col=1)
    for m in metrics:
        part = frame[frame["metric"] == m]
        fig.add_trace(go.Scatter(x=part["step"], y=part["value"], mode="lines+markers", name=m), row=2, col=1)
    fig.update_xaxes(title_text="step", row=2 if metrics else 1, col=1)
    fig.update_yaxes(title_text="answer loss", row=1, col=1)
    return fig.update_layout(title=title, template="plotly_white")


def loss_curves(losses: dict[str, Sequence[float]], *, title: str = "fine-tuning loss per variant") -> Any:
    """One loss curve per named run, against the step.

    >>> [t.name for t in loss_curves({"real": [2.0, 1.0], "symbolic": [2.5, 1.5]}).data]
    ['real', 'symbolic']
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, values in losses.items():
        fig.add_trace(go.Scatter(y=list(values), mode="lines", name=name))
    return fig.update_layout(title=title, xaxis_title="step", yaxis_title="answer loss")


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """Slope and intercept of the least-squares line, or None when every x is the same."""
    dx = x - x.mean()
    if not np.any(dx):
        return None
    slope = float(dx @ (y - y.mean()) / (dx @ dx))
    return slope, float(y.mean() - slope * x.mean())


def _correlation_text(x: np.ndarray, y: np.ndarray) -> str:
    from headscope.compare._permutation import permutation_test, row_correlation

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return f"n = {len(x)}: too few distinct points for a correlation"
    parts = []
    for name, method in (("Spearman ρ", "spearman"), ("Pearson r", "pearson")):
        p = permutation_test(x, y, method).p_value
        parts.append(f"{name} = {float(row_correlation(x, y, method)):.2f} ({_p(p)})")
    return ", ".join(parts) + f", n = {len(x)}; permutation p-values"


def _p(p: float) -> str:
    return "p < 0.001" if p < 1e-3 else f"p = {p:.2g}"


def _grid(values: Any) -> np.ndarray:
    grid = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    if grid.ndim != 2:
        raise ConfigError(f"scores must be a [layer, head] grid; got shape {tuple(grid.shape)}")
    return grid
