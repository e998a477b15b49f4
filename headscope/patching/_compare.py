"""The seed paper's cross-model patching experiment in one call.

Patch the heads two fine-tuned models share (say the intersection of their retrieval heads) from
the *source* model (trained on real data) into the *target* (trained on synthetic data), and
compare with patching the complement of that set and random sets of the same size. If the shared
heads matter, patching them recovers more of the source-target gap than random heads do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.distributed import World, item_key, model_fingerprint, sharded_map
from headscope.errors import ConfigError, InputTypeError
from headscope.heads import Head, Heads, as_heads, random_heads
from headscope.models import model_info
from headscope.patching._metrics import Metric, metric_name
from headscope.patching._patch import _as_batch, check_same_architecture, patched, record_heads
from headscope.results import Saved
from headscope.tasks._forced import Forceable, forced_batch

__all__ = ["PatchingComparison", "compare_patching"]


@dataclass(frozen=True)
class PatchingComparison(Saved):
    """Mean metric (over the inputs) of the target unpatched, the source, and the target with each head set patched.

    ``sets`` maps a set name (``"shared"``, ``"complement"``, ``"random-0"``...) to its heads;
    ``values`` maps ``"target"``, ``"source"`` and every set name to the mean metric.
    ``recovered(name)`` is the fraction of the source-target gap that patching the set closes.
    """

    metric: str
    values: dict[str, float]
    sets: dict[str, list[Head]]
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # heads as Head values, however they were given (or loaded)
        object.__setattr__(self, "sets", {name: as_heads(heads) for name, heads in self.sets.items()})

    def recovered(self, name: str) -> float:
        gap = self.values["source"] - self.values["target"]
        if gap == 0:
            raise ConfigError(
                f"source and target both score {self.values['source']}: there is no gap to recover; "
                "compare models (or inputs) that differ on the metric"
            )
        return (self.values[name] - self.values["target"]) / gap

    def random_values(self) -> list[float]:
        return [v for k, v in self.values.items() if k.startswith("random-")]

    def to_frame(self) -> Any:
        """One row per run: ``set, kind, n_heads, value, recovered``."""
        import pandas as pd

        rows = []
        for name, value in self.values.items():
            kind = "random" if name.startswith("random-") else name
            gap = self.values["source"] - self.values["target"]
            rows.append(
                {
                    "set": name,
                    "kind": kind,
                    "n_heads": len(self.sets.get(name, [])),
                    "value": value,
                    "recovered": (value - self.values["target"]) / gap if gap else float("nan"),
                }
            )
        return pd.DataFrame(rows)

    def plot(self, *, title: str | None = None) -> Any:
        """The metric per head set, random sets around their mean: :func:`~headscope.viz.patching_sets_figure`."""
        from headscope.viz import patching_sets_figure

        return patching_sets_figure(self.to_frame(), metric=self.metric, title=title or "")


def compare_patching(
    target: Any,
    source: Any,
    inputs: Sequence[Any],
    shared_heads: Heads,
    metric: Metric | None = None,
    *,
    n_random: int = 5,
    seed: int = 0,
    progress: bool = True,
    distributed: bool = False,
    resume: str | Path | None = None,
) -> PatchingComparison:
    """Patch ``shared_heads``, their complement and ``n_random`` equal-size random sets from ``source`` into ``target``.

        ``inputs`` are token tensors (``[pos]`` or ``[batch, pos]``) or
        :class:`~headscope.tasks.EncodedSample` objects, run teacher-forced: the prompt and the answer
        less its last token, so each answer token is predicted by the row before it
        (:mod:`headscope.tasks._forced`). ``metric`` maps logits to a scalar; left as ``None``, every
        input must be an encoded sample and the metric is the answer's log-probability, summed over
        its tokens. Random sets are drawn from the heads outside
        ``shared_heads`` with seeds ``seed, seed + 1, ...``. Values are means over the inputs.

    ``distributed=True`` splits the inputs over the ranks of the initialised ``torch.distributed``
    group (each rank records the source once per input for every set) and returns the one-process
    comparison on every rank; ``resume`` names a folder of per-input results a rerun reads back.

        >>> from headscope import load_model
        >>> from headscope.models import load_folder, tiny_folder
        >>> from headscope.patching import LogitDiff
        >>> target, source = load_model("tiny-llama"), load_folder(tiny_folder("llama", seed=1))
        >>> cmp = compare_patching(target, source, [torch.tensor([0, 5, 9, 7])], [(1, 0), (1, 2)],
        ...                        LogitDiff(5, 6), n_random=2, progress=False)
        >>> sorted(cmp.sets), len(cmp.sets["complement"])
        (['complement', 'random-0', 'random-1', 'shared'], 6)
    """
    check_same_architecture(target, source)
    info = model_info(target)
    shared = sorted(set(info.check_heads(shared_heads)))
    every = [Head(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    complement = [h for h in every if h not in set(shared)]
    if not shared:
        raise ConfigError("shared_heads is empty: give the heads to patch (e.g. the intersection of two head sets)")
    if not complement:
        raise ConfigError(
            "shared_heads covers every head, so it has no complement to compare against; give a proper subset"
        )
    if not inputs:
        raise ConfigError("inputs is empty: give at least one token sequence or encoded sample")
    sets: dict[str, list[Head]] = {"shared": shared, "complement": complement}
    for i in range(n_random):
        sets[f"random-{i}"] = random_heads(info, len(shared), exclude=shared, seed=seed + i)

    def run(item: Any) -> dict[str, float]:
        tokens, item_metric = _prepare(item, metric)
        values = {}
        with torch.no_grad():
            values["target"] = float(item_metric(target(tokens.to(_device(target)))))
            values["source"] = float(item_metric(source(tokens.to(_device(source)))))
        acts = record_heads(source, tokens.to(_device(source)))
        for name, heads in sets.items():
            with torch.no_grad(), patched(target, acts, heads):
                values[name] = float(item_metric(target(tokens.to(_device(target)))))
        return values

    keys = None
    if resume is not None:
        run_of = [info.name, model_fingerprint(target), model_fingerprint(source), metric and metric_name(metric)]
        heads = {name: [list(h) for h in chosen] for name, chosen in sets.items()}
        keys = [item_key("patching", run_of, heads, _key(x)) for x in inputs]
    per_input = sharded_map(
        run,
        list(inputs),
        keys=keys,
        costs=[float(_prepare(x, metric)[0].numel()) for x in inputs],
        partial=resume,
        desc="inputs",
        progress=progress,
        world=None if distributed else World(),
    )
    totals = dict.fromkeys(["target", "source", *sets], 0.0)
    for values in per_input:  # summed in input order, as one process adds them
        for name in totals:
            totals[name] += values[name]
    return PatchingComparison(
        metric=metric_name(metric) if metric is not None else "answer_logprob",
        values={k: v / len(inputs) for k, v in totals.items()},
        sets=sets,
        settings={"n_inputs": len(inputs), "n_random": n_random, "seed": seed, "model": info.name},
    )


def _prepare(item: Any, metric: Metric | None) -> tuple[Tensor, Metric]:
    if isinstance(item, Tensor):
        if metric is None:
            raise ConfigError("token inputs need a metric; pass metric= or give EncodedSample inputs")
        return _as_batch(item), metric
    if isinstance(item, Forceable):
        forced = forced_batch([item])
        return forced.tokens, metric if metric is not None else _AnswerRowsLogProb(forced.rows[0], forced.targets[0])
    raise InputTypeError(
        f"inputs must be token tensors or encoded samples (Sample.encode(tokenizer)); got {type(item).__name__}"
    )


@dataclass(frozen=True)
class _AnswerRowsLogProb:
    """``log p(answer)`` of one teacher-forced sample: the sum over its answer rows of the target's log-probability."""

    rows: Int[Tensor, " answer"]
    targets: Int[Tensor, " answer"]

    def __call__(self, logits: Float[Tensor, "1 pos vocab"]) -> Float[Tensor, ""]:
        logprobs = torch.log_softmax(logits[0, self.rows.to(logits.device)].float(), dim=-1)
        return logprobs.gather(-1, self.targets.to(logits.device)[:, None]).sum()


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _key(item: Any) -> Any:
    """What one input's result depends on: its tokens (and answer, for an encoded sample)."""
    if isinstance(item, Tensor):
        return item.tolist()
    return [item.input_ids.tolist(), item.answer_ids.tolist()]
