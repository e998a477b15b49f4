"""Retrieval-head detection on the fused route vs Hugging Face sdpa, Wu-style decoding and the eager route.

SmolLM2-135M-Instruct (or ``--model``: a name, folder or hub id), one needle sample per length.
Each method runs in its own subprocess so its peak memory is its own.
``--mode teacher_forced`` (prompt + answer - 1 tokens):

- ``hf_sdpa``: one Hugging Face forward (``attn_implementation="sdpa"``) over the same tokens,
  projecting logits only for the answer rows (``logits_to_keep``), as detection does, so the
  baseline is a forward's attention and MLP cost, not the 1.6 GB full-vocabulary logits at 8k;
- ``fused``: ``detect_retrieval_heads(..., attention="fused")``;
- ``eager``: ``detect_retrieval_heads(..., attention="eager")`` (TransformerLens builds every
  layer's ``[head, query, key]`` pattern; headscope's only route before the fused one).

``--mode generation`` (prompt of N tokens, then ``--new-tokens`` greedy steps, no early stop):

- ``hf_greedy``: Hugging Face greedy decoding with sdpa and a KV cache, the same number of steps;
- ``wu``: Wu et al.'s way: sdpa prefill, then eager decode steps with ``output_attentions=True``,
  each step's per-head top-1 key read from the returned attentions;
- ``fused`` / ``eager``: ``detect_retrieval_heads(..., mode="generation", attention=...)``.

Each worker boots the model, runs one small warm-up call, then measures one call: wall time and
peak memory above the level before the call (CPU: RSS, psutil thread every 2 ms, glibc mmap
threshold pinned at 64 KiB, as in ``bench_retrieval.py``; CUDA: ``max_memory_allocated``). The
parent prints one table with the ratios.

    python benchmarks/bench_fused.py                 # teacher-forced, 2048 and 8192 tokens
    python benchmarks/bench_fused.py --mode generation --lengths 2048 --methods hf_greedy wu fused
    python benchmarks/bench_fused.py --device cuda --dtype bfloat16   # see gpu_check.sh
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

METHODS = {"teacher_forced": ("hf_sdpa", "fused", "eager"), "generation": ("hf_greedy", "wu", "fused", "eager")}


def measure_on(device: str, fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds and peak memory (GB) above the start: RSS on CPU, allocated memory on CUDA."""
    from bench_retrieval import measure

    if not device.startswith("cuda"):
        seconds, peak, _ = measure(fn)
        return seconds, peak
    torch.cuda.synchronize()
    start = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, (torch.cuda.max_memory_allocated() - start) / 1e9


def worker(method: str, n_tokens: int, args: argparse.Namespace) -> dict:
    from bench_retrieval import needle_samples

    import headscope as hs
    from headscope.retrieval import detect_retrieval_heads

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass
    dtype = getattr(torch, args.dtype)
    generation = args.mode == "generation"
    model = hs.load_model(args.model, device=args.device, dtype=dtype)
    tokenizer = hs.models.tokenizer_of(model)
    sample = needle_samples(tokenizer, 1, n_tokens)[0]
    enc = sample.encode(tokenizer)
    extra = 0 if generation else enc.answer_ids.numel() - 1
    while enc.input_ids.numel() + extra > n_tokens:  # trim to the budget, answer included
        sample = needle_samples(tokenizer, 1, enc.input_ids.numel() - 8)[0]
        enc = sample.encode(tokenizer)
        extra = 0 if generation else enc.answer_ids.numel() - 1
    tokens = enc.input_ids[None] if generation else torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None]
    tokens = tokens.to(args.device)
    warm = needle_samples(tokenizer, 1, 128, seed=1)[0]
    warm_enc = warm.encode(tokenizer)
    steps = args.new_tokens
    if method in ("hf_sdpa", "hf_greedy", "wu"):
        from transformers import AutoModelForCausalLM

        del model
        hf = AutoModelForCausalLM.from_pretrained(model_folder(args.model), dtype=dtype, attn_implementation="sdpa")
        hf = hf.to(args.device).eval()
        n_rows = enc.answer_ids.numel()

        def run(ids: torch.Tensor) -> None:
            with torch.no_grad():
                if method == "hf_sdpa":
                    hf(ids, logits_to_keep=n_rows)
                else:
                    decode(hf, ids, steps, wu=method == "wu")

        run(
            warm_enc.input_ids[None].to(args.device)
            if generation
            else torch.cat([warm_enc.input_ids, warm_enc.answer_ids[:-1]])[None].to(args.device)
        )
        seconds, peak = measure_on(args.device, lambda: run(tokens))
    else:
        kw = dict(attention=method, progress=False)
        if generation:
            kw.update(mode="generation", max_new_tokens=steps, stop_ids=(), success=lambda s, out: True)

        def run_detect(s: object) -> object:
            return detect_retrieval_heads(model, [s], **kw)

        run_detect(warm)
        seconds, peak = measure_on(args.device, lambda: run_detect(sample))
    return {"method": method, "tokens": int(tokens.shape[1]), "seconds": seconds, "peak_gb": peak}


def model_folder(spec: str) -> Path:
    """The Hugging Face folder behind a ``load_model`` spec: SmolLM2's converted folder, a folder, a cached hub id."""
    from headscope.models import DEFAULT_MODEL, hub_folder, smollm2_folder

    if spec.lower() == DEFAULT_MODEL:
        return smollm2_folder()
    return Path(spec) if Path(spec).is_dir() else hub_folder(spec)


def decode(hf: object, ids: torch.Tensor, steps: int, *, wu: bool) -> None:
    """Greedy decoding of ``steps`` tokens with a KV cache; ``wu``: eager steps reading each head's top-1 key."""
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)
    hf.set_attn_implementation("sdpa")
    out = hf(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    if wu:
        hf.set_attn_implementation("eager")
    reads = []
    for _ in range(steps - 1):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        out = hf(token, past_key_values=cache, use_cache=True, output_attentions=wu)
        if wu:
            reads.append(torch.stack([a[0, :, -1].argmax(-1) for a in out.attentions]))  # [layer, head] top-1 keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=tuple(METHODS), default="teacher_forced")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=sorted({m for ms in METHODS.values() for m in ms}))
    parser.add_argument("--new-tokens", type=int, default=24, help="generation: greedy steps per method")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a load_model name, folder or hub id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return
    methods = args.methods or list(METHODS[args.mode])
    memory = "peak alloc GB" if args.device.startswith("cuda") else "ΔRSS GB"
    what = "teacher-forced detection" if args.mode == "teacher_forced" else f"generation, {args.new_tokens} steps"
    print(f"{args.model}, {args.device} {args.dtype}, {args.threads} threads, {what}, one needle sample")
    print(f"{'tokens':>6} {'method':>9} {'seconds':>8} {memory:>13}")
    passed = ["--threads", str(args.threads), "--mode", args.mode, "--new-tokens", str(args.new_tokens)]
    passed += ["--device", args.device, "--dtype", args.dtype, "--model", args.model]
    for n in args.lengths:
        results = {}
        for method in methods:
            cmd = [sys.executable, str(Path(__file__)), "--worker", method, str(n), *passed]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[method] = r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['tokens']:>6} {method:>9} {r['seconds']:>8.2f} {r['peak_gb']:>13.3f}", flush=True)
        fused = results.get("fused")
        if fused is None:
            continue
        for base, goal in (("hf_sdpa", "<= 1.15; memory <= 1.2"), ("hf_greedy", "<= 1.15")):
            if base in results:
                b = results[base]
                print(
                    f"{fused['tokens']:>6} fused / {base}: time {fused['seconds'] / b['seconds']:.2f}x (goal {goal}), "
                    f"memory {fused['peak_gb'] / max(b['peak_gb'], 1e-9):.2f}x"
                )
        for other, goal in (("wu", "> 1"), ("eager", ">= 3 and memory >= 10 at 8k")):
            if other in results:
                o = results[other]
                print(
                    f"{fused['tokens']:>6} {other} / fused: time {o['seconds'] / fused['seconds']:.2f}x, "
                    f"memory {o['peak_gb'] / max(fused['peak_gb'], 1e-9):.1f}x (goal {goal})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
