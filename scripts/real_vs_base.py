"""Does fine-tuning SmolLM2 on real MDQA beat the base model? A quick trial of one training setting.

    python scripts/real_vs_base.py --steps 32 --lr 5e-5 --train all [--n-train 32] [--batch-size 1] [--n-eval 16]
        [--seed 0] [--checkpoints 0 8 16 32] [--em-at 16] [--out trial.json]

Runs only what the question needs, with the pipeline's own pieces (``PipelineConfig.smollm2`` and
its data, split and scoring): the base model's held-out exact match (cached per evaluation set
in ``--cache``), one fine-tuning run on real data, the fine-tuned model's exact match on the same
questions, and how far its retrieval heads move: the top-20 Jaccard overlap with the base
model's heads at each of ``--checkpoints`` (heads detected on the detection half of the
evaluation questions, as in the pipeline). Prints one JSON line and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from headscope.compare import jaccard
from headscope.models import cache_dir, model_info, tokenizer_of
from headscope.pipeline import (
    PipelineConfig,
    base_model,
    finetune_variant,
    retrieval_heads,
    score_model,
    split_evaluation,
    variant_samples,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n-train", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--n-eval", type=int, default=8, help="held-out questions per gold position")
    parser.add_argument("--n-docs", type=int, default=5)
    parser.add_argument("--train", default="attention_weights")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--top-k", type=int, default=20, help="head set size for the Jaccard overlap")
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[], help="steps at which to detect heads")
    parser.add_argument("--em-at", type=int, nargs="*", default=[], help="steps at which to score exact match too")
    parser.add_argument("--data", default=PipelineConfig.smollm2().data)
    parser.add_argument("--cache", default=str(cache_dir() / "real_vs_base"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (evaluation and training) and training")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gold = tuple(sorted({0, args.n_docs // 2, args.n_docs - 1}))
    config = PipelineConfig.smollm2(
        data=args.data,
        finetune_steps=args.steps,
        lr=args.lr,
        n_train=args.n_train,
        batch_size=args.batch_size,
        n_eval=args.n_eval,
        n_docs=args.n_docs,
        gold_positions=gold,
        train=args.train,
        new_tokens=args.new_tokens,
        n_analysis=None,
        seed=args.seed,
    )
    clock = time.perf_counter()
    base, _ = base_model(config)
    tok, n_ctx = tokenizer_of(base), model_info(base).n_ctx
    evaluation = variant_samples(config, config.real, tok, split="eval", n_ctx=n_ctx)
    detect_ids, _ = split_evaluation(evaluation, config.n_analysis)
    detection = [evaluation[i] for i in detect_ids]
    heads_config = dataclasses.replace(config, top_k=args.top_k)

    key = hashlib.sha1(json.dumps([s.prompt for s in evaluation] + [args.new_tokens, args.top_k]).encode()).hexdigest()
    cache = Path(args.cache) / f"base-{key[:12]}.json"
    if cache.is_file():
        reference = json.loads(cache.read_text())
    else:
        score = score_model(base, evaluation, config)
        _, heads = retrieval_heads(base, detection, heads_config)
        reference = {"em": score.accuracy, "per_question": score.sample_accuracy, "heads": [list(h) for h in heads]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(reference))
    base_heads = [tuple(h) for h in reference["heads"]]
    base_seconds = time.perf_counter() - clock

    train = variant_samples(config, config.real, tok, split="train", n_ctx=n_ctx)
    moves: list[dict] = []

    def follow(model, step):
        row: dict = {"step": step}
        if step in args.checkpoints:
            _, heads = retrieval_heads(model, detection, heads_config)
            row["jaccard_top20"] = jaccard(base_heads, heads) if base_heads or heads else float("nan")
            row["n_heads"] = len(heads)
        if step in args.em_at and step != args.steps:
            row["em"] = score_model(model, evaluation, config).accuracy
        if len(row) > 1:
            moves.append(row)
        return {}

    every = math.gcd(*(c for c in [*args.checkpoints, *args.em_at] if c > 0)) or None
    start = time.perf_counter()
    model, run = finetune_variant(base, train, config, eval_fn=follow, eval_every=every)
    train_seconds = time.perf_counter() - start
    score = score_model(model, evaluation, config)
    base_q, real_q = reference["per_question"], score.sample_accuracy
    out = {
        "setting": {k: getattr(args, k) for k in ("steps", "lr", "n_train", "batch_size", "n_docs", "train", "seed")},
        "n_questions": len(evaluation),
        "base_em": reference["em"],
        "real_em": score.accuracy,
        "real_by_position": score.by_position,
        "only_real_right": sum(r > b for b, r in zip(base_q, real_q, strict=True)),
        "only_base_right": sum(b > r for b, r in zip(base_q, real_q, strict=True)),
        "losses": [round(v, 3) for v in run.losses],
        "heads": moves,
        "seconds": {"base": base_seconds, "train": train_seconds, "total": time.perf_counter() - clock},
    }
    line = json.dumps(out)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
