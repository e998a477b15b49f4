"""Needle-in-a-haystack accuracy of SmolLM2-135M-Instruct per needle realism level.

Builds a small grid (one context length, five depths, a few samples per depth) over the
shipped natural documents for each needle realism level and decodes greedily with the chat
template. Decoding uses Hugging Face ``generate`` (with a KV cache) on the same SmolLM2 weights
that ``headscope.load_model()`` boots, since bridge generation is slow on a CPU. Prints the share
of answers whose ROUGE-1 recall of the gold answer is above 0.5 (Wu et al.'s retrieval
criterion) and the exact-match rate. Takes a few minutes on a CPU.

    python examples/needle_accuracy.py --length 1024 --samples 2
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from headscope.models import smollm2_folder
from headscope.tasks import exact_match, needle_grid, rouge1_recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2, help="samples per depth")
    parser.add_argument("--haystack", default="diverse")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder(), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_folder())
    n_ctx = model.config.max_position_embeddings
    for realism in ("natural", "templated", "symbolic"):
        grid = needle_grid(
            tok,
            [args.length],
            [0, 25, 50, 75, 100],
            needle=realism,
            haystack=args.haystack,
            n_samples=args.samples,
            seed=0,
            n_ctx=n_ctx,
        )
        hits = em = 0
        start = time.perf_counter()
        for sample in grid:
            chat = sample.with_chat_template(tok)
            ids = chat.encode(tok).input_ids[None]
            with torch.no_grad():
                out = model.generate(
                    ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens, do_sample=False
                )
            text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            answers = sample.meta["answers"]
            hits += rouge1_recall(text, answers) > 0.5
            em += exact_match(text, answers)
            print(f"  {realism:9s} depth {sample.meta['depth']:5.1f}  gold {answers[0]!r:22s} -> {text.strip()!r}")
        n = len(grid)
        print(
            f"{realism:9s} n={n} retrieved (ROUGE-1 recall > 0.5) {hits / n:.2f}  exact match {em / n:.2f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
