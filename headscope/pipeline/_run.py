"""``run_pipeline``: the seed paper's experiment, stage by stage, each stage a small function."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headscope.ablation import KnockoutCurve, knockout_curve
from headscope.compare import Correlation, correlate, head_set, jaccard, recall
from headscope.distributed import World, item_key, model_fingerprint, sharded_map
from headscope.errors import ConfigError, HeadscopeError
from headscope.heads import Head
from headscope.models import load_folder, load_model, model_info, name_model, tiny_folder, tokenizer_of
from headscope.patching import PatchingComparison, compare_patching
from headscope.pipeline._config import PipelineConfig, Variant
from headscope.pipeline._data import generic_samples, split_evaluation, variant_samples
from headscope.pipeline._result import PipelineResult, VariantResult
from headscope.pipeline._score import answer_correct, answer_logprob, generated_match, sample_scores
from headscope.retrieval import RetrievalScores, detect_retrieval_heads
from headscope.tasks import EncodedSample, Sample
from headscope.training import FinetuneResult, finetune, load_weights, save_weights

__all__ = [
    "ModelScore",
    "base_model",
    "count_every_sample",
    "finetune_variant",
    "retrieval_heads",
    "run_pipeline",
    "score_model",
]


def count_every_sample(sample: Sample, output: str) -> bool:
    """Detection's success rule here: every sample counts (a hit still needs a correct copy)."""
    return True


def base_model(config: PipelineConfig, *, progress: bool = False) -> tuple[Any, FinetuneResult | None]:
    """The model every variant starts from, and its pre-training run (``None`` for a named model).

    ``config.base == "scratch"``: a fresh small Llama pre-trained on plain documents; otherwise
    the named model from :func:`~headscope.load_model`.
    """
    if config.base != "scratch":
        return load_model(config.base), None
    folder = tiny_folder(
        "llama",
        n_layers=config.n_layers,
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        n_ctx=config.n_ctx,
        seed=config.seed,
    )
    model = name_model(load_folder(folder), f"scratch-llama-{config.n_layers}x{config.n_heads}")
    if config.pretrain_steps == 0:
        return model, None
    text = generic_samples(tokenizer_of(model), n=4 * config.batch_size * 8, length=config.length, seed=config.seed)
    run = finetune(
        model,
        text,
        train="all",
        lr=config.pretrain_lr,
        steps=config.pretrain_steps,
        batch_size=config.batch_size,
        schedule="cosine",
        warmup=min(20, config.pretrain_steps // 5),
        seed=config.seed,
        progress=progress,
    )
    return model, run


def finetune_variant(
    base: Any,
    samples: Sequence[Sample | EncodedSample],
    config: PipelineConfig,
    *,
    progress: bool = False,
    eval_fn: Callable[[Any, int], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
) -> tuple[Any, FinetuneResult]:
    """A copy of ``base`` fine-tuned on ``samples`` (``config.train`` parameters); ``base`` is left untouched.

    With ``config.attention == "fused"`` training runs through the fused (sdpa) twin of the copy.
    ``eval_fn`` and ``eval_every`` go to :func:`~headscope.training.finetune` (e.g. to follow the
    heads as training goes).
    """
    model = copy.deepcopy(base)
    run = finetune(
        model,
        samples,
        train=config.train,  # type: ignore[arg-type]
        lr=config.lr,
        steps=config.finetune_steps,
        batch_size=config.batch_size,
        schedule="cosine",
        warmup=min(20, config.finetune_steps // 5),
        seed=config.seed,
        attention="fused" if config.attention == "fused" else "eager",
        eval_fn=eval_fn,
        eval_every=eval_every,
        progress=progress,
    )
    return model, run


def retrieval_heads(
    model: Any, samples: Sequence[Sample], config: PipelineConfig
) -> tuple[RetrievalScores, list[Head]]:
    """Teacher-forced retrieval scores on ``samples`` and the head set: the ``top_k`` best with a positive score."""
    scores = detect_retrieval_heads(
        model,
        samples,
        success=count_every_sample,
        require_prediction=config.require_prediction,
        span=config.span,
        attention=config.attention,  # type: ignore[arg-type]
        progress=False,
    )
    heads = head_set(scores.hit_sums, top_k=config.top_k, threshold=0.0)
    return scores, heads


def _correlations(synthetic: Sequence[VariantResult], config: PipelineConfig) -> tuple[dict, list[str]]:
    """Recall against each score across the synthetic variants (Spearman and Pearson), each with a
    permutation p-value, a bootstrap over variants and a paired bootstrap over the evaluation samples."""
    corrs: dict[str, Correlation | None] = {}
    notes: list[str] = []
    recalls = [v.recall for v in synthetic]
    if None in recalls:
        return dict.fromkeys(("accuracy", "accuracy-pearson")), []
    for key, items in (("accuracy", "sample_accuracy"), ("logprob", "sample_logprob")):
        values = [getattr(v, key) for v in synthetic]
        if None in values:
            continue
        per_sample = [getattr(v, items) for v in synthetic]
        for method, name in (("spearman", key), ("pearson", f"{key}-pearson")):
            try:
                corrs[name] = correlate(
                    recalls,
                    values,
                    method=method,  # type: ignore[arg-type]
                    n_boot=config.n_boot,
                    seed=config.seed,
                    labels=[v.name for v in synthetic],
                    y_items=per_sample if all(per_sample) else None,
                )
            except (ValueError, HeadscopeError) as err:
                corrs[name] = None
                notes.append(f"no {method} correlation of recall with {key}: {err}")
    return corrs, notes


def _knockout(
    model: Any,
    scores: RetrievalScores,
    samples: Sequence[Sample],
    config: PipelineConfig,
    sharding: Mapping[str, Any] | None = None,
) -> tuple[KnockoutCurve | None, list[str]]:
    """The knockout curve of the heads with a positive retrieval score, best first (never zero-score heads)."""
    ranking = [head for head, score in scores.above(0.0)]
    ks = [k for k in config.knockout_ks if k <= len(ranking)]
    notes = []
    if len(ks) < len(config.knockout_ks):
        notes.append(
            f"knockout: only {len(ranking)} heads have a positive retrieval score, so k in "
            f"{[k for k in config.knockout_ks if k > len(ranking)]} was skipped (zero-score heads are never ranked)"
        )
    if not ks:
        return None, notes
    curve = knockout_curve(
        model,
        samples,
        ranking,
        answer_logprob if config.knockout_score == "logprob" else answer_correct,
        ks=ks,
        seeds=config.knockout_seeds,
        positions=config.knockout_positions,  # type: ignore[arg-type]
        progress=False,
        **(sharding or {}),
    )
    return curve, notes


def _patch_target(variants: Sequence[VariantResult], config: PipelineConfig) -> VariantResult:
    """The configured target, else the lowest-scoring synthetic variant that shares a head with the real model.

    The lowest score leaves the largest gap to close; without a shared head there is nothing to
    patch, so variants sharing none come last.
    """
    synthetic = variants[1:]
    if config.patch_target is not None:
        return next(v for v in synthetic if v.name == config.patch_target)
    real = set(variants[0].heads)
    return min(synthetic, key=lambda v: (not real & set(v.heads), v.accuracy, v.logprob or 0.0))


def _patching(
    real: Any,
    target: Any,
    shared: list[Head],
    samples: Sequence[Sample],
    config: PipelineConfig,
    sharding: Mapping[str, Any] | None = None,
) -> tuple[PatchingComparison | None, str | None]:
    n_all = model_info(real).n_layers * model_info(real).n_heads
    if not shared or len(shared) == n_all:
        return None, f"no patching: the shared head set has {len(shared)} of {n_all} heads (needs some, not all)"
    encoded = [s.encode(tokenizer_of(target)) for s in samples]
    cmp = compare_patching(
        target, real, encoded, shared, n_random=config.n_random, seed=config.seed, progress=False, **(sharding or {})
    )
    return cmp, None


@dataclass(frozen=True)
class ModelScore:
    """One model on the evaluation samples: mean ``accuracy`` and ``logprob`` (``None`` when generated),
    ``(gold position, accuracy)`` pairs, and the per-sample values behind the means, in sample order."""

    accuracy: float
    logprob: float | None
    by_position: tuple[tuple[int, float], ...]
    sample_accuracy: tuple[float, ...]
    sample_logprob: tuple[float, ...]


def score_model(model: Any, samples: Sequence[Sample], config: PipelineConfig) -> ModelScore:
    """Accuracy, answer log-probability and accuracy by gold position of ``model`` on ``samples``.

    ``config.new_tokens > 0``: generated best-subspan exact match (no log-probability, ``None``),
    by ``meta["gold_position"]``; otherwise teacher-forced exact match and log-probability
    (:func:`~headscope.pipeline.sample_scores`, no positions).
    """
    if config.new_tokens <= 0:
        pairs = sample_scores(model, samples)
        accuracy, logprob = (tuple(v) for v in zip(*pairs, strict=True))
        return ModelScore(sum(accuracy) / len(accuracy), sum(logprob) / len(logprob), (), accuracy, logprob)
    matches = generated_match(model, samples, max_new_tokens=config.new_tokens, attention=config.attention)
    by: dict[int, list[float]] = {}
    for sample, match in zip(samples, matches, strict=True):
        by.setdefault(_position(sample), []).append(match)
    by_position = tuple((p, sum(v) / len(v)) for p, v in sorted(by.items()))
    return ModelScore(sum(matches) / len(matches), None, by_position, tuple(matches), ())


def _position(sample: Sample) -> int:
    """The sample's gold-document position, or -1 where it has none (needle samples)."""
    position = sample.meta.get("gold_position")
    return position if isinstance(position, int) else -1


def _model_score(row: Mapping[str, Any]) -> ModelScore:
    """A :class:`ModelScore` back from ``dataclasses.asdict`` (through JSON: tuples came back as lists)."""
    return ModelScore(
        row["accuracy"],
        row["logprob"],
        tuple((p, a) for p, a in row["by_position"]),
        tuple(row["sample_accuracy"]),
        tuple(row["sample_logprob"]),
    )


def _mean_tokens(model: Any, samples: Sequence[Sample]) -> float:
    tok = tokenizer_of(model)
    lengths = [len(e.input_ids) + len(e.answer_ids) for e in (s.encode(tok) for s in samples)]
    return sum(lengths) / len(lengths)


def run_pipeline(
    config: PipelineConfig,
    *,
    progress: bool = True,
    distributed: bool = False,
    resume: str | Path | None = None,
) -> PipelineResult:
    """Fine-tune the base on each variant, score, detect heads, correlate, knock out and patch.

    1. Build the base model (:func:`base_model`) and fine-tune a copy on the real data and on each
       synthetic variant (:func:`finetune_variant`).
    2. Score each model (and the base, with ``config.score_base``) on every held-out real sample
       (:func:`score_model`) and detect its retrieval heads on the detection part of them
       (:func:`retrieval_heads`, :func:`~headscope.pipeline.split_evaluation`); recall = share of
       the real model's heads recovered.
    3. Correlate recall with each score across the synthetic variants (Spearman and Pearson,
       permutation p-values, bootstrap intervals over variants and over samples).
    4. Knock out the real model's top heads against random heads on the analysis part
       (:func:`~headscope.ablation.knockout_curve`).
    5. Patch the heads the real model shares with the patch target from real into target, against
       the complement and random sets, on the analysis part (:func:`~headscope.patching.compare_patching`).

    ``distributed=True`` splits the variants (and then the knockout's and the patching's work)
    over the ranks of the initialised ``torch.distributed`` group; every rank returns the
    one-process result (timings aside). It needs ``resume``, a folder all ranks read: each
    fine-tuned model's weights go there, for the ranks that knock out or patch it. ``resume``
    alone keeps each finished variant (results and weights), so an interrupted run restarts
    from the variants it has.

    ``result.seconds`` times each stage (on this rank): ``pretrain`` (building or loading the base), ``data``,
    ``finetune``, ``score``, ``heads``, ``knockout``, ``patching``.
    """
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = seconds.get(name, 0.0) + now - clock
        clock = now

    base, pretraining = base_model(config, progress=False)
    tok, n_ctx = tokenizer_of(base), model_info(base).n_ctx
    lap("pretrain")
    eval_samples = variant_samples(config, config.real, tok, split="eval", n_ctx=n_ctx)
    detect_ids, analysis_ids = split_evaluation(eval_samples, config.n_analysis)
    detection = [eval_samples[i] for i in detect_ids]
    analysis = [eval_samples[i] for i in analysis_ids]
    lap("data")
    if distributed and resume is None:
        raise ConfigError(
            "run_pipeline(distributed=True) needs resume=, a folder every rank can read: ranks hand each other "
            "the fine-tuned models through it"
        )
    folder = Path(resume) if resume is not None else None
    here: dict[str, Any] = {}  # the models this rank fine-tuned, by variant name

    def run(variant: Variant | None) -> dict[str, Any]:
        """Fine-tune on one variant (``None``: the base as it is), score it and detect its heads."""
        if variant is None:
            model, run_, tokens, name = base, None, None, "base"
        else:
            train = variant_samples(config, variant, tok, split="train", n_ctx=n_ctx)
            tokens = _mean_tokens(base, train)
            lap("data")
            model, run_ = finetune_variant(base, train, config)
            lap("finetune")
            name = variant.name
        score = score_model(model, eval_samples, config)
        lap("score")
        scores_, heads = retrieval_heads(model, detection, config)
        lap("heads")
        weights = None
        if run_ is not None:
            here[name] = model
            if folder is not None:  # another rank (or a resumed run) may need this model later
                weights = f"{keys[name]}.safetensors"
                save_weights(model, folder / weights, run_.trained)
        return {
            "name": name,
            "score": asdict(score),
            "scores": scores_.to_dict(),
            "heads": [list(h) for h in heads],
            "tokens": tokens,
            "training": run_.to_dict() if run_ is not None else None,
            "weights": weights,
        }

    variants: list[Variant] = [config.real, *config.variants]
    items: list[Variant | None] = [None, *variants] if config.score_base else list(variants)
    base_key = model_fingerprint(base) if folder is not None else ""
    keys = {
        "base" if v is None else v.name: item_key("pipeline", repr(config), base_key, None if v is None else v.name)
        for v in items
    }
    done = sharded_map(
        run,
        items,
        keys=[keys["base" if v is None else v.name] for v in items],
        costs=[0.0 if v is None else 1.0 for v in items],
        partial=folder,
        desc="variants",
        unit="variant",
        progress=progress,
        world=None if distributed else World(),
    )

    def model_of(name: str) -> Any:
        """A fine-tuned model: this rank's own, or the base with the weights another rank saved."""
        if name not in here:
            row = next(r for r in done if r["name"] == name)
            here[name] = copy.deepcopy(base)
            load_weights(here[name], folder / row["weights"])  # type: ignore[operator]
        return here[name]

    training: dict[str, FinetuneResult] = {}
    scores: dict[str, RetrievalScores] = {}
    rows: list[dict[str, Any]] = []
    reference = None
    for row in done:
        scores[row["name"]] = RetrievalScores.from_dict(row["scores"])
        entry = dict(score=_model_score(row["score"]), heads=[Head(*h) for h in row["heads"]], tokens=row["tokens"])
        if row["training"] is None:
            reference = dict(name="base", **entry)
            continue
        training[row["name"]] = FinetuneResult.from_dict(row["training"])
        rows.append(dict(variant=next(v for v in variants if v.name == row["name"]), **entry))
    real_heads = rows[0]["heads"]
    notes: list[str] = []
    if not real_heads:
        notes.append(
            "the real-data model has no retrieval head (no head copied a correctly predicted answer token), so "
            "recall is undefined (None); train longer (finetune_steps), on more data (n_train) or with a higher lr"
        )

    def result_of(row: dict[str, Any], name: str, needle: str, haystack: str) -> VariantResult:
        score: ModelScore = row["score"]
        heads: list[Head] = row["heads"]
        return VariantResult(
            name=name,
            needle=needle,
            haystack=haystack,
            accuracy=score.accuracy,
            logprob=score.logprob,
            heads=tuple(heads),
            recall=recall(real_heads, heads) if real_heads else None,
            jaccard=jaccard(real_heads, heads) if real_heads or heads else None,
            by_position=score.by_position,
            train_tokens=row["tokens"],
            sample_accuracy=score.sample_accuracy,
            sample_logprob=score.sample_logprob,
        )

    results = tuple(result_of(r, r["variant"].name, r["variant"].needle, r["variant"].haystack) for r in rows)
    base_result = result_of(reference, "base", "-", "-") if reference is not None else None
    correlations, corr_notes = _correlations(results[1:], config)
    notes += corr_notes
    sharding = {"distributed": distributed, "resume": folder}
    knock, knock_notes = _knockout(model_of(config.real.name), scores[config.real.name], analysis, config, sharding)
    notes += knock_notes
    lap("knockout")
    target = _patch_target(results, config)
    shared = sorted(set(real_heads) & set(target.heads))
    patching, note = _patching(model_of(config.real.name), model_of(target.name), shared, analysis, config, sharding)
    notes += [note] if note else []
    lap("patching")
    seconds["total"] = sum(seconds.values())
    return PipelineResult(
        config=config,
        variants=results,
        scores=scores,
        training=training,
        pretraining=pretraining,
        correlations=correlations,
        knockout=knock,
        patching=patching,
        patch_target=target.name,
        seconds=seconds,
        notes=tuple(notes),
        base=base_result,
        detection=tuple(detect_ids),
        analysis=tuple(analysis_ids),
        gold_positions=tuple(_position(s) for s in eval_samples),
    )
