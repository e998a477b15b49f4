"""``PipelineConfig``: what the synthetic-versus-real pipeline trains, measures and compares."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from headscope.errors import ConfigError
from headscope.tasks._documents import HAYSTACKS, NEEDLES

__all__ = ["REAL", "SYNTHETIC", "PipelineConfig", "Variant"]


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

    **Analysis.** Retrieval heads are detected teacher-forced on the evaluation samples, every
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
        if self.knockout_positions not in ("answer", "all"):
            problems.append(f"knockout_positions must be 'answer' or 'all'; got {self.knockout_positions!r}")
        if problems:
            raise ConfigError("invalid PipelineConfig: " + "; ".join(problems))
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "knockout_ks", tuple(int(k) for k in self.knockout_ks))
        object.__setattr__(self, "knockout_seeds", tuple(int(s) for s in self.knockout_seeds))

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        data = dict(data)
        data["real"] = Variant(**data["real"])
        data["variants"] = tuple(Variant(**v) for v in data["variants"])
        for key in ("knockout_ks", "knockout_seeds"):
            data[key] = tuple(data[key])
        return cls(**data)
