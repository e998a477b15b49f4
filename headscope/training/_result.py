"""``FinetuneResult``: the loss curve, evaluations and settings of one fine-tuning run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headscope.results import Saved

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class FinetuneResult(Saved):
    """What a :func:`~headscope.training.finetune` run did.

    ``losses[i]`` is the mean answer-token loss of the batch of optimizer step ``i + 1``, taken
    before that step's update; ``lrs[i]`` its learning rate. ``evals`` holds the ``eval_fn``
    results, each with the ``"step"`` (updates done so far; 0 is before training) it was taken at.
    ``trained`` names the trained parameters (for :func:`~headscope.training.save_weights`).
    """

    losses: tuple[float, ...]
    lrs: tuple[float, ...]
    evals: tuple[dict[str, float], ...]
    trained: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.losses)

    def to_frame(self) -> pd.DataFrame:
        """Long frame with columns ``step``, ``metric`` (``"loss"``, ``"lr"`` or an eval name), ``value``."""
        import pandas as pd

        rows = [
            {"step": i + 1, "metric": name, "value": value}
            for i, (loss, lr) in enumerate(zip(self.losses, self.lrs, strict=True))
            for name, value in (("loss", loss), ("lr", lr))
        ]
        rows += [
            {"step": int(e["step"]), "metric": k, "value": float(v)}
            for e in self.evals
            for k, v in e.items()
            if k != "step"
        ]
        return pd.DataFrame(rows, columns=["step", "metric", "value"])

    def plot(self) -> Any:
        """Loss curve, evaluations in a second panel when there are any: :func:`~headscope.viz.training_figure`."""
        from headscope.viz import training_figure

        return training_figure(self.to_frame())
