"""Scale: fused detection and knockout at 32k tokens on CPU, where the eager route cannot run.

A tiny random Llama (2 layers, 4 query heads over 2 key/value heads, d_head 16) with a 32,768-token
context, run on one input of 32,768 tokens (a needle stretch in the middle, the answer repeating
it). Each method runs in its own subprocess, so its peak RSS above the level before the call is
its own (psutil thread every 2 ms, as in ``bench_retrieval.py``):

- ``forward``: one plain forward on the fused route (sdpa, nothing recomputed), the floor;
- ``detect``: ``detect_retrieval_heads(..., attention="fused")``, teacher-forced;
- ``uniform_answer`` / ``edge_answer``: a forward under a fused knockout of 4 heads at the answer
  rows (``positions="answer"``: queries from the last prompt row on; edge blocks the needle);
- ``uniform_all``: uniform knockout of the same heads at every row (a running mean, O(n)).

The eager route would have to build each layer's ``[head, query, key]`` scores and pattern:
printed next to the measured peaks, as the memory of one float32 pattern of one layer.

    python benchmarks/bench_scale.py            # 32768 tokens
    python benchmarks/bench_scale.py --tokens 8192
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import torch

METHODS = ("forward", "detect", "uniform_answer", "edge_answer", "uniform_all")
HEADS = [(0, 1), (0, 2), (1, 0), (1, 3)]
N_HEADS, N_CTX = 4, 32768


def build(n_tokens: int):
    """The model and one sample of exactly ``n_tokens`` tokens (prompt + answer - 1)."""
    import headscope as hs
    from headscope.models import tiny_folder, tokenizer_of
    from headscope.tasks import Sample, Span

    model = hs.load_folder(tiny_folder("llama", n_layers=2, n_heads=N_HEADS, n_ctx=N_CTX))
    tokenizer = tokenizer_of(model)
    rng = random.Random(0)
    words = "red blue green gold river stone lamp cloud".split()
    needle = " the secret code is " + " ".join(rng.choice(words) for _ in range(12))
    answer = needle
    filler = " ".join(rng.choice(words) for _ in range(n_tokens))
    ids = tokenizer(filler)["input_ids"]
    n_answer = len(tokenizer(answer)["input_ids"])
    n_needle = len(tokenizer(needle)["input_ids"])
    budget = n_tokens - n_answer - n_needle - 2
    half = tokenizer.decode(ids[: budget // 2])
    rest = tokenizer.decode(ids[budget // 2 : budget])
    prompt = f"{half}{needle}{rest}"
    sample = Sample(prompt, answer, (Span("needle", len(half), len(half) + len(needle)),))
    return model, sample


def worker(method: str, n_tokens: int, threads: int) -> dict:
    from bench_retrieval import measure

    from headscope.ablation import Knockout
    from headscope.retrieval import detect_retrieval_heads

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    model, sample = build(n_tokens)
    enc = sample.encode(model.tokenizer)
    tokens = torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None]
    answer_rows = tuple(range(enc.input_ids.numel() - 1, N_CTX))
    needle = tuple(range(*enc.spans["needle"][0]))
    specs = {
        "uniform_answer": Knockout(tuple(HEADS), "uniform", queries=answer_rows),
        "edge_answer": Knockout(tuple(HEADS), "edge", keys=needle, queries=answer_rows),
        "uniform_all": Knockout(tuple(HEADS), "uniform"),
    }
    from headscope.models._fused_bridge import fused_bridge

    def run() -> object:
        with torch.no_grad():
            if method == "detect":
                kw = dict(require_prediction=False, success=lambda s, out: True, progress=False)
                return detect_retrieval_heads(model, [sample], attention="fused", **kw)
            if method == "forward":
                with fused_bridge(model):
                    return model(tokens)[0, -1].sum().item()
            with specs[method].applied(model, attention="fused"):
                return model(tokens)[0, -1].sum().item()

    seconds, peak, _ = measure(run)
    return {"method": method, "tokens": int(tokens.shape[1]), "seconds": seconds, "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=N_CTX)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tokens, args.threads)))
        return
    pattern_gb = N_HEADS * args.tokens**2 * 4 / 1e9
    print(f"tiny Llama (2 layers, {N_HEADS} heads, context {N_CTX}), CPU, {args.threads} threads, fused route")
    print(f"eager route: one layer's float32 pattern [{N_HEADS}, {args.tokens}, {args.tokens}] = {pattern_gb:.1f} GB")
    print(f"{'tokens':>6} {'method':>15} {'seconds':>8} {'ΔRSS GB':>8} {'pattern / ΔRSS':>15}")
    for method in args.methods:
        cmd = [sys.executable, str(Path(__file__)), "--worker", method, "--tokens", str(args.tokens)]
        out = subprocess.run([*cmd, "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        ratio = pattern_gb / max(r["peak_gb"], 1e-9)
        print(f"{r['tokens']:>6} {method:>15} {r['seconds']:>8.2f} {r['peak_gb']:>8.3f} {ratio:>14.0f}x", flush=True)


if __name__ == "__main__":
    main()
