"""The compression curve's figure: answer accuracy against the share of KV heads kept full."""

from __future__ import annotations

from typing import Any

import numpy as np

from headscope.errors import ConfigError

__all__ = ["compression_figure"]

_COLUMNS = ("run", "kind", "seed", "fraction", "accuracy")


def compression_figure(frame: Any, *, title: str = "") -> Any:
    """Accuracy against the share of KV heads full: one line per ranking, random sets as a band, full attention flat.

    ``frame`` is :meth:`~headscope.compression.CompressionCurve.to_frame`'s: one row per run and
    fraction with ``run``, ``kind`` (``"ranking"``, ``"random"``, ``"full"``), ``seed``,
    ``fraction`` and ``accuracy`` (``memory_ratio`` too, if present, shown on hover). Random runs
    are drawn as their mean over seeds with a band from the lowest to the highest seed; full
    attention as a dashed level line.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"run": ["retrieval", "random", "random", "full attention"],
    ...                       "kind": ["ranking", "random", "random", "full"], "seed": [None, 0, 1, None],
    ...                       "fraction": [0.5, 0.5, 0.5, 1.0], "accuracy": [0.9, 0.4, 0.6, 1.0]})
    >>> [trace.name for trace in compression_figure(frame).data]
    ['random KV heads (min–max over 2 seeds)', 'random: upper', 'random KV heads (mean)', 'retrieval', 'full attention']
    """
    import plotly.graph_objects as go

    missing = [c for c in _COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"compression frame lacks column(s) {missing}; expected {list(_COLUMNS)}")
    kinds = set(frame["kind"].unique())
    if not kinds <= {"ranking", "random", "full"}:
        raise ConfigError(f"kind must be 'ranking', 'random' or 'full'; got {sorted(map(str, kinds))}")
    fig = go.Figure()
    random = frame[frame["kind"] == "random"]
    if len(random):
        stats = random.groupby("fraction")["accuracy"].agg(["mean", "min", "max"]).sort_index()
        x = stats.index.tolist()
        n_seeds = random["seed"].nunique()
        fig.add_trace(
            go.Scatter(
                x=x,
                y=stats["min"],
                name=f"random KV heads (min–max over {n_seeds} seeds)",
                mode="lines",
                line={"width": 0},
                showlegend=True,
                fillcolor="rgba(128,128,128,0.25)",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=stats["max"],
                name="random: upper",
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor="rgba(128,128,128,0.25)",
                showlegend=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=stats["mean"],
                name="random KV heads (mean)",
                mode="lines+markers",
                line={"color": "gray", "dash": "dash"},
            )
        )
    for run, rows in frame[frame["kind"] == "ranking"].groupby("run", sort=False):
        rows = rows.sort_values("fraction")
        hover = None
        if "memory_ratio" in rows.columns:
            hover = [f"{r:.2f}× less KV memory" for r in rows["memory_ratio"]]
        fig.add_trace(
            go.Scatter(x=rows["fraction"], y=rows["accuracy"], name=str(run), mode="lines+markers", text=hover)
        )
    full = frame[frame["kind"] == "full"]
    if len(full):
        level = float(np.mean(full["accuracy"]))
        xs = frame["fraction"]
        fig.add_trace(
            go.Scatter(
                x=[float(xs.min()), float(xs.max())],
                y=[level, level],
                name="full attention",
                mode="lines",
                line={"color": "black", "dash": "dot"},
            )
        )
    fig.update_layout(
        title=title,
        xaxis_title="share of KV heads with the full cache",
        yaxis_title="answer accuracy",
        yaxis_range=[-0.05, 1.05],
        template="plotly_white",
    )
    return fig
