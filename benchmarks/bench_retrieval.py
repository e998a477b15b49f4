"""Cost and agreement of retrieval-head detection on SmolLM2-135M-Instruct (CPU).

Measured in one run, each against a baseline measured in the same run:

1. teacher-forced detection vs one plain forward over the same inputs (no hooks);
2. generation-mode detection vs plain greedy decoding (the same KV-cached loop, no hooks) of
   the same number of tokens;
3. vs Wu et al.'s procedure in Hugging Face (eager attention, prefill + greedy decoding with
   ``output_attentions=True`` every step) and vs a naive teacher-forced pass (one HF forward
   with ``output_attentions=True``, every layer's attention kept): time, peak memory, and
   agreement of the top-10 heads;
4. one teacher-forced detection at 8k tokens, with a plain forward at 8k for scale.

Peak memory is the peak resident set size above the pre-call level, sampled every 2 ms by a
psutil thread after ``gc.collect()`` and glibc ``malloc_trim`` (tracemalloc does not see torch's
allocations). glibc's mmap threshold is pinned at 64 KiB first: by default it rises after the
first large free, so later tensors land on the heap, whose freed pages stay resident, and the
RSS peak then depends on allocation order rather than on live memory. Times are the minimum
over ``--repeats`` interleaved runs, because the machine is shared; peaks are the largest over
the runs, after one warm-up call of each. ``--quick`` uses fewer and shorter samples and skips
the 8k point unless ``--long`` is given.

    python benchmarks/bench_retrieval.py --quick
    python benchmarks/bench_retrieval.py --long 8192
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import psutil
import torch

import headscope as hs
from headscope.retrieval import RetrievalScores, detect_retrieval_heads, greedy_steps
from headscope.tasks import Sample

#: Prompt tokens besides the haystack: the question, and the chat template around it.
ROOM = 60


def needle_samples(tokenizer: Any, n: int, n_tokens: int, seed: int = 0) -> list[Sample]:
    """``n`` samples of the library's needle builder, about ``n_tokens`` prompt tokens each, chat template applied.

    Needles sit at depths spread from 10% to 90%; the gold answer is the whole needle sentence, as in Wu et al.
    """
    depths = [10 + 80 * i / max(1, n - 1) for i in range(n)]
    grid = hs.needle_grid(tokenizer, [n_tokens - ROOM], depths, haystack="templated", answer="sentence", seed=seed)
    return [s.with_chat_template(tokenizer) for s in grid]


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Seconds, peak RSS above the starting RSS (GB), and the result of ``fn()``."""
    trim()
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample_rss() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample_rss, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t0
        done.set()
        thread.join()
    return seconds, max(0, peak[0] - start) / 1e9, result


def best(runs: list[tuple[float, float, Any]]) -> tuple[float, float, Any]:
    return min(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2]


def plain_forwards(model: Any, samples: list[Sample], tokenizer: Any) -> None:
    with torch.no_grad():
        for s in samples:
            enc = s.encode(tokenizer)
            model(torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None])


def plain_decoding(model: Any, samples: list[Sample], tokenizer: Any, n_tokens: list[int]) -> None:
    with torch.no_grad():
        for s, n in zip(samples, n_tokens, strict=True):
            list(greedy_steps(model, s.encode(tokenizer).input_ids, max_new_tokens=n, stop_ids=()))


def hf_scores(hits: list[torch.Tensor], model: str, mode: str) -> RetrievalScores:
    per = torch.stack(hits)
    return RetrievalScores(per.sum(0), len(hits), len(hits), model, mode, {}, per)


def wu_hf(hf: Any, samples: list[Sample], tokenizer: Any, max_new_tokens: int) -> RetrievalScores:
    """Wu et al.'s loop in HF: prefill, then cached greedy steps with every step's attentions."""
    per = []
    with torch.no_grad():
        for s in samples:
            enc = s.encode(tokenizer)
            (start, end), seq = enc.spans["needle"][0], enc.input_ids.tolist()
            hits = torch.zeros(hf.config.num_hidden_layers, hf.config.num_attention_heads, dtype=torch.float64)
            inputs, past = torch.tensor([seq]), None
            for _ in range(max_new_tokens):
                out = hf(inputs, past_key_values=past, use_cache=True, output_attentions=True)
                past, token = out.past_key_values, int(out.logits[0, -1].argmax())
                for layer, attention in enumerate(out.attentions):
                    top = attention[0, :, -1].argmax(-1)
                    inside = (top >= start) & (top < end)
                    hits[layer] += (inside & (torch.tensor(seq)[top] == token)).double()
                if token == tokenizer.eos_token_id:
                    break
                seq.append(token)
                inputs = torch.tensor([[token]])
            per.append(hits / (end - start))
    return hf_scores(per, "hf", "wu")


def naive_teacher_forced(hf: Any, samples: list[Sample], tokenizer: Any) -> RetrievalScores:
    """One HF forward per sample with output_attentions=True (all layers kept), then the criterion."""
    per = []
    with torch.no_grad():
        for s in samples:
            enc = s.encode(tokenizer)
            (start, end) = enc.spans["needle"][0]
            seq = torch.cat([enc.input_ids, enc.answer_ids[:-1]])
            out = hf(seq[None], output_attentions=True)
            rows = enc.input_ids.numel() - 1 + torch.arange(enc.answer_ids.numel())
            att = torch.stack(out.attentions)[:, 0][:, :, rows]  # [layer, head, row, key]
            top = att.argmax(-1)
            ok = out.logits[0, rows].argmax(-1) == enc.answer_ids
            hit = (top >= start) & (top < end) & (seq[top] == enc.answer_ids) & ok
            per.append(hit.sum(-1).double() / (end - start))
    return hf_scores(per, "hf", "naive")


def overlap(a: RetrievalScores, b: RetrievalScores, k: int = 10) -> int:
    return len({h for h, _ in a.top(k)} & {h for h, _ in b.top(k)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 samples of ~300 tokens; no 8k point")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=600, help="approximate prompt length")
    parser.add_argument("--long", type=int, default=None, help="length of the long point (default 8192; 0 = skip)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n_samples, n_tokens = (4, 300) if args.quick else (args.samples, args.tokens)
    long_len = args.long if args.long is not None else (0 if args.quick else 8192)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        print("not glibc: RSS peaks may include freed heap pages")

    from transformers import AutoModelForCausalLM

    model = hs.load_model()
    tok = model.tokenizer
    hf = AutoModelForCausalLM.from_pretrained(
        hs.models.smollm2_folder(), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    samples = needle_samples(tok, n_samples, n_tokens)
    lengths = [s.encode(tok).input_ids.numel() for s in samples]
    print(f"SmolLM2-135M-Instruct bridge, {n_samples} samples of {min(lengths)}-{max(lengths)} prompt tokens, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}")  # fmt: skip

    # Warm-up: first calls allocate lazily created buffers that later calls reuse.
    plain_forwards(model, samples[:1], tok)
    detect_retrieval_heads(model, samples[:1], progress=False)
    plain_decoding(model, samples[:1], tok, [2])

    # 1. teacher-forced detection vs plain forwards.
    plain, tf = [], []
    for _ in range(args.repeats):
        plain.append(measure(lambda: plain_forwards(model, samples, tok)))
        tf.append(measure(lambda: detect_retrieval_heads(model, samples, progress=False)))
    (t_plain, m_plain, _), (t_tf, m_tf, tf_scores) = best(plain), best(tf)
    print(f"teacher-forced detection  {t_tf:7.2f} s {m_tf:6.2f} GB | plain forward {t_plain:7.2f} s {m_plain:6.2f} GB"
          f" | ratio time {t_tf / t_plain:.3f} memory {m_tf / max(m_plain, 1e-9):.3f}")  # fmt: skip

    # 2. generation detection vs plain greedy decoding of the same tokens.
    gen = [measure(lambda: detect_retrieval_heads(
        model, samples, mode="generation", max_new_tokens=args.max_new_tokens, keep_per_sample=True, progress=False
    ))]  # fmt: skip
    gen_scores = gen[0][2]
    produced = [_n_generated(model, s, tok, args.max_new_tokens) for s in samples]
    dec = [measure(lambda: plain_decoding(model, samples, tok, produced))]
    for _ in range(args.repeats - 1):
        gen.append(measure(lambda: detect_retrieval_heads(
            model, samples, mode="generation", max_new_tokens=args.max_new_tokens, progress=False
        )))  # fmt: skip
        dec.append(measure(lambda: plain_decoding(model, samples, tok, produced)))
    (t_gen, m_gen, _), (t_dec, m_dec, _) = best(gen), best(dec)
    print(f"generation detection      {t_gen:7.2f} s {m_gen:6.2f} GB | plain greedy  {t_dec:7.2f} s {m_dec:6.2f} GB"
          f" | ratio time {t_gen / t_dec:.3f} memory {m_gen / max(m_dec, 1e-9):.3f}"
          f" | {sum(produced)} tokens, {gen_scores.n_counted}/{n_samples} answered")  # fmt: skip

    # 3. against Hugging Face baselines.
    t_wu, m_wu, wu = measure(lambda: wu_hf(hf, samples, tok, args.max_new_tokens))
    t_nv, m_nv, naive = measure(lambda: naive_teacher_forced(hf, samples, tok))
    print(
        f"Wu-style HF decoding      {t_wu:7.2f} s {m_wu:6.2f} GB | ours/Wu time {t_gen / t_wu:.3f} "
        f"memory {m_gen / max(m_wu, 1e-9):.3f} | top-10 agreement with generation mode {overlap(wu, gen_scores)}/10"
    )
    print(
        f"naive HF teacher-forced   {t_nv:7.2f} s {m_nv:6.2f} GB | ours/naive time {t_tf / t_nv:.3f} "
        f"memory {m_tf / max(m_nv, 1e-9):.3f} | top-10 agreement with teacher-forced {overlap(naive, tf_scores)}/10"
    )
    loose = detect_retrieval_heads(model, samples, require_prediction=False, progress=False)
    print(
        f"top-10 overlap with generation mode: teacher-forced {overlap(tf_scores, gen_scores)}/10, "
        f"teacher-forced require_prediction=False {overlap(loose, gen_scores)}/10"
    )
    print("  generation top-10:     ", _fmt(gen_scores))
    print("  teacher-forced top-10: ", _fmt(tf_scores))

    # 4. the long point.
    if long_len:
        long = needle_samples(tok, 1, long_len - 40, seed=99)[0]
        enc = long.encode(tok)
        n = enc.input_ids.numel() + enc.answer_ids.numel() - 1
        t_lp, m_lp, _ = measure(lambda: plain_forwards(model, [long], tok))
        t_ld, m_ld, res = measure(lambda: detect_retrieval_heads(model, [long], progress=False))
        print(f"{n} tokens: teacher-forced detection {t_ld:.1f} s, peak +{m_ld:.2f} GB | plain forward {t_lp:.1f} s, "
              f"+{m_lp:.2f} GB | ratio time {t_ld / t_lp:.3f} memory {m_ld / max(m_lp, 1e-9):.3f} | "
              f"answered {res.n_counted}/1, top-3 {_fmt(res, 3)}")  # fmt: skip


def _n_generated(model: Any, sample: Sample, tok: Any, max_new_tokens: int) -> int:
    with torch.no_grad():
        steps = greedy_steps(
            model, sample.encode(tok).input_ids, max_new_tokens=max_new_tokens, stop_ids={tok.eos_token_id}
        )
        return len(list(steps))


def _fmt(scores: RetrievalScores, k: int = 10) -> str:
    return " ".join(f"{head}:{score:.2f}" for head, score in scores.top(k))


if __name__ == "__main__":
    main()
