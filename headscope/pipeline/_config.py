"""``PipelineConfig``: what the synthetic-versus-real pipeline trains, measures and compares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from headscope.errors import ConfigError
from headscope.tasks._documents import HAYSTACKS, NEEDLES

__all__ = ["DEFAULT_DATA", "GRID_2X2", "GRID_2X3", "REAL", "SYNTHETIC", "PipelineConfig", "Variant"]

#: The Lost-in-the-Middle oracle file, beside the project (see ``../shared/data/README.md``).
DEFAULT_DATA = "../shared/data/nq-open-oracle.jsonl.gz"


@dataclass(frozen=True)
class Variant:
    """One fine-tuning data set: needle realism (``needle``) and haystack diversity (``haystack``).

    >>> Variant.of("symbolic", "diverse")
    Variant(name='symbolic/diverse', needle='symbolic', haystack='diverse')
    """

    name: str
    needle: str
    haystack: str

    def __post_init__(self) -> None:
        if self.needle not in NEEDLES or self.haystack not in HAYSTACKS:
            raise ConfigError(
                f"variant {self.name!r}: needle must be one of {NEEDLES} and haystack one of {HAYSTACKS}; "
                f"got needle={self.needle!r}, haystack={self.haystack!r}"
            )

    @classmethod
    def of(cls, needle: str, haystack: str) -> Variant:
        """The variant named ``"needle/haystack"``."""
        return cls(f"{needle}/{haystack}", needle, haystack)


#: The "real" data: natural needles in diverse natural documents.
REAL = Variant("real", "natural", "diverse")
#: Synthetic variants spanning both axes, from nearly real to fully symbolic.
SYNTHETIC = (
    Variant.of("templated", "diverse"),
    Variant.of("symbolic", "diverse"),
    Variant.of("natural", "templated"),
    Variant.of("natural", "symbolic"),
    Variant.of("templated", "templated"),
    Variant.of("symbolic", "symbolic"),
)

#: The two extremes of both axes (a 2 x 2 factorial): for MDQA, where "real" is real NQ data, the
#: natural/diverse variant is the most realistic synthetic data, and symbolic/symbolic the least.
GRID_2X2 = (
    Variant.of("natural", "diverse"),
    Variant.of("symbolic", "diverse"),
    Variant.of("natural", "symbolic"),
    Variant.of("symbolic", "symbolic"),
)

#: Both needle extremes over all three haystacks (2 x 3): six synthetic variants, so a correlation
#: across them can reach p < 0.05 (the smallest two-sided exact p is 1/12 for four points, 1/360 for six).
GRID_2X3 = (
    Variant.of("natural", "diverse"),
    Variant.of("natural", "templated"),
    Variant.of("natural", "symbolic"),
    Variant.of("symbolic", "diverse"),
    Variant.of("symbolic", "templated"),
    Variant.of("symbolic", "symbolic"),
)


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :func:`~headscope.pipeline.run_pipeline`; :meth:`smoke` and :meth:`full` are presets.

    **Model.** ``base="scratch"`` builds a small Llama (``n_layers`` x ``n_heads``, ``d_model``,
    ``n_kv_heads``, a context of ``n_ctx`` tokens) with :func:`~headscope.models.tiny_folder` and
    pre-trains every weight for ``pretrain_steps`` on plain documents (no needles, so no
    retrieval); any other ``base`` is a :func:`~headscope.load_model` name used as is (e.g.
    ``"smollm2-135m-instruct"``).

    **Data.** The task is the needle in a haystack (:func:`~headscope.tasks.needle_sample`) with
    a context of ``length`` tokens, needles at random depths and ``n_needles - 1`` distractor
    needles. ``real`` and each of ``variants`` give ``n_train`` training samples; every model is
    scored on ``n_eval`` held-out samples of ``real``.

    **Training.** Each variant fine-tunes a copy of the base for ``finetune_steps`` AdamW steps
    of ``batch_size`` samples at ``lr`` (cosine decay), training ``train`` (the seed paper:
    ``"attention_weights"``).

    **Analysis.** Retrieval heads are detected teacher-forced on the detection part of the
    evaluation samples (see *Which samples do what* below), every
    sample counting; with ``require_prediction`` a hit also needs the model's own prediction to be
    the copied token (``False`` credits a head that points at it regardless). Head sets are each
    model's ``top_k`` heads with a positive retrieval score;
    knockout removes the real model's top ``knockout_ks`` heads against ``knockout_seeds``
    random draws, at the rows that predict the answer (``knockout_positions="answer"``, Wu et
    al.'s procedure) or at every position (``"all"``); patching copies the heads shared by the
    real model and ``patch_target``
    (default: the lowest-scoring synthetic variant that shares a head with the real model)
    against their complement and ``n_random`` random sets; the correlation's interval comes
    from ``n_boot`` bootstrap resamples.

    **The MDQA task** (``task="mdqa"``, the :meth:`smollm2` preset). "Real" is Natural Questions
    multi-document QA from ``data`` (:func:`~headscope.tasks.real_mdqa`, ``n_docs`` documents); the
    synthetic variants are :func:`~headscope.tasks.mdqa` with as many documents as bring their
    mean prompt length closest to the real one. Evaluation takes ``n_eval`` held-out real questions
    at each of ``gold_positions``; training rows exclude every evaluation question and passage.
    ``chat`` wraps prompts in the chat template; ``new_tokens > 0`` scores exact match on that
    many greedily generated tokens (Lost in the Middle's best-subspan rule), by gold position;
    ``attention`` is the route of detection and, when ``"fused"``, of training and generation;
    ``span`` is the detection span (``"answer"``: gold-answer occurrences in the gold document);
    knockout scored by ``knockout_score`` (``"accuracy"`` or ``"logprob"``, the answer's
    log-probability); ``score_base`` also scores the untouched base model.

    **Which samples do what.** Every model is scored on all evaluation samples. They are split
    (:func:`~headscope.pipeline.split_evaluation`) into two disjoint parts, each balanced over
    gold positions: ``n_analysis`` samples (half of each position when ``None``) on which
    knockout and patching measure, and the rest, on which every model's retrieval heads are
    detected. So the heads that knockout and patching test were chosen on other questions.

    >>> PipelineConfig.smoke().n_variants
    5
    """

    variants: tuple[Variant, ...] = SYNTHETIC
    real: Variant = REAL
    base: str = "scratch"
    n_layers: int = 3
    d_model: int = 64
    n_heads: int = 8
    n_kv_heads: int = 4
    n_ctx: int = 256
    length: int = 96
    n_needles: int = 1
    n_train: int = 1024
    n_eval: int = 32
    pretrain_steps: int = 400
    pretrain_lr: float = 3e-3
    finetune_steps: int = 600
    lr: float = 3e-3
    batch_size: int = 8
    train: str = "attention_weights"
    top_k: int = 6
    require_prediction: bool = True
    knockout_ks: tuple[int, ...] = (1, 2, 4, 6)
    knockout_seeds: tuple[int, ...] = (0, 1, 2)
    knockout_positions: str = "answer"
    n_random: int = 5
    patch_target: str | None = None
    n_boot: int = 2000
    seed: int = 0
    task: str = "needle"
    n_docs: int = 10
    gold_positions: tuple[int, ...] = (0, 4, 9)
    data: str = DEFAULT_DATA
    chat: bool = False
    attention: str = "auto"
    span: str = "needle"
    new_tokens: int = 0
    n_analysis: int | None = None
    knockout_score: str = "accuracy"
    score_base: bool = False

    def __post_init__(self) -> None:
        names = [v.name for v in (self.real, *self.variants)]
        problems = []
        if len(set(names)) != len(names):
            problems.append(f"variant names must be unique; got {names}")
        if len(self.variants) < 3:
            problems.append(
                f"a correlation across variants needs at least 3 synthetic variants; got {len(self.variants)}"
            )
        if self.patch_target is not None and self.patch_target not in names[1:]:
            problems.append(f"patch_target must name a synthetic variant ({names[1:]}); got {self.patch_target!r}")
        for name in ("n_train", "n_eval", "finetune_steps", "batch_size", "top_k", "length", "n_needles"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.pretrain_steps < 0:
            problems.append(f"pretrain_steps must be >= 0; got {self.pretrain_steps}")
        if not self.knockout_ks or min(self.knockout_ks) < 1:
            problems.append(f"knockout_ks must be head counts >= 1; got {self.knockout_ks}")
        if self.task not in ("needle", "mdqa"):
            problems.append(f"task must be 'needle' or 'mdqa'; got {self.task!r}")
        if self.task == "mdqa" and not all(0 <= p < self.n_docs for p in self.gold_positions):
            problems.append(
                f"gold_positions must lie in [0, n_docs - 1 = {self.n_docs - 1}]; got {self.gold_positions}"
            )
        if self.knockout_score not in ("accuracy", "logprob"):
            problems.append(f"knockout_score must be 'accuracy' or 'logprob'; got {self.knockout_score!r}")
        if self.attention not in ("auto", "fused", "eager"):
            problems.append(f"attention must be 'auto', 'fused' or 'eager'; got {self.attention!r}")
        groups = len(set(self.gold_positions)) if self.task == "mdqa" else 1
        per_group = self.n_eval * (len(self.gold_positions) // groups if self.task == "mdqa" else 1)
        if self.n_analysis is None and per_group < 2:
            problems.append(
                f"n_eval must be at least 2 to split each gold position's questions into detection and analysis; "
                f"got {self.n_eval}"
            )
        elif self.n_analysis is not None and not 1 <= -(-self.n_analysis // groups) < per_group:
            problems.append(
                f"n_analysis must leave every gold position at least one detection sample: between 1 and "
                f"{groups * (per_group - 1)} for {per_group} evaluation samples at each of {groups} position(s); "
                f"got {self.n_analysis}"
            )
        if self.knockout_positions not in ("answer", "all"):
            problems.append(f"knockout_positions must be 'answer' or 'all'; got {self.knockout_positions!r}")
        if problems:
            raise ConfigError("invalid PipelineConfig: " + "; ".join(problems))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "knockout_ks", tuple(int(k) for k in self.knockout_ks))
        object.__setattr__(self, "knockout_seeds", tuple(int(s) for s in self.knockout_seeds))
        object.__setattr__(self, "gold_positions", tuple(int(p) for p in self.gold_positions))

    @property
    def n_variants(self) -> int:
        """Models trained: the real one and each synthetic variant."""
        return 1 + len(self.variants)

    @classmethod
    def smoke(cls, **changes: Any) -> PipelineConfig:
        """A run of a minute or two on two CPU cores: four synthetic variants, short training, few samples.

        Too short for the heads to settle: it checks the plumbing, not the science. Heads are
        credited without ``require_prediction``, since the barely trained models predict few
        answers correctly.
        """
        preset = cls(
            variants=SYNTHETIC[:2] + SYNTHETIC[3:4] + SYNTHETIC[5:],
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            length=64,
            n_train=128,
            n_eval=16,
            pretrain_steps=40,
            finetune_steps=100,
            top_k=3,
            require_prediction=False,
            knockout_ks=(1, 3),
            knockout_seeds=(0, 1),
            n_random=2,
            n_boot=500,
        )
        return replace(preset, **changes)

    @classmethod
    def full(cls, **changes: Any) -> PipelineConfig:
        """The laptop-scale experiment: six synthetic variants; 5-11 minutes (331-637 s) on a shared 2-core CPU."""
        return replace(cls(), **changes)

    @classmethod
    def smollm2(cls, **changes: Any) -> PipelineConfig:
        """The seed paper's experiment on SmolLM2-135M-Instruct and real NQ multi-document QA, ~55 min on 2 cores.

        Five documents (~750 tokens in the chat format) with the gold one at positions 0 / 2 / 4:
        long enough for a position effect, short enough that one training step (forward and
        backward, fused) takes about 6 s. Each of the seven models (real and the 2 x 3 synthetic
        grid: natural and symbolic needles in diverse, templated and symbolic haystacks; six points
        let the recall-score correlation reach p < 0.05, four cannot) trains 32 steps of one example
        (32 examples) at ``lr=5e-5``. 16 held-out questions
        per position (48) score every model, and the base, by exact match in 24 generated tokens;
        36 of them (12 per position) give each model's heads, the other 12 (4 per position) are
        where knockout and patching measure.

        **Every weight trains** (``train="all"``), unlike the seed paper's attention-only
        fine-tuning: with attention weights only, no setting tried beat the base model on held-out
        exact match by more than noise (48 questions, seed 0: base 0.229; 16 steps at 1e-4, 32 at
        3e-4 and 48 at 1e-3 all gave 0.271), so the run could not test whether recall predicts
        score. Training every weight for 32 steps at 5e-5 gave 0.375 (seed 0; 13 questions gained,
        6 lost) and 0.542 against a base of 0.0625 (seed 1; 25 gained, 2 lost); 32 steps at 1e-4
        and 48 at 5e-5 gave 0.3125. Pass ``train="attention_weights"`` for the paper's setting.
        Measured: ~6 s per training step, ~1.5-3 s per generation, ~1.5 s per detection forward.
        """
        preset = cls(
            variants=GRID_2X3,
            base="smollm2-135m-instruct",
            task="mdqa",
            n_docs=5,
            gold_positions=(0, 2, 4),
            chat=True,
            attention="fused",
            span="answer",
            new_tokens=24,
            n_train=32,
            n_eval=16,
            finetune_steps=32,
            batch_size=1,
            lr=5e-5,
            train="all",
            top_k=10,
            require_prediction=True,
            knockout_ks=(5, 10, 20),
            knockout_seeds=(0, 1),
            knockout_score="logprob",
            n_random=3,
            n_analysis=12,
            score_base=True,
        )
        return replace(preset, **changes)

    @classmethod
    def smollm2_smoke(cls, **changes: Any) -> PipelineConfig:
        """:meth:`smollm2` shrunk to a plumbing check of about a minute: two documents, one training step and
        sample, two evaluation questions per position (one chooses heads, one tests them)."""
        preset = cls.smollm2(
            variants=GRID_2X2[:3],
            n_docs=2,
            gold_positions=(0, 1),
            new_tokens=4,
            n_train=1,
            n_eval=2,
            finetune_steps=1,
            top_k=3,
            require_prediction=False,
            knockout_ks=(2,),
            knockout_seeds=(0,),
            n_random=1,
            n_analysis=2,
            n_boot=100,
        )
        return replace(preset, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        data = dict(data)
        data["real"] = Variant(**data["real"])
        data["variants"] = tuple(Variant(**v) for v in data["variants"])
        for key in ("knockout_ks", "knockout_seeds", "gold_positions"):
            data[key] = tuple(data[key])
        return cls(**data)
