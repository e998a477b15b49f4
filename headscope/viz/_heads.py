"""Layer-by-head heatmaps: the one picture every per-head result shares."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from headscope._types import Grid
from headscope.errors import ConfigError
from headscope.heads import Head


def head_map(
    values: Grid,
    *,
    title: str = "",
    value_name: str = "score",
    extra: dict[str, np.ndarray] | None = None,
    colorscale: str = "Blues",
    zmid: float | None = None,
    threshold: float | None = None,
    label_top: int = 0,
) -> Any:
    """A plotly heatmap with layers on the y axis (layer 0 at the bottom) and heads on the x axis.

    Hovering a cell shows its ``L{layer}H{head}`` label, the value, and one line per entry of
    ``extra`` (for example the number of samples behind a score). Pass ``zmid=0`` and a diverging
    ``colorscale`` such as ``"RdBu"`` for signed effects. ``threshold`` outlines every cell above
    it (for retrieval scores, Wu et al.'s 0.1) and marks it on the colour bar; ``label_top``
    writes the labels of that many highest cells on the map.

    >>> fig = head_map(torch.rand(3, 4), title="random")
    >>> fig.data[0].z.shape
    (3, 4)
    >>> fig = head_map(np.array([[0.05, 0.3], [0.2, 0.0]]), threshold=0.1, label_top=1)
    >>> list(fig.data[1].text), [a.text for a in fig.layout.annotations]
    (['L0H1', 'L1H0'], ['L0H1'])
    """
    import plotly.graph_objects as go

    z = values.detach().cpu().float().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    if z.ndim != 2:
        raise ConfigError(f"values must be a [layer, head] grid; got shape {tuple(z.shape)}")
    n_layers, n_heads = z.shape
    extra = extra or {}
    for name, grid in extra.items():
        if np.shape(grid) != z.shape:
            raise ConfigError(f"extra[{name!r}] has shape {np.shape(grid)}, expected {z.shape}")
    labels = np.array([[str(Head(layer, head)) for head in range(n_heads)] for layer in range(n_layers)])
    custom = np.stack([labels, *[np.asarray(g).astype(str) for g in extra.values()]], axis=-1)
    hover = "%{customdata[0]}<br>layer %{y}, head %{x}<br>" + f"{value_name} %{{z:.4g}}"
    hover += "".join(f"<br>{name} %{{customdata[{i + 1}]}}" for i, name in enumerate(extra))
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            customdata=custom,
            hovertemplate=hover + "<extra></extra>",
            colorscale=colorscale,
            zmid=zmid,
            colorbar={"title": value_name},
        )
    )
    if threshold is not None:
        above = np.argwhere(z > threshold)
        fig.add_trace(
            go.Scatter(
                x=above[:, 1],
                y=above[:, 0],
                text=labels[above[:, 0], above[:, 1]].tolist(),
                mode="markers",
                marker={"symbol": "square-open", "size": 14, "color": "orangered", "line": {"width": 2}},
                name=f"above {threshold:g}",
                hovertemplate="%{text}<br>" + f"{value_name} above {threshold:g}<extra></extra>",
            )
        )
        finite = z[np.isfinite(z)]
        ticks = sorted({float(f"{v:.2g}") for v in np.linspace(finite.min(), finite.max(), 5)} | {threshold})
        fig.data[0].colorbar.update(
            tickvals=ticks, ticktext=[f"{v:g} ◀" if v == threshold else f"{v:g}" for v in ticks]
        )
        fig.update_layout(legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    flat = np.where(np.isnan(z), -np.inf, z).ravel()
    for i in np.argsort(-flat, kind="stable")[: max(0, label_top)]:
        if np.isfinite(flat[i]):
            layer, head = divmod(int(i), n_heads)
            fig.add_annotation(
                x=head,
                y=layer,
                text=str(labels[layer, head]),
                showarrow=True,
                arrowhead=2,
                ax=24,
                ay=-22,
                font={"size": 11, "color": "black"},
                bgcolor="rgba(255,255,255,0.85)",
            )
    fig.update_layout(
        title=title,
        xaxis_title="head",
        yaxis_title="layer",
        width=max(420, 40 * n_heads + 200),
        height=max(360, 18 * n_layers + 160),
    )
    return fig
