"""The needle-in-a-haystack picture: answer success per (context length x needle depth) cell."""

from __future__ import annotations

from typing import Any

import numpy as np

from headscope.errors import ConfigError

__all__ = ["needle_heatmap"]


def needle_heatmap(frame: Any, *, value: str = "success", title: str = "") -> Any:
    """A plotly heatmap of mean ``value`` per cell: context length on the y axis, needle depth on the x axis.

    ``frame`` has one row per sample with columns ``length`` (tokens), ``depth`` (percent) and
    ``value`` (a bool or a number), e.g. :meth:`headscope.retrieval.SuccessLog.to_frame`. Each
    cell shows its mean as a colour (red 0 to green 1) and its count as text, ``"2/3"`` for
    booleans; cells with no sample stay blank.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"length": [500, 500, 1000, 1000], "depth": [0.0, 100.0, 0.0, 0.0],
    ...                       "success": [True, False, True, False]})
    >>> fig = needle_heatmap(frame)
    >>> fig.data[0].z.tolist(), fig.data[0].text.tolist()
    ([[1.0, 0.0], [0.5, nan]], [['1/1', '0/1'], ['1/2', '']])
    """
    import plotly.graph_objects as go

    missing = [c for c in ("length", "depth", value) if c not in frame.columns]
    if missing:
        raise ConfigError(f"needle frame lacks column(s) {missing}; expected length, depth, {value}")
    rows = frame.dropna(subset=["length", "depth"])
    if rows.empty:
        raise ConfigError(
            "no row has a length and a depth: only needle samples (headscope.tasks.needle_grid) have them"
        )
    values = rows[value].astype(float)
    cells = values.groupby([rows["length"], rows["depth"]]).agg(["mean", "sum", "count"])
    lengths, depths = sorted(rows["length"].unique()), sorted(rows["depth"].unique())
    z = np.full((len(lengths), len(depths)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    boolean = rows[value].dtype == bool
    for (length, depth), cell in cells.iterrows():
        i, j = lengths.index(length), depths.index(depth)
        z[i, j] = cell["mean"]
        n = int(cell["count"])
        text[i, j] = f"{int(cell['sum'])}/{n}" if boolean else f"{cell['mean']:.2f} (n={n})"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"{d:g}%" for d in depths],
            y=[f"{int(n)}" for n in lengths],
            text=text,
            texttemplate="%{text}",
            colorscale="RdYlGn",
            zmin=0,
            zmax=1,
            colorbar={"title": value},
            hovertemplate="length %{y} tokens, depth %{x}<br>" + value + " %{z:.2f} (%{text})<extra></extra>",
            xgap=2,
            ygap=2,
        )
    )
    fig.update_layout(
        title=title or f"{value} per context length and needle depth",
        xaxis={"title": "needle depth", "type": "category"},
        yaxis={"title": "context length (tokens)", "type": "category"},
        width=max(420, 70 * len(depths) + 220),
        height=max(300, 50 * len(lengths) + 180),
    )
    return fig
