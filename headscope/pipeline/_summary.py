"""The plain-text summary of a pipeline run: the numbers, then what they do and do not support."""

from __future__ import annotations

from typing import TYPE_CHECKING

from headscope.heads import as_heads

if TYPE_CHECKING:
    from headscope.compare import Correlation
    from headscope.pipeline._result import PipelineResult

__all__ = ["summarize"]


def _table(result: PipelineResult) -> list[str]:
    lines = [f"{'variant':22s} {'accuracy':>8s} {'logprob':>8s} {'recall':>6s} {'jaccard':>7s}  heads"]
    for v in result.variants:
        heads = " ".join(map(str, as_heads(v.heads))) or "-"
        overlap = f"{_num(v.recall):>6s} {_num(v.jaccard):>7s}"
        lines.append(f"{v.name:22s} {v.accuracy:8.3f} {v.logprob:8.2f} {overlap}  {heads}")
    return lines


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _correlation(key: str, corr: Correlation | None) -> str:
    if corr is None:
        return f"Spearman(recall, {key}): undefined (see notes)"
    verdict = (
        "the interval excludes 0"
        if corr.ci_low > 0 or corr.ci_high < 0
        else "the interval includes 0: no evidence either way"
    )
    if (corr.ci_low > 0 or corr.ci_high < 0) and corr.p_value >= 0.05:
        verdict += f", but its p = {corr.p_value:.2g} is not below 0.05 (a percentile bootstrap "
        verdict += f"over {corr.n} points is optimistic)"
    return (
        f"Spearman(recall, {key}) = {corr.value:+.2f}, {corr.confidence:.0%} bootstrap CI "
        f"[{corr.ci_low:+.2f}, {corr.ci_high:+.2f}], p = {corr.p_value:.2g}, n = {corr.n} variants; {verdict}"
    )


def _knockout(result: PipelineResult) -> list[str]:
    curve = result.knockout
    if curve is None:
        return ["knockout: skipped, since no head of the real model has a positive retrieval score (see notes)."]
    random = curve.random_mean()
    lines = [f"knockout of the real model's heads (accuracy; intact {curve.baseline:.3f}):"]
    for k, top, rand in zip(curve.ks, curve.top, random, strict=True):
        lines.append(f"  k={k:<3d} top heads {top:.3f}   random heads {rand:.3f} (mean of {len(curve.seeds)} draws)")
    k, top, rand = curve.ks[-1], curve.top[-1], random[-1]
    if curve.baseline == 0:
        lines.append("  the intact model answers nothing exactly, so knockout cannot show anything here.")
    elif top < rand:
        lines.append(f"  at k={k} the top heads cost {rand - top:.3f} more accuracy than random heads.")
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


def summarize(result: PipelineResult) -> str:
    """Every measured number with a one-line reading; makes no claim the numbers do not carry."""
    cfg = result.config
    lines = [
        f"Synthetic vs real: {cfg.n_variants} models fine-tuned from {cfg.base!r} "
        f"({cfg.finetune_steps} steps each, train={cfg.train!r}), scored on {cfg.n_eval} held-out real samples "
        f"of {cfg.length} tokens; head sets = top {cfg.top_k} heads with a positive retrieval score.",
        "",
        *_table(result),
        "",
        _correlation("accuracy", result.correlations.get("accuracy")),
        _correlation("logprob", result.correlations.get("logprob")),
        "",
        *_knockout(result),
        "",
        *_patching(result),
    ]
    if result.correlations.get("accuracy") is not None and result.correlations["accuracy"].n < 8:
        lines += ["", f"Caution: {result.correlations['accuracy'].n} variants make a very wide interval by nature."]
    if result.notes:
        lines += ["", "Notes:", *[f"  - {n}" for n in result.notes]]
    lines += ["", "Time: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())]
    return "\n".join(lines)
