"""``PipelineResult``: every number the synthetic-versus-real pipeline measured, with figures and a summary."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headscope.ablation import KnockoutCurve
from headscope.compare import Correlation
from headscope.heads import Head, as_heads
from headscope.patching import PatchingComparison
from headscope.pipeline._config import PipelineConfig
from headscope.results import Saved
from headscope.retrieval import RetrievalScores
from headscope.training import FinetuneResult

__all__ = ["PipelineResult", "VariantResult"]

#: VariantResult fields left out of the one-row-per-model frame (lists, not numbers).
_PER_SAMPLE = ("heads", "by_position", "sample_accuracy", "sample_logprob")


@dataclass(frozen=True)
class VariantResult(Saved):
    """One fine-tuned model: its data, task score on the real task, head set and recall of the real heads.

    ``heads`` are the model's retrieval heads (its ``top_k`` best with a positive score, best
    first); ``recall`` is ``|heads ∩ real heads| / |real heads|`` (1.0 for the real model) and
    ``jaccard`` their Jaccard overlap, both ``None`` when the real model has no retrieval head.
    ``accuracy`` is generated best-subspan exact match when the run generates (then ``logprob``
    is ``None`` and ``by_position`` holds ``(gold position, exact match)`` pairs), else the
    teacher-forced exact match. ``train_tokens`` is the mean length of its training samples.
    ``sample_accuracy`` and ``sample_logprob`` are the per-sample values behind ``accuracy`` and
    ``logprob``, in the order of the evaluation samples (empty where not measured, and in results
    saved before they were recorded).
    """

    name: str
    needle: str
    haystack: str
    accuracy: float
    logprob: float | None
    heads: tuple[Head, ...]
    recall: float | None
    jaccard: float | None
    by_position: tuple[tuple[int, float], ...] = ()
    train_tokens: float | None = None
    sample_accuracy: tuple[float, ...] = ()
    sample_logprob: tuple[float, ...] = ()


@dataclass(frozen=True)
class PipelineResult:
    """What :func:`~headscope.pipeline.run_pipeline` measured.

    ``variants[0]`` is the real-data model, the rest the synthetic ones in config order.
    ``scores`` and ``training`` map each variant name to its retrieval scores and fine-tuning
    run; ``pretraining`` is the base model's pre-training run (``None`` for a named base).
    ``correlations`` maps a score name (``"accuracy"``, ``"logprob"``) to the Spearman
    correlation of recall with that score across the synthetic variants, or ``None`` where
    undefined (``notes`` says why). ``knockout`` knocks out the real model's top heads against
    random heads (only heads with a positive retrieval score rank; ``None`` when none has one);
    ``patching`` patches heads from the real model into ``patch_target`` (``None`` when the shared
    set is empty or is every head). ``seconds`` times each stage. ``base`` scores the untouched
    base model (``config.score_base``; its retrieval scores are ``scores["base"]``).

    ``detection`` and ``analysis`` index the evaluation samples: every model's heads were detected
    on the first, knockout and patching measured on the second (disjoint; see
    :func:`~headscope.pipeline.split_evaluation`), and ``gold_positions`` gives each evaluation
    sample's gold-document position (-1 for none). All three are empty in results saved before
    the split was recorded.
    """

    config: PipelineConfig
    variants: tuple[VariantResult, ...]
    scores: dict[str, RetrievalScores]
    training: dict[str, FinetuneResult]
    pretraining: FinetuneResult | None
    correlations: dict[str, Correlation | None]
    knockout: KnockoutCurve | None
    patching: PatchingComparison | None
    patch_target: str
    seconds: dict[str, float]
    notes: tuple[str, ...] = ()
    base: VariantResult | None = None
    detection: tuple[int, ...] = ()
    analysis: tuple[int, ...] = ()
    gold_positions: tuple[int, ...] = ()

    @property
    def real(self) -> VariantResult:
        return self.variants[0]

    @property
    def synthetic(self) -> tuple[VariantResult, ...]:
        return self.variants[1:]

    def to_frame(self) -> Any:
        """One row per model (:attr:`models`): name, needle, haystack, accuracy, logprob, recall, jaccard,
        train_tokens, ``em_gold_<position>`` columns (when generated), n_heads, heads."""
        import pandas as pd

        rows = [
            {
                **{k: value for k, value in v.to_dict().items() if k not in _PER_SAMPLE},
                **{f"em_gold_{p}": em for p, em in v.by_position},
                "n_heads": len(v.heads),
                "heads": " ".join(map(str, as_heads(v.heads))),
            }
            for v in self.models
        ]
        return pd.DataFrame(rows)

    @property
    def models(self) -> tuple[VariantResult, ...]:
        """The base model (when scored) and every fine-tuned one."""
        return ((self.base,) if self.base is not None else ()) + self.variants

    def plot(self) -> Any:
        """Recall of the real heads against task accuracy, by :func:`~headscope.viz.recall_scatter`.

        Without real retrieval heads there is no recall to draw, and this is the real model's head
        map instead. :meth:`figures` gives every figure of the run.
        """
        from headscope.viz import recall_scatter

        syn = self.synthetic
        if not all(v.recall is not None for v in syn):
            return self.scores[self.real.name].plot(title="retrieval scores of the real-data model")
        corr = self.correlations.get("accuracy")
        return recall_scatter(
            [v.recall for v in syn],  # type: ignore[misc]
            [v.accuracy for v in syn],
            [v.name for v in syn],
            correlation=_describe(corr, "accuracy") if corr is not None else "Spearman undefined (see notes)",
            title="Recall of the real model's retrieval heads against task accuracy",
            y_title="exact-match accuracy on the real task",
        )

    def figures(self) -> dict[str, Any]:
        """Figures by name: recall against accuracy, the real model's head map, knockout, patching, training loss."""
        from headscope.viz import loss_curves

        figures: dict[str, Any] = {}
        if any(v.by_position for v in self.models):
            figures["accuracy_by_position"] = self.position_bars()
        if all(v.recall is not None for v in self.synthetic):
            figures["recall_vs_accuracy"] = self.plot()
        figures["real_heads"] = self.scores[self.real.name].plot(title="retrieval scores of the real-data model")
        if self.knockout is not None:
            figures["knockout"] = self.knockout.plot(
                title="real-data model: top retrieval heads vs random heads knocked out"
            )
        if self.patching is not None:
            figures["patching"] = self.patching.plot(
                title=f"patching the real model's heads into {self.patch_target} ({self.patching.metric})"
            )
        figures["training"] = loss_curves({name: run.losses for name, run in self.training.items()})
        if self.pretraining is not None:
            figures["pretraining"] = self.pretraining.plot().update_layout(title="pre-training of the base model")
        return figures

    def position_bars(self) -> Any:
        """Grouped bars: every model's exact match with the gold document at each position (plotly)."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for v in self.models:
            fig.add_bar(name=v.name, x=[f"gold at {p}" for p, _ in v.by_position], y=[em for _, em in v.by_position])
        return fig.update_layout(
            barmode="group",
            title="Exact match on held-out real questions by gold-document position",
            yaxis_title="exact match (best subspan)",
        )

    def summary(self) -> str:
        """A plain-text report of every measured number and what it does (or does not) show."""
        from headscope.pipeline._summary import summarize

        return summarize(self)

    def benchmark(self) -> str:
        """One line timing every stage, with its cost per unit of work."""
        from headscope.pipeline._summary import benchmark_line

        return benchmark_line(self)

    def export(self, folder: str | Path, title: str = "Synthetic vs real: retrieval heads") -> Path:
        """Write ``result/`` (JSON, :meth:`save`), ``variants.csv``, ``summary.txt`` and ``report.html``."""
        import html

        from headscope.viz import save_report

        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.save(root / "result")
        self.to_frame().to_csv(root / "variants.csv", index=False)
        summary = self.summary() + "\n" + self.benchmark()
        (root / "summary.txt").write_text(summary + "\n")
        sections: list[tuple[str, Any]] = [
            ("Summary", f"<pre>{html.escape(summary)}</pre>"),
            ("Models", self.to_frame()),
        ]
        sections += [(name.replace("_", " "), fig) for name, fig in self.figures().items()]
        return save_report(root / "report.html", title, sections)

    # -- persistence --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the result into the folder ``path`` (JSON files); :meth:`load` reads it back equal."""
        root = Path(path)
        (root / "scores").mkdir(parents=True, exist_ok=True)
        (root / "training").mkdir(exist_ok=True)
        names = [v.name for v in self.variants]
        for i, name in enumerate(names):
            self.scores[name].save(root / "scores" / f"{i}.json")
            self.training[name].save(root / "training" / f"{i}.json")
        if self.base is not None:
            self.scores["base"].save(root / "scores" / "base.json")
        if self.knockout is not None:
            self.knockout.save(root / "knockout.json")
        if self.pretraining is not None:
            self.pretraining.save(root / "training" / "pretraining.json")
        if self.patching is not None:
            self.patching.save(root / "patching.json")
        for key, corr in self.correlations.items():
            if corr is not None:
                corr.save(root / f"correlation-{key}.json")
        meta = {
            "format": "headscope.PipelineResult",
            "version": 1,
            "config": self.config.to_dict(),
            "variants": [v.to_dict() for v in self.variants],
            "correlations": {k: v is not None for k, v in self.correlations.items()},
            "patch_target": self.patch_target,
            "seconds": self.seconds,
            "notes": list(self.notes),
            "base": self.base.to_dict() if self.base is not None else None,
            "detection": list(self.detection),
            "analysis": list(self.analysis),
            "gold_positions": list(self.gold_positions),
        }
        (root / "pipeline.json").write_text(json.dumps(meta, indent=1))
        return root

    @classmethod
    def load(cls, path: str | Path) -> PipelineResult:
        root = Path(path)
        meta_path = root / "pipeline.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{root} holds no pipeline.json: not a folder written by PipelineResult.save")
        meta = json.loads(meta_path.read_text())
        variants = tuple(VariantResult.from_dict(v) for v in meta["variants"])
        names = [v.name for v in variants]
        patching = root / "patching.json"
        pretraining = root / "training" / "pretraining.json"
        knockout = root / "knockout.json"
        base = VariantResult.from_dict(meta["base"]) if meta.get("base") else None
        scores = {n: RetrievalScores.load(root / "scores" / f"{i}.json") for i, n in enumerate(names)}
        if base is not None:
            scores["base"] = RetrievalScores.load(root / "scores" / "base.json")
        return cls(
            config=PipelineConfig.from_dict(meta["config"]),
            variants=variants,
            scores=scores,
            training={n: FinetuneResult.load(root / "training" / f"{i}.json") for i, n in enumerate(names)},
            pretraining=FinetuneResult.load(pretraining) if pretraining.is_file() else None,
            correlations={
                k: Correlation.load(root / f"correlation-{k}.json") if present else None
                for k, present in meta["correlations"].items()
            },
            knockout=KnockoutCurve.load(knockout) if knockout.is_file() else None,
            patching=PatchingComparison.load(patching) if patching.is_file() else None,
            patch_target=meta["patch_target"],
            seconds=meta["seconds"],
            notes=tuple(meta["notes"]),
            base=base,
            detection=tuple(meta.get("detection", ())),
            analysis=tuple(meta.get("analysis", ())),
            gold_positions=tuple(meta.get("gold_positions", ())),
        )


def _describe(corr: Correlation, score: str) -> str:
    return (
        f"Spearman ρ(recall, {score}) = {corr.value:.2f}, {corr.p_text()}, n = {corr.n}; "
        f"{corr.confidence:.0%} bootstrap CI over variants [{corr.ci_low:.2f}, {corr.ci_high:.2f}]"
    )
