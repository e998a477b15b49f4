"""How stable a ranking is: P(top k) per head over bootstrap resamples, and how runs overlap."""

from __future__ import annotations

from typing import Any

import numpy as np

from headscope.errors import ConfigError

__all__ = ["overlap_figure", "stability_figure"]

_COLUMNS = ("label", "score", "low", "high", "p_top")


def stability_figure(frame: Any, *, top_k: int, threshold: float = 0.9, shown: int = 30, title: str = "") -> Any:
    """Two panels over the heads most often in the top ``k``: P(top k) as bars, and the score with its interval.

    ``frame`` has one row per head with ``label``, ``score``, ``low``, ``high`` and ``p_top``
    (:meth:`headscope.retrieval.Stability.to_frame`). Heads ever in a resample's top ``k`` are
    shown, most often first (then by score), at most ``shown``; bars at or above ``threshold``
    (the stable heads) are dark, and a dashed line marks ``threshold``.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"label": ["L0H0", "L0H1", "L1H0"], "score": [0.9, 0.2, 0.0],
    ...                       "low": [0.8, 0.0, 0.0], "high": [1.0, 0.4, 0.0], "p_top": [1.0, 0.4, 0.0]})
    >>> fig = stability_figure(frame, top_k=1)
    >>> list(fig.data[0].x), list(fig.data[0].marker.color)
    (['L0H0', 'L0H1'], ['#1f4e99', '#9bb8e0'])
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    missing = [c for c in _COLUMNS if c not in frame]
    if missing:
        raise ConfigError(f"frame needs the columns {list(_COLUMNS)}; it lacks {missing} (use Stability.to_frame())")
    ranked = frame.assign(order=np.arange(len(frame))).sort_values(
        ["p_top", "score", "order"], ascending=[False, False, True]
    )
    ranked = ranked[ranked["p_top"] > 0].head(shown)
    labels = list(ranked["label"])
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45],
        subplot_titles=(f"share of resamples with the head in the top {top_k}", "score, bootstrap interval"),
    )  # fmt: skip
    colors = ["#1f4e99" if p >= threshold else "#9bb8e0" for p in ranked["p_top"]]
    fig.add_trace(
        go.Bar(
            x=labels,
            y=ranked["p_top"],
            marker={"color": colors},
            name=f"P(top {top_k})",
            hovertemplate="%{x}<br>" + f"P(top {top_k})" + " %{y:.3f}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=ranked["score"],
            mode="markers",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": ranked["high"] - ranked["score"],
                "arrayminus": ranked["score"] - ranked["low"],
            },
            marker={"color": colors, "size": 8},
            name="score",
            hovertemplate="%{x}<br>score %{y:.3f}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.add_hline(y=threshold, line_dash="dash", line_color="orangered", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], title_text=f"P(top {top_k})", row=1, col=1)
    fig.update_yaxes(title_text="score", row=2, col=1)
    fig.update_layout(title=title, showlegend=False, width=max(520, 26 * len(labels) + 220), height=560)
    return fig


def overlap_figure(labels: list[str], matrices: dict[str, np.ndarray], *, title: str = "") -> Any:
    """One run x run heatmap per named matrix (e.g. the Jaccard overlap of top-k and of stable sets).

    >>> fig = overlap_figure(["a", "b"], {"top 10": np.array([[1.0, 0.5], [0.5, 1.0]])})
    >>> fig.data[0].z.tolist()
    [[1.0, 0.5], [0.5, 1.0]]
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    bad = {name: m.shape for name, m in matrices.items() if m.shape != (len(labels), len(labels))}
    if bad:
        raise ConfigError(f"each matrix must be {len(labels)}x{len(labels)} (one row per run); got {bad}")
    fig = make_subplots(rows=1, cols=len(matrices), subplot_titles=list(matrices))
    for i, m in enumerate(matrices.values()):
        text = [["n/a" if np.isnan(v) else f"{v:.2f}" for v in row] for row in m]
        fig.add_trace(
            go.Heatmap(
                z=m,
                x=labels,
                y=labels,
                text=text,
                texttemplate="%{text}",
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=i == 0,
                hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
    fig.update_layout(title=title, width=max(480, 360 * len(matrices)), height=420)
    return fig
