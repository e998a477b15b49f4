"""The ``headscope`` command line: detect, knock out, patch and compare retrieval heads.

Every subcommand writes its results into ``--out`` as JSON (headscope's format, plus Wu et
al.'s ``head_score`` format for scores), CSV, and a self-contained HTML report with the figures.
``headscope main`` is the README's main job: Wu et al.'s setting on the bundled SmolLM2. Greedy
decoding on the fused attention route over a needle grid of 1k to 8k tokens and five depths; the
gold answer is the whole needle sentence, and a sample counts when its ROUGE-1 recall is above 0.5
and the output names the needle's value as a whole word (a copied sentence with the wrong value
recalls most words too). Every subcommand judges answers by this one rule
(:data:`headscope.retrieval.DEFAULT_SUCCESS`), ``knockout --metric generation`` included.

``detect`` and ``main`` also bootstrap the answered samples (:func:`headscope.retrieval.stability`)
and print the heads in the top ``--top`` (10) of at least 90% of the resamples. ``--seeds 0 1 2``
runs one detection per needle set (task seed) into ``OUT/seed-S`` and reports in ``OUT`` how their
top-k and stable sets overlap (:func:`headscope.compare.run_overlap`).

``torchrun --nproc-per-node N -m headscope CMD ...`` shards ``main``, ``detect``, ``knockout``,
``patch`` and ``paper`` (:mod:`headscope.distributed`): rank 0 prints and writes files equal to a
one-process run's, and ``OUT/.partial`` keeps each finished work item, so rerunning an
interrupted command computes only what is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, NoReturn

from headscope.errors import ConfigError, HeadscopeError, ShardError

TASKS = ("needle", "mdqa", "multihop", "kv", "citation")
KINDS = ("natural", "templated", "symbolic")
HAYSTACKS = ("diverse", "templated", "symbolic")
#: ``headscope main``'s context lengths: up to SmolLM2's 8,192 tokens, less room for the chat
#: template, the question and the decoded answer.
MAIN_LENGTHS = (1000, 2000, 4000, 7900)
#: The span labels of the command line's needle samples (one needle each). Needle samples are cut
#: to token lengths, so they are built after the model's tokenizer loads; ``--span`` is checked
#: against these labels before that.
NEEDLE_SPANS = ("answer", "needle")
#: ``detect`` and ``main``: bootstrap resamples of the answered samples, and the share of them a head
#: must be in the top ``--top`` of to be reported stable.
N_BOOT = 1000
STABLE_SHARE = 0.9
#: The commands ``torchrun`` shards (``torchrun --nproc-per-node N -m headscope CMD ...``).
SHARDED = ("main", "detect", "knockout", "patch", "paper")
#: Where a sharded command keeps one result file per finished work item, inside ``--out``; a rerun
#: of an interrupted command reads them back, and a finished run removes the folder.
PARTIAL = ".partial"


def _load_model(
    spec: str, kind: str, weights: str | None = None, *, device: str = "cpu", dtype: str = "float32"
) -> Any:
    """A headscope model name, a saved folder or a hub id (:func:`headscope.load_model`), with fine-tuned weights."""
    from headscope.models import load_model

    model = load_model(spec, kind=kind, device=device, dtype=dtype)
    if weights:
        from headscope.training import load_weights

        load_weights(model, weights)
    return model


def _check_task(args: argparse.Namespace, span: str | None) -> list[Any] | None:
    """Check the task options before any model loads, and build the samples that need no tokenizer.

    Every task but the needle is built here, by its builder, which checks its own options. Needle
    samples wait for the model's tokenizer (their contexts are cut to token lengths): their lengths
    and depths are checked here. ``span`` (if given) must label every sample.
    """
    from headscope import tasks
    from headscope.tasks._needle import _check as check_needle

    _at_least(1, n_samples=args.n_samples)
    if args.task == "needle":
        for length in args.lengths:
            for depth in args.depths:
                check_needle(length, depth, 1, None, args.answer)
        built, labels = None, [list(NEEDLE_SPANS)]
    else:
        builder = {
            "mdqa": tasks.mdqa,
            "multihop": tasks.multihop_qa,
            "kv": tasks.kv_retrieval,
            "citation": tasks.citation,
        }[args.task]
        size = {"n_pairs" if args.task == "kv" else "n_docs": args.n_docs}
        built = builder(**size, needle=args.needle, haystack=args.haystack, n_samples=args.n_samples, seed=args.seed)
        labels = [s.labels() for s in built]
    if span is not None and any(span not in these for these in labels):
        have = sorted({label for these in labels for label in these})
        raise ConfigError(f"--span {span!r}: the {args.task} task's samples have no {span!r} span; they have {have}")
    return built


def _samples(args: argparse.Namespace, model: Any, built: list[Any] | None) -> list[Any]:
    """The task's samples for ``model``: ``built`` (from :func:`_check_task`) or the needle grid, chat-wrapped."""
    from headscope import tasks
    from headscope.models import model_info

    tokenizer = model.tokenizer
    if built is None:
        common = dict(needle=args.needle, haystack=args.haystack, n_samples=args.n_samples, seed=args.seed)
        samples = tasks.needle_grid(
            tokenizer, args.lengths, args.depths, answer=args.answer, n_ctx=model_info(model).n_ctx, **common
        )
    else:
        samples = built
    if args.chat and getattr(tokenizer, "chat_template", None):
        prefix = None if args.answer_prefix == "none" else args.answer_prefix
        samples = [s.with_chat_template(tokenizer, answer_prefix=prefix) for s in samples]
    return samples


def _sharding(args: argparse.Namespace) -> dict[str, Any]:
    """Split the work over the ``torchrun`` ranks (if any) and keep per-item results in ``OUT/.partial``."""
    from headscope.distributed import current_world

    return {"distributed": current_world().distributed, "resume": Path(args.out) / PARTIAL}


def _is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files and prints."""
    from headscope.distributed import current_world

    return current_world().main


def _out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _at_least(bound: int, **values: int | Sequence[int]) -> None:
    """Raise a ConfigError naming the option (``n_samples`` is ``--n-samples``) whose value is below ``bound``."""
    for name, value in values.items():
        low = [v for v in ([value] if isinstance(value, int) else value) if v < bound]
        if low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {bound}; got {low[0]}")


def _check_out(args: argparse.Namespace) -> None:
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")


def _check_weights(path: str | None, option: str, kind: str) -> None:
    """A ``--weights`` file must be one :func:`~headscope.training.save_weights` wrote for this ``--kind``."""
    if path is None:
        return
    from safetensors import SafetensorError, safe_open

    from headscope.training._weights import _FORMAT

    if not Path(path).is_file():
        raise ConfigError(f"{option}: no file at {path!r}; give a file written by headscope.training.save_weights")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ConfigError(
            f"{option} {path!r} is not a safetensors file written by headscope.training.save_weights ({error})"
        ) from None
    if meta.get("format") != _FORMAT:
        raise ConfigError(f"{option} {path!r} was not written by headscope.training.save_weights")
    if meta.get("kind") not in (None, kind):
        raise ConfigError(
            f"{option} {path!r} holds weights of a {meta['kind']} model, but --kind is {kind}; "
            f"pass --kind {meta['kind']}"
        )


def _read_scores(path: str, option: str) -> Any:
    """The RetrievalScores in ``path`` (read before any model loads)."""
    from headscope.retrieval import RetrievalScores

    if not Path(path).is_file():
        raise ConfigError(f"{option}: no file at {path!r}; give a scores.json written by `headscope detect`")
    return RetrievalScores.load(path)


def _report(out: Path, title: str, sections: Sequence[Any]) -> None:
    """``report.html`` in ``out``: the sections as :func:`~headscope.viz.save_report` takes them."""
    from headscope.viz import save_report

    save_report(out / "report.html", title, sections)


def _detect(args: argparse.Namespace) -> int:
    """One detection, or with ``--seeds`` one per seed (into ``OUT/seed-S``) and their overlap in ``OUT``."""
    start = time.perf_counter()
    _check_out(args)
    _at_least(1, max_new_tokens=args.max_new_tokens)
    _at_least(0, top=args.top)
    _check_weights(args.weights, "--weights", args.kind)
    if args.seeds is None:
        built = _check_task(args, args.span)
        model = _load_model(args.model, args.kind, args.weights, device=args.device, dtype=args.dtype)
        return _detect_one(args, model, built, _out(args), start)[0]
    if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
        raise ConfigError(f"--seeds needs at least 2 distinct seeds; got {args.seeds}")
    if args.top < 1:
        raise ConfigError("--seeds compares the runs' top --top heads; give --top 1 or more")
    runs = {seed: argparse.Namespace(**{**vars(args), "seed": seed}) for seed in args.seeds}
    built = {seed: _check_task(run, args.span) for seed, run in runs.items()}  # every seed's task, before the model
    model = _load_model(args.model, args.kind, args.weights, device=args.device, dtype=args.dtype)
    out = _out(args)
    results = {}
    for seed, run in runs.items():
        print(f"--- seed {seed} ---", flush=True)
        _, stability = _detect_one(run, model, built[seed], out / f"seed-{seed}", start)
        if stability is not None:
            results[f"seed {seed}"] = stability
    if not _is_main():  # rank 0 compares the seeds and writes the overlap
        return 0
    return _seed_overlap(out, args, results, start)


def _seed_overlap(out: Path, args: argparse.Namespace, results: dict[str, Any], start: float) -> int:
    """overlap.json, overlap.csv and report.html in ``out``: how the seeds' top-k and stable sets overlap."""
    import pandas as pd

    from headscope.compare import run_overlap

    print(f"--- {len(results)} of {len(args.seeds)} seeds answered samples ---")
    if len(results) < 2:
        print("fewer than 2 seeds have scores, so there is no overlap to report")
        return 1
    overlap = run_overlap(results, threshold=STABLE_SHARE)
    overlap.save(out / "overlap.json")
    frame = overlap.to_frame()
    frame.to_csv(out / "overlap.csv", index=False)
    sets = pd.DataFrame(
        {
            "run": overlap.labels,
            f"top {overlap.top_k}": [", ".join(map(str, s)) for s in overlap.tops],
            "stable": [", ".join(map(str, s)) for s in overlap.stables],
        }
    )
    common_top, common_stable = (", ".join(map(str, overlap.common(w))) or "none" for w in ("top", "stable"))
    _report(
        out,
        f"Retrieval heads of {args.model} over {len(results)} needle sets",
        [
            ("Pairwise Jaccard overlap of the top-k and of the stable sets", overlap.plot()),
            ("Each run's sets", sets),
            ("Pairs of runs", frame),
            ("Heads common to every run", f"<p>top {overlap.top_k}: {common_top}</p><p>stable: {common_stable}</p>"),
        ],
    )
    print(frame[["a", "b", "jaccard_top", "jaccard_stable"]].to_string(index=False, float_format="{:.3f}".format))
    print(f"in the top {overlap.top_k} of every seed: {common_top}")
    print(f"stable (top {overlap.top_k} in >= {STABLE_SHARE:.0%} of resamples) in every seed: {common_stable}")
    seeds = ", ".join(f"seed-{s}/" for s in args.seeds)
    print(f"wrote {out}/{{overlap.json, overlap.csv, report.html}} and {seeds} in {time.perf_counter() - start:.0f} s")
    return 0


def _detect_one(
    args: argparse.Namespace, model: Any, built: list[Any] | None, out: Path, start: float
) -> tuple[int, Any]:
    """Detect on ``args``' samples, write everything into ``out``; the exit code and the bootstrap (or ``None``)."""
    from headscope.retrieval import DEFAULT_SUCCESS, RETRIEVAL_THRESHOLD, SuccessLog, detect_retrieval_heads

    samples = _samples(args, model, built)
    print(f"{args.model}: {len(samples)} {args.task} samples, {args.mode} detection ({args.attention})", flush=True)
    log = SuccessLog(DEFAULT_SUCCESS)
    scores = detect_retrieval_heads(
        model,
        samples,
        mode=args.mode,
        attention=args.attention,
        span=args.span,
        match=args.match,
        max_new_tokens=args.max_new_tokens,
        success=log,
        **_sharding(args),
    )
    if not _is_main():
        return 0, None
    out.mkdir(parents=True, exist_ok=True)
    scores.save(out / "scores.json")
    scores.to_wu_json(out / "head_score.json")
    scores.to_frame().to_csv(out / "scores.csv", index=False)
    outcomes = log.to_frame()
    outcomes.to_csv(out / "outcomes.csv", index=False)
    print(f"samples counted (answered correctly): {scores.n_counted} of {len(samples)}")
    attention = None
    if scores.n_counted:
        try:
            attention = _top_heads_attention(model, log, scores, args.span)
            attention.save(out / "attention.json")
        except ValueError as error:  # e.g. an answer repeated so often that the window holds too many tokens
            print(f"the report shows no attention view: {error}")
    stability = _stability(scores, args.top, out)
    _detect_report(out, args.model, scores, outcomes, attention, stability)
    if scores.n_counted == 0:
        print(
            "no sample was answered, so no head has a score; try shorter contexts, another task, "
            "--mode generation, or an --answer-prefix that makes the gold answer the model's next words"
        )
        return 1, None
    print(f"top {args.top} heads:")
    for head, score in scores.top(args.top):
        print(f"  {head}  {score:.3f}")
    values = scores.scores
    share = float((values > RETRIEVAL_THRESHOLD).float().mean())
    print(f"heads above {RETRIEVAL_THRESHOLD}: {share:.1%} of {values.numel()}")
    if stability is not None:
        _print_stable(stability)
    files = ["scores.json", "head_score.json", "scores.csv", "outcomes.csv"] + (["attention.json"] if attention else [])
    files += ["stability.json", "stability.csv"] if stability else []
    print(f"wrote {out}/{{{', '.join([*files, 'report.html'])}}} in {time.perf_counter() - start:.0f} s")
    return 0, stability


def _stability(scores: Any, top: int, out: Path) -> Any:
    """Bootstrap the answered samples (:func:`headscope.retrieval.stability`) and save it; ``None`` if none was."""
    from headscope.retrieval import stability

    if scores.n_counted == 0 or top < 1:
        return None
    result = stability(scores, top_k=top, n_boot=N_BOOT)
    result.save(out / "stability.json")
    result.to_frame().to_csv(out / "stability.csv", index=False)
    return result


def _print_stable(result: Any) -> None:
    stable = result.stable(STABLE_SHARE)
    print(
        f"heads in the top {result.top_k} in at least {STABLE_SHARE:.0%} of {result.n_boot} bootstrap resamples "
        f"of the {result.n_samples} answered samples: {len(stable)}"
    )
    for head in stable:
        print(
            f"  {head}  P={result.p_top[head].item():.3f}  score {result.score[head].item():.3f} "
            f"[{result.low[head].item():.3f}, {result.high[head].item():.3f}]"
        )


def _top_heads_attention(model: Any, log: Any, scores: Any, span: str, n_heads: int = 3, max_length: int = 2000) -> Any:
    """The top heads' attention on one answered sample (the longest context up to ``max_length``
    tokens, else the shortest; needle nearest mid-depth), at the rows that produced the answer in
    the model's own output. The record runs the model's eager attention, which at 8k tokens would
    cost minutes and gigabytes, so the view stays at a few thousand tokens."""
    from headscope.retrieval import record_attention

    answered = [i for i, (_, _, ok) in enumerate(log.records) if ok]
    meta = lambda i: log.records[i][0].meta  # noqa: E731
    length = lambda i: meta(i).get("length", 0)  # noqa: E731
    fits = [i for i in answered if length(i) <= max_length] or [min(answered, key=length)]
    index = max(fits, key=lambda i: (length(i), -abs(meta(i).get("depth", 50.0) - 50.0)))
    heads = [head for head, _ in scores.top(n_heads)]
    return record_attention(model, log.replay(index), heads, span=span, window=16)


def _detect_report(out: Path, model: str, scores: Any, outcomes: Any, attention: Any, stability: Any = None) -> None:
    """report.html of a detection run; a knockout.json or compression.json already in ``out`` adds its curve."""
    from headscope.retrieval import RETRIEVAL_THRESHOLD
    from headscope.viz import retrieval_report

    knockout = None
    if (out / "knockout.json").is_file():
        from headscope.ablation import KnockoutCurve

        knockout = KnockoutCurve.load(out / "knockout.json")
    compression = None
    if (out / "compression.json").is_file():
        from headscope.compression import CompressionCurve

        compression = CompressionCurve.load(out / "compression.json")
    sections = retrieval_report(
        scores,
        outcomes=outcomes,
        attention=attention,
        knockout=knockout,
        compression=compression,
        stability=stability,
        threshold=RETRIEVAL_THRESHOLD,
        stable_share=STABLE_SHARE,
    )
    _report(out, f"Retrieval heads of {model}", sections)


def _knockout(args: argparse.Namespace) -> int:
    from headscope.ablation import knockout_curve
    from headscope.evaluate import answer_accuracy, retrieval_success

    _check_out(args)
    _at_least(1, ks=args.ks)
    ranking = [head for head, _ in _read_scores(args.scores, "--scores").above(0.0)]
    ks = [k for k in args.ks if k <= len(ranking)]
    if not ks:
        raise ConfigError(
            f"{args.scores} has {len(ranking)} heads with a positive score, fewer than every k in --ks {args.ks}; "
            "zero-score heads are never ranked: give smaller --ks or detect on more samples"
        )
    _check_weights(args.weights, "--weights", args.kind)
    built = _check_task(args, args.span if args.mode == "edge" else None)
    if len(ks) < len(args.ks):
        print(
            f"warning: only {len(ranking)} heads have a positive score; skipping k = "
            f"{', '.join(str(k) for k in args.ks if k > len(ranking))}",
            file=sys.stderr,
        )
    model = _load_model(args.model, args.kind, args.weights, device=args.device, dtype=args.dtype)
    samples = _samples(args, model, built)
    score_fn = answer_accuracy if args.metric == "teacher_forced" else retrieval_success
    curve = knockout_curve(
        model,
        samples,
        ranking,
        score_fn,
        ks=ks,
        mode=args.mode,
        span=args.span if args.mode == "edge" else None,
        seeds=args.seeds,
        positions=args.positions,
        attention=args.attention,
        **_sharding(args),
    )
    if not _is_main():
        return 0
    out = _out(args)
    curve.save(out / "knockout.json")
    frame = curve.to_frame()
    frame.to_csv(out / "knockout.csv", index=False)
    _report(out, f"Knockout on {args.model}", [("Accuracy against heads knocked out", curve.plot()), ("Data", frame)])
    print(frame.groupby(["kind", "k"])["value"].mean().unstack(0).to_string())
    print(f"wrote {out}/knockout.json, knockout.csv, report.html")
    return 0


def _compress(args: argparse.Namespace) -> int:
    """KV-cache compression curve: retrieval-ranked, mass-ranked and random KV heads kept full."""
    from headscope.compression import compression_curve
    from headscope.compression._decode import check_fused
    from headscope.compression._policy import _check_window

    start = time.perf_counter()
    _check_out(args)
    _at_least(1, max_new_tokens=args.max_new_tokens)
    _check_window(args.sink, args.window)
    bad = [f for f in args.fractions if not 0 <= f <= 1]
    if bad:
        raise ConfigError(f"--fractions are shares of KV heads kept full, in [0, 1]; got {bad[0]}")
    scores = _read_scores(args.scores, "--scores")
    mass = _read_scores(args.mass_scores, "--mass-scores") if args.mass_scores else None
    if mass is not None and mass.score != "mass":
        raise ConfigError(f"--mass-scores {args.mass_scores!r} holds {mass.score} scores, not attention mass")
    detect_mass = mass is None and not args.no_mass
    if detect_mass and args.mass_seed == args.seed:
        raise ConfigError(
            f"--mass-seed {args.mass_seed} equals --seed: the needles that choose heads must not test them"
        )
    _check_weights(args.weights, "--weights", args.kind)
    built = _check_task(args, None)
    mass_run = argparse.Namespace(**{**vars(args), "seed": args.mass_seed})
    mass_built = _check_task(mass_run, "needle") if detect_mass else None
    model = _load_model(args.model, args.kind, args.weights, device=args.device, dtype=args.dtype)
    check_fused(model)  # before any detection: the curve decodes on the fused route
    out = _out(args)
    if detect_mass:
        from headscope.retrieval import detect_retrieval_heads

        mass_samples = _samples(mass_run, model, mass_built)
        print(
            f"detecting the attention-mass ranking on {len(mass_samples)} samples of seed {args.mass_seed}", flush=True
        )
        mass = detect_retrieval_heads(
            model, mass_samples, mode=scores.mode, score="mass", max_new_tokens=args.max_new_tokens
        )
        mass.save(out / "mass_scores.json")
        if mass.n_counted == 0:
            print(
                f"warning: the model answered none of the {len(mass_samples)} mass-detection samples, so there is "
                "no attention-mass ranking to compare",
                file=sys.stderr,
            )
            mass = None
    rankings = {"retrieval": scores} | ({"mass": mass} if mass is not None else {})
    samples = _samples(args, model, built)
    print(
        f"{args.model}: {len(samples)} {args.task} samples (seed {args.seed}), fractions {args.fractions}", flush=True
    )
    curve = compression_curve(
        model,
        samples,
        fractions=args.fractions,
        rankings=rankings,
        seeds=args.seeds,
        sink=args.sink,
        window=args.window,
        pool=args.pool,
        max_new_tokens=args.max_new_tokens,
    )
    curve.save(out / "compression.json")
    frame = curve.to_frame()
    frame.to_csv(out / "compression.csv", index=False)
    against = curve.versus_random(0) if args.seeds else None
    if (out / "scores.json").is_file() and (out / "scores.json").resolve() == Path(args.scores).resolve():
        _rereport(out, args.model, scores)  # the detection run's own report gains the compression section
    else:
        _report(
            out,
            f"KV-cache compression on {args.model}",
            [("Accuracy against the share of KV heads kept full", curve.plot()), ("Data", frame)],
        )
    _print_compression(frame, against)
    print(f"wrote {out}/compression.json, compression.csv, report.html in {time.perf_counter() - start:.0f} s")
    return 0


def _print_compression(frame: Any, against: Any) -> None:
    """Accuracy per fraction and run, the memory ratio, and retrieval against random KV heads, plainly."""
    runs = frame[frame["kind"] != "full"]
    table = runs.pivot_table(index="fraction", columns="run", values="accuracy", aggfunc="mean")
    table["KV memory ratio"] = runs.groupby("fraction")["memory_ratio"].mean()
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    full = frame[frame["kind"] == "full"]["accuracy"].iloc[0]
    print(f"full attention: {full:.3f}")
    if against is None:
        return
    random = runs[runs["kind"] == "random"].groupby("fraction")["accuracy"]
    low, high = random.min(), random.max()
    for row in against.itertuples():
        f = row.fraction
        verdict = "above" if row.accuracy > high[f] else "below" if row.accuracy < low[f] else "within"
        print(
            f"{f:.0%} KV heads full: retrieval-chosen {row.accuracy:.3f}, {verdict} the random sets' range "
            f"[{low[f]:.3f}, {high[f]:.3f}]; paired sign-flip p = {row.p_value:.3g} (smallest possible "
            f"{row.p_min:.3g})"
        )


def _rereport(out: Path, model: str, scores: Any) -> None:
    """Rewrite a detection run's report.html from the files in ``out`` (its compression.json included)."""
    import pandas as pd

    from headscope.retrieval import AttentionRows, Stability

    outcomes = pd.read_csv(out / "outcomes.csv") if (out / "outcomes.csv").is_file() else None
    attention = AttentionRows.load(out / "attention.json") if (out / "attention.json").is_file() else None
    stability = Stability.load(out / "stability.json") if (out / "stability.json").is_file() else None
    _detect_report(out, model, scores, outcomes, attention, stability)


def _patch(args: argparse.Namespace) -> int:
    from headscope.compare import head_set
    from headscope.patching import compare_patching

    _check_out(args)
    _at_least(0, n_random=args.n_random)
    sets = [
        head_set(_read_scores(path, option).scores, top_k=args.top_k)
        for path, option in ((args.source_scores, "--source-scores"), (args.target_scores, "--target-scores"))
    ]
    shared = set(sets[0]) & set(sets[1])
    _check_weights(args.source_weights, "--source-weights", args.kind)
    _check_weights(args.target_weights, "--target-weights", args.kind)
    built = _check_task(args, None)
    source = _load_model(args.source, args.kind, args.source_weights, device=args.device, dtype=args.dtype)
    target = _load_model(args.target, args.kind, args.target_weights, device=args.device, dtype=args.dtype)
    samples = _samples(args, target, built)
    encoded = [s.encode(target.tokenizer) for s in samples]
    result = compare_patching(
        target, source, encoded, sorted(shared), n_random=args.n_random, seed=args.seed, **_sharding(args)
    )
    if not _is_main():
        return 0
    out = _out(args)
    result.save(out / "patching.json")
    frame = result.to_frame()
    frame.to_csv(out / "patching.csv", index=False)
    _report(
        out, "Patching shared heads from source into target", [("Metric by head set", result.plot()), ("Data", frame)]
    )
    print(
        f"{len(shared)} shared heads among the top {args.top_k} of each model "
        f"(source set: {len(sets[0])} heads, target set: {len(sets[1])}; only heads scoring above 0 count)"
    )
    print(frame.to_string(index=False))
    print(f"wrote {out}/patching.json, patching.csv, report.html")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from headscope.compare import head_set, jaccard, rank_correlation, recall
    from headscope.heads import HeadSet
    from headscope.viz import recall_scatter

    _check_out(args)
    reference, candidate = _read_heads(args)
    cut = dict(top_k=args.top_k) if args.threshold is None else dict(threshold=args.threshold)

    def chosen(side: Any) -> Any:  # scored sides by the cut; a QRHead list by its first top_k
        if side.scores is None:
            return HeadSet(side.ranked[: args.top_k] if args.threshold is None else side.ranked, side.shape)
        return HeadSet(tuple(head_set(side.scores, **cut)), side.shape)

    ref_set, cand_set = chosen(reference), chosen(candidate)
    scored = reference.scores is not None and candidate.scores is not None
    ranks = rank_correlation(reference, candidate, top_k=min(args.top_k, reference.scores.numel())) if scored else None
    summary = {
        "reference": args.reference,
        "candidate": args.candidate,
        "formats": [reference.format, candidate.format],
        "cut": cut,
        "n_reference": len(ref_set),
        "n_candidate": len(cand_set),
        "recall": recall(ref_set, cand_set),
        "jaccard": jaccard(ref_set, cand_set),
        "spearman": ranks.spearman if ranks else None,
        "top_k_overlap": ranks.overlap if ranks else None,
        "shared_heads": list((ref_set & cand_set).labels),
    }
    out = _out(args)
    (out / "comparison.json").write_text(json.dumps(summary, indent=2))
    import pandas as pd

    def values(side: Any, heads: Any) -> Any:  # a list without scores: 1 for each chosen head
        return (
            side.to_frame()["value"] if side.scores is not None else side.to_frame()["label"].isin(heads.labels) * 1.0
        )

    frame = pd.DataFrame(
        {
            "label": reference.to_frame()["label"],
            "reference": values(reference, ref_set),
            "candidate": values(candidate, cand_set),
        }
    )
    frame.to_csv(out / "comparison.csv", index=False)
    x, y = frame["reference"].to_numpy(), frame["candidate"].to_numpy()
    figure = recall_scatter(x, y, labels=list(frame["label"]), title="Head scores")
    figure.update_layout(xaxis_title=args.reference, yaxis_title=args.candidate)
    _report(out, "Head-set comparison", [("Scores of every head", figure), ("Summary", pd.DataFrame([summary]))])
    for key in ("recall", "jaccard", "spearman", "top_k_overlap"):
        print(f"{key}: {summary[key]:.3f}" if summary[key] is not None else f"{key}: n/a (a QRHead list has no scores)")
    print(f"head sets: {len(ref_set)} reference heads, {len(cand_set)} candidate heads (only heads scoring above 0)")
    print(f"shared heads: {', '.join(summary['shared_heads']) or 'none'}")
    print(f"wrote {out}/comparison.json, comparison.csv, report.html")
    return 0


def _read_heads(args: argparse.Namespace) -> list[Any]:
    """Both sides of ``compare`` as :class:`~headscope.compare.LoadedHeads`, checked against one model shape.

    Score JSON (headscope's, Wu et al.'s, HeadKV's) says its own shape; DuoAttention's TSV and
    QRHead strings take it from ``--model`` or from the other side.
    """
    from headscope.compare import detect_format, load_heads

    sources = {"reference": args.reference, "candidate": args.candidate}
    kinds = {}
    for option, source in sources.items():
        try:
            kinds[option] = detect_format(source)
        except FileNotFoundError as error:
            raise ConfigError(
                f"{option}: {error}; give a scores.json written by `headscope detect`, a Wu et al. / HeadKV "
                "head_score JSON, DuoAttention's full_attention_heads.tsv or a QRHead attn_head_set string"
            ) from None
    shape: Any = None
    if args.model:
        from headscope.models import model_info

        shape = model_info(_load_model(args.model, args.kind))
    loaded: dict[str, Any] = {}
    for option in sorted(sources, key=lambda o: kinds[o] in ("duo", "qrhead")):  # self-describing sides first
        if shape is None and kinds[option] in ("duo", "qrhead"):
            raise ConfigError(
                f"{option} {sources[option]!r} is a {kinds[option]} head list, which does not say the model's "
                "shape; pass --model (or compare it with a score JSON of the same model)"
            )
        loaded[option] = load_heads(sources[option], shape)
        shape = shape or loaded[option].shape
    return [loaded["reference"], loaded["candidate"]]


def _paper(args: argparse.Namespace) -> int:
    """The seed paper's experiment on SmolLM2 and real NQ multi-document QA (``PipelineConfig.smollm2``)."""
    import torch

    from headscope.pipeline import PipelineConfig, run_pipeline

    _check_out(args)
    _at_least(0, threads=args.threads)
    if not Path(args.data).is_file():  # checked before the model loads
        raise ConfigError(
            f"headscope paper needs Lost in the Middle's multi-document QA rows (nq-open-oracle.jsonl.gz); "
            f"no file at {args.data!r}: pass --data PATH"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PipelineConfig.smollm2_smoke if args.smoke else PipelineConfig.smollm2
    changes = {"train": args.train} if args.train else {}
    result = run_pipeline(preset(data=args.data, seed=args.seed, **changes), progress=True, **_sharding(args))
    if not _is_main():
        return 0
    report = result.export(_out(args), title="Synthetic vs real MDQA on SmolLM2: retrieval heads")
    print(result.summary())
    print(result.benchmark())
    print(f"wrote {args.out}/result/, variants.csv, summary.txt and {report}")
    return 0


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="a headscope model name, a saved HF folder, or a Hugging Face hub id (ORG/NAME) from the hub's cache; "
        "HF_HUB_OFFLINE=1 never asks the hub (default: %(default)s)",
    )
    parser.add_argument("--weights", help="fine-tuned weights (headscope.training.save_weights) to load into the model")
    _add_placement(parser)


def _add_placement(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype`` of every subcommand that loads a model, checked as they are parsed."""
    from headscope.models._placement import DTYPE_NAMES

    parser.add_argument(
        "--device", type=_device, default="cpu", help="cpu, cuda, cuda:N or auto (CUDA if any) (default: %(default)s)"
    )
    parser.add_argument(
        "--dtype",
        type=str.lower,
        choices=DTYPE_NAMES,
        default="float32",
        help="weights and activations (default: %(default)s)",
    )


def _device(value: str) -> str:
    from headscope.models._placement import resolve_device

    try:
        resolve_device(value)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _add_task(parser: argparse.ArgumentParser, *, lengths: Sequence[int] = (500, 1000)) -> None:
    group = parser.add_argument_group("task")
    group.add_argument("--task", choices=TASKS, default="needle", help="task builder (default: %(default)s)")
    group.add_argument("--needle", choices=KINDS, default="natural", help="needle realism (default: %(default)s)")
    group.add_argument(
        "--haystack", choices=HAYSTACKS, default="diverse", help="haystack diversity (default: %(default)s)"
    )
    group.add_argument(
        "--lengths", type=int, nargs="+", default=list(lengths), help="needle task: context lengths in tokens"
    )
    group.add_argument("--depths", type=float, nargs="+", default=[0, 50, 100], help="needle task: depths in percent")
    group.add_argument(
        "--answer",
        choices=("value", "sentence"),
        default="value",
        help="needle task: the gold answer is the needle's value, after its lead-in, or the whole needle "
        "sentence, copied, as in Wu et al. (default: %(default)s)",
    )
    group.add_argument(
        "--n-docs", type=int, default=10, help="document tasks: documents (kv: pairs) per sample (default: %(default)s)"
    )
    group.add_argument(
        "--n-samples", type=int, default=2, help="samples per grid cell / per task (default: %(default)s)"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of the task builder (default: %(default)s)")
    group.add_argument("--no-chat", dest="chat", action="store_false", help="do not wrap prompts in the chat template")
    group.add_argument(
        "--answer-prefix",
        default="auto",
        metavar="auto|none|TEXT",
        help="chat prompts: how the assistant's turn starts. auto (default): each sample's lead-in, the needle "
        "sentence up to the answer, so the gold answer is the next token as teacher-forced scores need; "
        "none: nothing; any other TEXT: that text",
    )


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2, like every other headscope error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="headscope", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("bridge", "hooked"), default="bridge", help="TransformerLens model kind")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, run: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--out", default=f"headscope-results/{name}", help="output folder (default: %(default)s)")
        p.set_defaults(run=run)
        return p

    for name, help in (
        ("main", "the main job: detect retrieval heads of SmolLM2 on a needle grid"),
        ("detect", "detect retrieval heads (Wu et al.'s copy-paste score)"),
    ):
        p = command(name, _detect, help)
        _add_model(p)
        _add_task(p)
        p.add_argument(
            "--mode", choices=("teacher_forced", "generation"), default="teacher_forced", help="detection mode"
        )
        p.add_argument(
            "--attention",
            choices=("auto", "fused", "eager"),
            default="auto",
            help="attention route: fused (sdpa, only the scored rows), eager (full patterns) or auto "
            "(fused where available) (default: %(default)s)",
        )
        p.add_argument("--span", default="needle", help="span to copy from: needle, or answer for QA tasks")
        p.add_argument(
            "--match",
            choices=("text", "id"),
            default="text",
            help="when the produced token is the prompt token a head looks at: same token text, so ' Paris' in a "
            "document and 'Paris' in the answer match, or same token id, as Wu et al. (default: %(default)s)",
        )
        p.add_argument("--max-new-tokens", type=int, default=32, help="generation mode: tokens to decode")
        p.add_argument(
            "--top",
            type=int,
            default=10,
            help="how many top heads to print; a bootstrap over the answered samples reports the heads in the top "
            f"--top of at least {STABLE_SHARE:.0%}% of {N_BOOT} resamples (default: %(default)s)",
        )
        p.add_argument(
            "--seeds",
            type=int,
            nargs="+",
            help="one detection per task seed (needle sets), each into OUT/seed-S, and their overlap into OUT: "
            "pairwise Jaccard of the top --top and of the stable sets, and the heads common to all (overrides --seed)",
        )
        if name == "main":  # Wu et al.'s setting: decode, copy the whole needle sentence, lengths up to 8k
            p.set_defaults(
                mode="generation",
                attention="fused",
                answer="sentence",
                needle="templated",
                lengths=list(MAIN_LENGTHS),
                depths=[0, 25, 50, 75, 100],
                n_samples=1,
            )

    p = command("knockout", _knockout, "knock out the top retrieval heads and as many random heads")
    _add_model(p)
    _add_task(p)
    p.add_argument("--scores", required=True, help="scores.json written by `headscope detect`")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20], help="numbers of heads to knock out")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the random-head baselines")
    p.add_argument("--mode", choices=("uniform", "zero", "edge", "mean"), default="uniform", help="knockout mode")
    p.add_argument("--metric", choices=("teacher_forced", "generation"), default="teacher_forced", help="task score")
    p.add_argument(
        "--span",
        default="needle",
        help="edge mode: the span the knocked-out heads cannot attend to (needle, or answer for QA tasks) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--positions",
        choices=("answer", "all"),
        default="answer",
        help="query rows knocked out: 'answer' = from the last prompt token on, the rows that produce the answer "
        "(Wu et al.; the prompt is read intact), 'all' = every position (default: %(default)s)",
    )
    p.add_argument(
        "--attention",
        choices=("auto", "fused", "eager"),
        default="auto",
        help="attention route: fused (sdpa, only the knocked-out rows rewritten), eager (TransformerLens hooks) "
        "or auto (fused where available) (default: %(default)s)",
    )

    p = command(
        "compress",
        _compress,
        "KV-cache compression from a head set: answer accuracy when only a share of KV heads keeps the full cache "
        "(the rest: sink + recent window), for the retrieval ranking, the attention-mass ranking, random KV heads "
        "and full attention",
    )
    _add_model(p)
    _add_task(p)
    p.add_argument(
        "--scores",
        required=True,
        help="scores.json of `headscope main` or `detect`: the retrieval ranking. Detect it on other needles than "
        "the ones tested here (--seed, default 1; main detects on seed 0)",
    )
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.25, 0.5, 0.75],
        help="shares of KV heads kept full (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seeds of the random KV-head sets (default: %(default)s)",
    )
    p.add_argument(
        "--sink", type=int, default=4, help="first tokens every streaming KV head keeps (default: %(default)s)"
    )
    p.add_argument(
        "--window",
        type=int,
        default=256,
        help="recent tokens every streaming KV head keeps, the current one included (default: %(default)s)",
    )
    p.add_argument(
        "--pool",
        choices=("max", "mean", "sum"),
        default="max",
        help="how the scores of a KV head's query heads pool: max keeps a KV head whenever any of its query heads "
        "retrieves (default: %(default)s)",
    )
    p.add_argument("--mass-scores", help="scores.json of an attention-mass detection (score='mass') to compare too")
    p.add_argument(
        "--mass-seed",
        type=int,
        default=0,
        help="without --mass-scores: detect the mass ranking on the needles of this task seed, in the mode of "
        "--scores (default: %(default)s, the seed `headscope main` detects on)",
    )
    p.add_argument("--no-mass", action="store_true", help="compare no attention-mass ranking")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to decode per answer (default: %(default)s)")
    p.set_defaults(
        answer="sentence", needle="templated", lengths=[1000, 2000], depths=[0, 25, 50, 75, 100], n_samples=1, seed=1
    )

    p = command("patch", _patch, "patch the heads two models share from a source model into a target model")
    p.add_argument("--source", required=True, help="model whose activations are patched in (name, folder or hub id)")
    p.add_argument("--target", required=True, help="model patched into (name, folder or hub id)")
    p.add_argument("--source-weights", help="fine-tuned weights for the source model")
    p.add_argument("--target-weights", help="fine-tuned weights for the target model")
    p.add_argument("--source-scores", required=True, help="scores.json of the source model")
    p.add_argument("--target-scores", required=True, help="scores.json of the target model")
    p.add_argument("--top-k", type=int, default=20, help="head set of each model: its top k heads")
    p.add_argument("--n-random", type=int, default=3, help="random head sets of equal size")
    _add_placement(p)
    _add_task(p)

    p = command("paper", _paper, "the seed paper's experiment: SmolLM2 fine-tuned on real vs synthetic MDQA")
    p.add_argument("--smoke", action="store_true", help="the one-minute plumbing check (PipelineConfig.smollm2_smoke)")
    p.add_argument("--data", default="../shared/data/nq-open-oracle.jsonl.gz", help="Lost-in-the-Middle oracle file")
    p.add_argument("--seed", type=int, default=0, help="seed of data, training and random head sets")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--train",
        choices=("all", "attention_weights"),
        help="weights to fine-tune (default: the preset's, all; the seed paper trains attention_weights only)",
    )

    p = command("compare", _compare, "compare two head sets or score files: recall, Jaccard overlap, rank correlation")
    heads_help = (
        "scores.json, a Wu et al. / HeadKV head_score JSON, DuoAttention's full_attention_heads.tsv (or its folder) "
        "or a QRHead attn_head_set string like 14-22,13-16"
    )
    p.add_argument("reference", help=f"the reference heads (e.g. real data): {heads_help}")
    p.add_argument("candidate", help="the candidate heads (e.g. synthetic data), in any of the same forms")
    p.add_argument(
        "--model",
        help="the model the heads belong to (a headscope model name, saved folder or hub id); needed only when "
        "neither side is a score JSON, and it checks the heads against the model",
    )
    p.add_argument("--top-k", type=int, default=20, help="head sets are the top k heads (default: %(default)s)")
    p.add_argument("--threshold", type=float, help="head sets are the heads scoring above this instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; under ``torchrun`` every rank runs it, sharded, and rank 0 writes the results."""
    from headscope.distributed import abort, finish

    args = build_parser().parse_args(argv)
    world = None
    try:
        world = _join(args)
        with _quiet(world):
            code = args.run(args)
        finish(world)
    except (HeadscopeError, ValueError, FileNotFoundError) as error:  # json.JSONDecodeError is a ValueError
        abort(error)
        if world is None or world.main or not isinstance(error, ShardError):
            where = f" (rank {world.rank} of {world.size})" if world is not None and world.distributed else ""
            print(f"headscope: error{where}: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except BaseException as error:
        abort(error)
        raise
    if world.main and code == 0:
        shutil.rmtree(Path(args.out) / PARTIAL, ignore_errors=True)  # a finished run leaves no partial results
    return code


def _join(args: argparse.Namespace) -> Any:
    """Join the ``torchrun`` process group (gloo on CPU, nccl on CUDA) for the sharded commands."""
    from headscope.distributed import World, init_world, rank_device

    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and args.command not in SHARDED:
        raise ConfigError(
            f"headscope {args.command} runs in one process, but WORLD_SIZE={size}; start it without torchrun "
            f"(sharded commands: {', '.join(SHARDED)})"
        )
    if args.command not in SHARDED:
        return World()
    from headscope.models._placement import resolve_device

    device = str(resolve_device(getattr(args, "device", "cpu")))  # "auto" -> "cuda" or "cpu"
    world = init_world(device)
    if hasattr(args, "device"):
        args.device = rank_device(device, world)
    return world


@contextmanager
def _quiet(world: Any) -> Iterator[None]:
    """Only rank 0 prints: the other ranks' standard output goes nowhere (errors still reach stderr)."""
    if world.main:
        yield
        return
    with open(os.devnull, "w") as sink, redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


if __name__ == "__main__":
    sys.exit(main())
