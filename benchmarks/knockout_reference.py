"""Knockout reference figures on SmolLM2-135M-Instruct: top-10 retrieval heads against random-10.

Wu et al.'s procedure, as issue 11 asks for it:

1. detect retrieval heads by generation (greedy decoding with a KV cache) on templated needles
   at about 1k tokens (``--detect-samples`` per depth, seed 1);
2. on held-out needles of the same kind (seed 0, ``--samples`` per depth), knock out the top 10
   heads, and 10 random heads drawn outside the top 10 with seeds 0, 1, 2, in ``uniform``,
   ``zero`` and ``edge`` (key: the needle) modes, at the rows that produce the answer only
   (``positions="answer"``: the prompt is read intact);
3. score each sample by generation: ROUGE-1 recall of the gold answer above 0.5
   (:func:`headscope.evaluate.retrieval_success`).

Prints the intact score, the top-10 score and each random-10 score per mode. CPU, about 15-25
minutes on two shared cores.

    python benchmarks/knockout_reference.py
"""

from __future__ import annotations

import argparse
import functools
import time

import headscope as hs
from headscope.ablation import knockout_curve
from headscope.evaluate import retrieval_success
from headscope.retrieval import detect_retrieval_heads
from headscope.tasks import needle_grid

DEPTHS = [0, 20, 40, 60, 80, 100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1000, help="context length in tokens")
    parser.add_argument("--samples", type=int, default=2, help="evaluation samples per depth (6 depths)")
    parser.add_argument("--detect-samples", type=int, default=3, help="detection samples per depth")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["uniform", "zero", "edge"])
    args = parser.parse_args()
    start = time.perf_counter()
    model = hs.load_model("smollm2-135m-instruct")
    tok, n_ctx = model.tokenizer, hs.model_info(model).n_ctx

    def grid(n: int, seed: int) -> list:
        samples = needle_grid(tok, [args.length], DEPTHS, needle="templated", n_samples=n, seed=seed, n_ctx=n_ctx)
        return [s.with_chat_template(tok) for s in samples]

    scores = detect_retrieval_heads(
        model, grid(args.detect_samples, 1), mode="generation", max_new_tokens=args.max_new_tokens, progress=False
    )
    top = [head for head, score in scores.above(0.0)][:10]
    k = len(top)  # zero-score heads never fill the set: fewer than 10 heads may have a positive score
    print(f"detection: {scores.n_counted} of {len(DEPTHS) * args.detect_samples} samples counted; top {k}:")
    print("  " + ", ".join(f"{head}={s:.2f}" for head, s in scores.top(k)))
    samples = grid(args.samples, 0)
    n_tokens = [len(s.encode(tok).input_ids) for s in samples]
    print(f"evaluation: {len(samples)} samples of {min(n_tokens)}-{max(n_tokens)} tokens, positions='answer'")
    score_fn = functools.partial(retrieval_success, max_new_tokens=args.max_new_tokens)
    for mode in args.modes:
        curve = knockout_curve(
            model,
            samples,
            top,
            score_fn,
            ks=[k],
            seeds=[0, 1, 2],
            mode=mode,
            span="needle" if mode == "edge" else None,
            positions="answer",
            progress=False,
        )
        randoms = [r[0] for r in curve.random]
        print(
            f"{mode:8s} intact {curve.baseline:.3f}  top-{k} {curve.top[0]:.3f}  random-{k} "
            f"{' '.join(f'{r:.3f}' for r in randoms)} (mean {curve.random_mean()[0]:.3f})",
            flush=True,
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
