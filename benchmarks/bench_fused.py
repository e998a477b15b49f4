"""Teacher-forced retrieval-head detection on the fused route vs an HF sdpa forward and vs the eager route.

SmolLM2-135M-Instruct on CPU, one needle sample per length (prompt + answer - 1 tokens). Three
methods, each in its own subprocess so its peak memory is its own:

- ``hf_sdpa``: one Hugging Face forward (``attn_implementation="sdpa"``) over the same tokens,
  projecting logits only for the answer rows (``logits_to_keep``), as detection does, so the
  baseline is a forward's attention and MLP cost, not the 1.6 GB full-vocabulary logits at 8k;
- ``fused``: ``detect_retrieval_heads(..., attention="fused")``;
- ``eager``: ``detect_retrieval_heads(..., attention="eager")`` (TransformerLens builds every
  layer's ``[head, query, key]`` pattern; headscope's only route before the fused one).

Each worker boots the model, runs one small warm-up call, then measures one call: wall time and
peak RSS above the level before the call (psutil thread every 2 ms, glibc mmap threshold pinned
at 64 KiB, as in ``bench_retrieval.py``). The parent prints one table with the ratios.

    python benchmarks/bench_fused.py                 # 2048 and 8192 tokens
    python benchmarks/bench_fused.py --lengths 2048 4096 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch

METHODS = ("hf_sdpa", "fused", "eager")


def worker(method: str, n_tokens: int, threads: int) -> dict:
    from bench_retrieval import haystack_sample, measure

    import headscope as hs
    from headscope.models import smollm2_folder
    from headscope.retrieval import detect_retrieval_heads

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    model = hs.load_model()
    tokenizer = hs.models.tokenizer_of(model)
    sample = haystack_sample(tokenizer, 0, n_tokens)
    enc = sample.encode(tokenizer)
    while enc.input_ids.numel() + enc.answer_ids.numel() - 1 > n_tokens:  # trim to the budget, answer included
        sample = haystack_sample(tokenizer, 0, enc.input_ids.numel() - 8)
        enc = sample.encode(tokenizer)
    tokens = torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None]
    warm = haystack_sample(tokenizer, 1, 128)
    if method == "hf_sdpa":
        from transformers import AutoModelForCausalLM

        del model
        hf = AutoModelForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32, attn_implementation="sdpa")
        hf.eval()
        n_rows = enc.answer_ids.numel()

        def run(ids: torch.Tensor) -> None:
            with torch.no_grad():
                hf(ids, logits_to_keep=n_rows)

        warm_enc = warm.encode(tokenizer)
        run(torch.cat([warm_enc.input_ids, warm_enc.answer_ids[:-1]])[None])
        seconds, peak, _ = measure(lambda: run(tokens))
    else:

        def run_detect(s: object) -> object:
            return detect_retrieval_heads(model, [s], attention=method, progress=False)

        run_detect(warm)
        seconds, peak, _ = measure(lambda: run_detect(sample))
    return {"method": method, "tokens": int(tokens.shape[1]), "seconds": seconds, "peak_gb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.threads)))
        return
    print(f"SmolLM2-135M-Instruct, CPU, {args.threads} threads, teacher-forced detection of one needle sample")
    print(f"{'tokens':>6} {'method':>8} {'seconds':>8} {'ΔRSS GB':>8}")
    for n in args.lengths:
        results = {}
        for method in args.methods:
            out = subprocess.run(
                [sys.executable, str(Path(__file__)), "--worker", method, str(n), "--threads", str(args.threads)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[method]
            print(f"{r['tokens']:>6} {method:>8} {r['seconds']:>8.2f} {r['peak_gb']:>8.3f}", flush=True)
        if "fused" not in results:
            continue
        fused = results["fused"]
        if "hf_sdpa" in results:
            hf = results["hf_sdpa"]
            time_ratio, rss_ratio = fused["seconds"] / hf["seconds"], fused["peak_gb"] / max(hf["peak_gb"], 1e-9)
            print(
                f"{fused['tokens']:>6} fused / HF sdpa forward: time {time_ratio:.2f}x (goal <= 1.15), "
                f"ΔRSS {rss_ratio:.2f}x (goal <= 1.2)"
            )
        if "eager" in results:
            eager = results["eager"]
            time_ratio, rss_ratio = eager["seconds"] / fused["seconds"], eager["peak_gb"] / max(fused["peak_gb"], 1e-9)
            print(
                f"{fused['tokens']:>6} eager / fused: time {time_ratio:.2f}x (goal >= 3 at 8k), "
                f"ΔRSS {rss_ratio:.1f}x (goal >= 10 at 8k)",
                flush=True,
            )


if __name__ == "__main__":
    main()
