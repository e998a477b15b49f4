"""``PatchingResult``: one patched-metric value per head, with the runs it is measured against."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import ConfigError
from headscope.heads import Head
from headscope.results import Saved

__all__ = ["PatchingResult"]


@dataclass(frozen=True)
class PatchingResult(Saved):
    """The metric after patching each head, as a ``[layer, head]`` grid.

    ``values[l, h]`` is the metric of the run with head ``(l, h)`` patched (TransformerLens's
    convention), ``baseline`` the metric of the unpatched run and ``reference`` the metric of the
    run patched *from* (the clean input, or the source model). ``method`` is ``"exact"`` for a
    sweep and ``"attribution"`` for the gradient estimate, whose values are ``baseline`` plus the
    estimated change. ``settings`` records how it was measured (positions, model, ...).

    >>> r = PatchingResult(torch.tensor([[0.0, 2.0], [1.0, 0.5]]), metric="logit_diff", baseline=0.0, reference=2.0)
    >>> r.top(2), r.recovered()[1, 0].item()
    ([((0, 1), 2.0), ((1, 0), 1.0)], 0.5)
    """

    values: Float[Tensor, "layer head"]
    metric: str
    baseline: float
    reference: float | None = None
    method: str = "exact"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def effects(self) -> Float[Tensor, "layer head"]:
        """``values - baseline``: the change each patch causes."""
        return self.values - self.baseline

    def recovered(self) -> Float[Tensor, "layer head"]:
        """Fraction of the gap ``reference - baseline`` each patch recovers (needs ``reference``)."""
        if self.reference is None or self.reference == self.baseline:
            raise ConfigError(
                f"recovered() needs a reference metric different from the baseline; got reference={self.reference}, "
                f"baseline={self.baseline}"
            )
        return self.effects() / (self.reference - self.baseline)

    def top(self, k: int, *, by: str = "effect") -> list[tuple[Head, float]]:
        """The ``k`` heads with the largest effect (``by="effect"``) or largest absolute effect (``"abs"``).

        Each entry is ``((layer, head), effect)``, as ``RetrievalScores.top`` gives ``((layer, head), score)``.
        """
        if by not in ("effect", "abs"):
            raise ConfigError(f"by must be 'effect' or 'abs'; got {by!r}")
        scores = self.effects().flatten()
        scores = scores.abs() if by == "abs" else scores
        order = torch.argsort(scores, descending=True, stable=True)[: max(0, k)]
        n_heads = self.values.shape[1]
        effects = self.effects().flatten()
        return [(Head(int(i) // n_heads, int(i) % n_heads), float(effects[i])) for i in order]

    def to_frame(self) -> Any:
        """Long pandas frame: ``layer, head, label, value, effect``."""
        import pandas as pd

        n_layers, n_heads = self.shape
        rows = [
            {
                "layer": layer,
                "head": head,
                "label": str(Head(layer, head)),
                "value": float(self.values[layer, head]),
                "effect": float(self.values[layer, head] - self.baseline),
            }
            for layer in range(n_layers)
            for head in range(n_heads)
        ]
        return pd.DataFrame(rows)

    def plot(self, *, title: str | None = None) -> Any:
        """Heatmap of the effects (``values - baseline``), diverging colours centred on 0."""
        from headscope.viz import head_map

        label = "attribution" if self.method == "attribution" else "patching"
        return head_map(
            self.effects(),
            title=title if title is not None else f"{label}: change in {self.metric}",
            value_name=f"Δ {self.metric}",
            colorscale="RdBu",
            zmid=0.0,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatchingResult):
            return NotImplemented
        return torch.equal(self.values, other.values) and (
            self.metric,
            self.baseline,
            self.reference,
            self.method,
            self.settings,
        ) == (other.metric, other.baseline, other.reference, other.method, other.settings)

    __hash__ = None  # type: ignore[assignment]
