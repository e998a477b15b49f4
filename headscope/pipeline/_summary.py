"""The plain-text summary of a pipeline run: the numbers, then what they do and do not support."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from headscope.compare._permutation import sign_flip_test
from headscope.heads import as_heads

if TYPE_CHECKING:
    from headscope.compare import Correlation
    from headscope.pipeline._result import PipelineResult, VariantResult

__all__ = ["MIN_VARIANTS", "benchmark_line", "correlation_verdict", "summarize"]


def _table(result: PipelineResult) -> list[str]:
    positions = [p for p, _ in result.real.by_position]
    em_cols = "".join(f" {'EM@' + str(p):>6s}" for p in positions)
    head = f"{'variant':20s} {'accuracy':>8s}{em_cols} {'logprob':>8s} {'recall':>6s} {'jaccard':>7s} {'tokens':>6s}"
    lines = [head + "  heads"]
    for v in result.models:
        heads = " ".join(map(str, as_heads(v.heads))) or "-"
        overlap = f"{_num(v.recall):>6s} {_num(v.jaccard):>7s}"
        ems = "".join(f" {em:6.3f}" for _, em in v.by_position)
        logprob = "n/a" if v.logprob is None else f"{v.logprob:.2f}"
        tokens = "-" if v.train_tokens is None else f"{v.train_tokens:.0f}"
        lines.append(f"{v.name:20s} {v.accuracy:8.3f}{ems} {logprob:>8s} {overlap} {tokens:>6s}  {heads}")
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


#: The fewest variants a correlation verdict is given on (the smallest exact two-sided p for 4 points is 1/12).
MIN_VARIANTS = 5


def correlation_verdict(corr: Correlation) -> tuple[bool, str]:
    """Whether a recall-score correlation supports "recall predicts score", and why (or why not).

    Reproduced only with at least :data:`MIN_VARIANTS` variants, a permutation p-value below 0.05,
    a positive correlation and, where per-sample scores were resampled, a bootstrap interval over
    samples that excludes 0. Never on scipy's asymptotic p-value alone (results saved before
    permutation p-values).
    """
    if corr.n < MIN_VARIANTS:
        return False, (
            f"NOT testable: n = {corr.n} variants; the smallest possible two-sided exact p is {corr.p_min_text()}, "
            f"so no ordering of the variants could reach p < 0.05 (a verdict needs at least {MIN_VARIANTS})"
        )
    if not corr.significant:
        why = "an asymptotic p-value from an old result" if corr.p_method == "asymptotic" else "not below 0.05"
        return False, f"NOT reproduced: {corr.p_text()} is {why}"
    if corr.value <= 0:
        return False, f"NOT reproduced: the correlation is negative ({corr.value:+.2f})"
    if corr.item_ci_low is not None and not corr.item_ci_low > 0:
        return False, (
            f"NOT reproduced: resampling the questions within each variant gives an interval "
            f"[{corr.item_ci_low:+.2f}, {corr.item_ci_high:+.2f}] that includes 0"
        )
    return True, f"REPRODUCED ({corr.p_text()})"


def _correlation(key: str, corr: Correlation | None) -> str:
    method = "Pearson" if key.endswith("-pearson") else "Spearman"
    key = key.removesuffix("-pearson")
    if corr is None:
        return f"{method}(recall, {key}): undefined (see notes)"
    intervals = f"{corr.confidence:.0%} bootstrap CI over variants [{corr.ci_low:+.2f}, {corr.ci_high:+.2f}]"
    if corr.item_ci_low is not None:
        intervals += (
            f", over questions ({corr.item_resampling}, {corr.n_items[0]} per variant) "
            f"[{corr.item_ci_low:+.2f}, {corr.item_ci_high:+.2f}]"
        )
    return (
        f"{corr.method.capitalize()}(recall, {key}) = {corr.value:+.2f}, {corr.p_text()}, n = {corr.n} variants; "
        f"{intervals}; {correlation_verdict(corr)[1]}"
    )


def _knockout(result: PipelineResult) -> list[str]:
    curve = result.knockout
    if curve is None:
        return ["knockout: skipped, since no head of the real model has a positive retrieval score (see notes)."]
    random = curve.random_mean()
    metric = result.config.knockout_score
    lines = [
        f"knockout of the real model's heads ({metric}, {curve.positions} positions, {curve.n_samples} samples; "
        f"intact {curve.baseline:.3f}):"
    ]
    for k, top, rand in zip(curve.ks, curve.top, random, strict=True):
        lines.append(f"  k={k:<3d} top heads {top:.3f}   random heads {rand:.3f} (mean of {len(curve.seeds)} draws)")
    k, top, rand = curve.ks[-1], curve.top[-1], random[-1]
    if curve.baseline == 0 and metric == "accuracy":
        lines.append("  the intact model answers nothing exactly, so knockout cannot show anything here.")
    elif top < rand:
        lines.append(f"  at k={k} the top heads cost {rand - top:.3f} more {metric} than random heads.")
    else:
        lines.append(f"  at k={k} the top heads cost no more than random heads: no sign they carry the task.")
    return lines


def _patching(result: PipelineResult) -> list[str]:
    cmp = result.patching
    if cmp is None:
        return ["patching: not run (see notes)"]
    v = cmp.values
    rand = cmp.random_values()
    mean_rand = sum(rand) / len(rand) if rand else float("nan")
    lines = [
        f"patching real -> {result.patch_target} ({cmp.metric}, mean over {cmp.settings.get('n_inputs')} samples):",
        f"  target {v['target']:.3f}, source (real) {v['source']:.3f}",
        f"  shared heads ({len(cmp.sets['shared'])}) {v['shared']:.3f}, complement "
        f"({len(cmp.sets['complement'])}) {v['complement']:.3f}, random ({len(rand)} sets) {mean_rand:.3f}",
    ]
    gap = v["source"] - v["target"]
    if gap > 0:
        lines.append(
            f"  share of the gap recovered: shared {cmp.recovered('shared'):+.2f}, complement "
            f"{cmp.recovered('complement'):+.2f}, random {(mean_rand - v['target']) / gap:+.2f}"
        )
    else:
        lines.append("  the target already scores at least as well as the real model: there is no gap to recover.")
    return lines


def _split(result: PipelineResult) -> str:
    """Which evaluation samples chose the heads and which tested them."""
    if not result.analysis:
        return (
            "Samples: not recorded (a result saved before heads were chosen apart from the samples "
            "that test them); accuracy is over every evaluation sample."
        )

    def count(ids: tuple[int, ...]) -> str:
        positions = [result.gold_positions[i] for i in ids] if result.gold_positions else []
        if not positions or set(positions) == {-1}:
            return f"{len(ids)} samples"
        per = ", ".join(f"{positions.count(p)} at gold {p}" for p in sorted(set(positions)))
        return f"{len(ids)} samples ({per})"

    n = len(result.detection) + len(result.analysis)
    return (
        f"Samples: accuracy over all {n} evaluation samples; retrieval heads chosen on {count(result.detection)}; "
        f"knockout and patching measured on {count(result.analysis)}, none of which chose the heads."
    )


def _setup(result: PipelineResult) -> str:
    cfg = result.config
    if cfg.task == "mdqa":
        scoring = (
            f"exact match (best subspan) of {cfg.new_tokens} generated tokens"
            if cfg.new_tokens > 0
            else "teacher-forced exact match"
        )
        return (
            f"Synthetic vs real on multi-document QA: {cfg.n_variants} models fine-tuned from {cfg.base!r} "
            f"({cfg.finetune_steps} steps of {cfg.batch_size}, {cfg.n_train} examples each, train={cfg.train!r}, "
            f"lr={cfg.lr:g}), scored by {scoring} on {cfg.n_eval} held-out real NQ questions at each gold position "
            f"{list(cfg.gold_positions)} of {cfg.n_docs} documents; head sets = top {cfg.top_k} heads with a positive "
            f"retrieval score (span {cfg.span!r})."
        )
    return (
        f"Synthetic vs real: {cfg.n_variants} models fine-tuned from {cfg.base!r} "
        f"({cfg.finetune_steps} steps each, train={cfg.train!r}), scored on {cfg.n_eval} held-out real samples "
        f"of {cfg.length} tokens; head sets = top {cfg.top_k} heads with a positive retrieval score."
    )


def _claims(result: PipelineResult) -> list[str]:
    """The seed paper's five claims, each marked reproduced or not by this run's numbers."""
    real, syn = result.real, result.synthetic
    best = max(syn, key=lambda v: v.accuracy)
    lines = ["The seed paper's claims, as this run measured them:"]
    lines.append(
        f"  1. synthetic data fall short of real data: {_short_verdict(real, best)} "
        f"(real {real.accuracy:.3f}, best synthetic {best.accuracy:.3f} ({best.name})"
        + (f", base {result.base.accuracy:.3f}" if result.base is not None else "")
        + ")"
    )
    recalls = [v.recall for v in syn if v.recall is not None]
    if recalls:
        lines.append(
            f"  2. synthetic models' heads overlap the real ones: recall {min(recalls):.2f}-{max(recalls):.2f} "
            f"of the real top {result.config.top_k} ({'REPRODUCED' if min(recalls) >= 0.5 else 'partly'})"
            + _base_recall(result, min(recalls))
        )
    corr = result.correlations.get("accuracy")
    if corr is None:
        lines.append("  3. recall predicts score: NOT testable here (correlation undefined, see notes)")
    else:
        lines.append(
            f"  3. recall predicts score: Spearman {corr.value:+.2f} over {corr.n} variants, {corr.p_text()}: "
            f"{correlation_verdict(corr)[1]}"
        )
    curve = result.knockout
    if curve is None:
        lines.append("  4. knocking out the heads shows they are necessary: NOT run")
    else:
        drop_top, drop_random = curve.baseline - curve.top[-1], curve.baseline - curve.random_mean()[-1]
        seen = bool(drop_top > max(2 * drop_random, 0.0))
        lines.append(
            f"  4. the heads are necessary: top-{curve.ks[-1]} knockout costs {drop_top:.3f}, random "
            f"{drop_random:.3f}: {_untested(seen, curve.n_samples, len(curve.seeds), 'random draws')}"
        )
    cmp = result.patching
    if cmp is None:
        lines.append("  5. patching the shared heads explains part of the gap: NOT run (see notes)")
    elif cmp.values["source"] <= cmp.values["target"]:
        lines.append("  5. patching the shared heads explains part of the gap: NOT testable (no gap to recover)")
    else:
        shared, rand = cmp.recovered("shared"), cmp.random_values()
        mean_rand = (sum(rand) / len(rand) - cmp.values["target"]) / (cmp.values["source"] - cmp.values["target"])
        ok = bool(0 < shared < 1 and shared > mean_rand)
        lines.append(
            f"  5. patching the shared heads explains part of the gap: {shared:+.2f} of it "
            f"(random sets {mean_rand:+.2f}, complement {cmp.recovered('complement'):+.2f}): "
            f"{_untested(ok, len(result.analysis) or None, len(rand), 'random sets')}"
        )
    return lines


def _base_recall(result: PipelineResult, lowest: float) -> str:
    """The untouched base model's recall of the real heads, the overlap no fine-tuning data is needed for."""
    base = result.base
    if base is None or base.recall is None:
        return ""
    said = f"; the untouched base model recalls {base.recall:.2f}"
    if base.recall >= lowest:
        said += ", as much as the least overlapping variant, so the overlap owes little to the training data"
    return said


#: The largest two-sided p-value a claim is called reproduced on.
ALPHA = 0.05


def _short_verdict(real: VariantResult, best: VariantResult) -> str:
    """Claim 1 on paired questions: the best synthetic model below the real one, by an exact sign test.

    The test counts the questions exactly one of the two models answers (McNemar's exact test:
    two-sided binomial p with success probability 1/2 over those questions); without per-question
    scores (results saved before they were recorded) no verdict is given.
    """
    if best.accuracy >= real.accuracy:
        return "NOT reproduced"
    a, b = real.sample_accuracy, best.sample_accuracy
    if not a or len(a) != len(b):
        return "NOT testable (no per-question scores in this result)"
    only_real = sum(x > y for x, y in zip(a, b, strict=True))
    only_best = sum(y > x for x, y in zip(a, b, strict=True))
    p = sign_flip_test(np.array([1.0] * only_real + [-1.0] * only_best))[0]
    words = (
        f"exact sign test over the {only_real + only_best} questions only one answers "
        f"({only_real} real, {only_best} synthetic), p = {p:.3g}"
    )
    return f"REPRODUCED ({words})" if p < ALPHA else f"NOT reproduced: {words} is not below {ALPHA}"


def _untested(seen: bool, n_samples: int | None, n_random: int, what: str) -> str:
    """Claims 4 and 5 keep means only (no per-sample values), so they get a direction, not a verdict."""
    over = f"means over {n_samples} samples" if n_samples else "means"
    direction = "in the paper's direction" if seen else "NOT in the paper's direction"
    return f"{direction}, untested ({over} and {n_random} {what}; no p-value, so not called reproduced)"


def summarize(result: PipelineResult) -> str:
    """Every measured number with a one-line reading; makes no claim the numbers do not carry."""
    keys = [k for k in ("accuracy", "accuracy-pearson", "logprob", "logprob-pearson") if k in result.correlations]
    lines = [
        _setup(result),
        "",
        *_table(result),
        "",
        _split(result),
        "",
        *[_correlation(k, result.correlations.get(k)) for k in keys],
        "",
        *_knockout(result),
        "",
        *_patching(result),
        "",
        *_claims(result),
    ]
    if result.notes:
        lines += ["", "Notes:", *[f"  - {n}" for n in result.notes]]
    lines += ["", "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())]
    return "\n".join(lines)


def benchmark_line(result: PipelineResult) -> str:
    """``bench pipeline <base>: stage seconds (per unit) | ...`` for every timed stage."""
    cfg, sec = result.config, result.seconds
    n_models = len(result.models)
    n_eval = len(cfg.gold_positions) * cfg.n_eval if cfg.task == "mdqa" else cfg.n_eval
    n_analysis = len(result.analysis) or min(cfg.n_analysis or n_eval, n_eval)
    n_detect = len(result.detection) or n_eval
    steps = cfg.n_variants * cfg.finetune_steps
    units = {
        "finetune": (steps, "step"),
        "score": (n_models * n_eval, "generation" if cfg.new_tokens > 0 else "forward"),
        "heads": (n_models * n_detect, "forward"),
        "knockout": (n_analysis * (1 + len(cfg.knockout_ks) * (1 + len(cfg.knockout_seeds))), "scored sample"),
        "patching": (n_analysis * (5 + cfg.n_random), "forward"),
    }
    parts = []
    for stage, value in sec.items():
        if stage in units and units[stage][0]:
            n, unit = units[stage]
            parts.append(f"{stage} {value:.1f} s ({n} x {value / n:.2f} s/{unit})")
        else:
            parts.append(f"{stage} {value:.1f} s")
    return f"bench pipeline {cfg.base} ({cfg.task}): " + " | ".join(parts)
