"""Per-head patching speed: headscope's sweep against TransformerLens's own patching, on SmolLM2.

Two measurements, each in this one run against TransformerLens 4.x/3.9's ``generic_activation_patch``
with the setter of ``get_act_patch_attn_head_out_all_pos`` (patch one head's ``hook_z``, one full
forward per head):

1. all positions patched, ``--short`` tokens (default 128);
2. only the last position patched, ``--long`` tokens (default 1024).

TransformerLens does the same work for every head (one full forward), so it is timed on a sample
of heads spread over the layers and scaled to all heads (per-head time x n_heads, plus its clean
``run_with_cache`` once). headscope runs the complete sweep over every head, including its own clean
and corrupted runs. Both sweeps are checked to agree on the sampled heads.

    python benchmarks/bench_patching.py [--short 128] [--long 1024] [--tl-heads 6]
"""

from __future__ import annotations

import argparse
import time
import warnings

import pandas as pd
import torch

import headscope as hs
from headscope.patching import LogitDiff, head_patching_sweep


def inputs(model, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, LogitDiff]:
    tok = model.tokenizer
    filler = "The river runs past the old mill, and the village sleeps under the hill. "
    question = " What is the secret code? The secret code is"
    clean_ids = tok.encode("The secret code is 4712. ", add_special_tokens=False)
    corrupt_ids = tok.encode("The secret code is 9035. ", add_special_tokens=False)
    q_ids = tok.encode(question, add_special_tokens=False)
    fill_ids = tok.encode(filler * (n_tokens // 10), add_special_tokens=False)
    n_fill = n_tokens - 1 - len(clean_ids) - len(q_ids)
    clean = torch.tensor([[tok.bos_token_id, *clean_ids, *fill_ids[:n_fill], *q_ids]])
    corrupt = torch.tensor([[tok.bos_token_id, *corrupt_ids, *fill_ids[:n_fill], *q_ids]])
    metric = LogitDiff(tok.encode(" 4", add_special_tokens=False)[0], tok.encode(" 9", add_special_tokens=False)[0])
    return clean, corrupt, metric


def transformer_lens_per_head(model, clean, corrupt, metric, heads) -> tuple[float, float, torch.Tensor]:
    """Seconds for TL's clean cache, seconds per patched head, and its values on ``heads``."""
    from transformer_lens.patching import generic_activation_patch, layer_head_vector_patch_setter

    t0 = time.perf_counter()
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    t_cache = time.perf_counter() - t0
    index = pd.DataFrame(heads, columns=["layer", "head"])
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = generic_activation_patch(
            model, corrupt, cache, metric, layer_head_vector_patch_setter, "z", index_df=index
        )
    per_head = (time.perf_counter() - t0) / len(heads)
    return t_cache, per_head, values.float().cpu()


def compare(model, n_tokens: int, positions, n_tl_heads: int, label: str) -> float:
    info = hs.model_info(model)
    clean, corrupt, metric = inputs(model, n_tokens)
    layers = torch.linspace(0, info.n_layers - 1, n_tl_heads).round().long().tolist()
    heads = [(layer, i % info.n_heads) for i, layer in enumerate(layers)]
    t_cache, per_head, tl_values = transformer_lens_per_head(model, clean, corrupt, metric, heads)
    n_all = info.n_layers * info.n_heads
    tl_total = t_cache + per_head * n_all
    t0 = time.perf_counter()
    ours = head_patching_sweep(model, clean, corrupt, metric, positions=positions, progress=False)
    t_ours = time.perf_counter() - t0
    if positions == "all":
        gap = max(abs(ours.values[h].item() - tl_values[i].item()) for i, h in enumerate(heads))
        agree = f"max |difference| on the sampled heads {gap:.2e}"
    else:
        agree = "(TL patches all positions here; headscope's last-position values are tested against full patching)"
    print(f"{label}: {clean.shape[1]} tokens, {n_all} heads")
    print(
        f"  TransformerLens: {per_head:.3f} s/head (timed on {len(heads)} heads) + {t_cache:.2f} s cache "
        f"-> {tl_total:.1f} s for all heads"
    )
    print(f"  headscope sweep: {t_ours:.1f} s for all heads (resumed: {ours.settings['resumed']})")
    print(f"  speed-up: {tl_total / t_ours:.1f}x   {agree}")
    return tl_total / t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=128, help="tokens for the all-position sweep")
    parser.add_argument("--long", type=int, default=1024, help="tokens for the last-position sweep")
    parser.add_argument("--tl-heads", type=int, default=6, help="heads TransformerLens is timed on")
    args = parser.parse_args()
    model = hs.load_model()
    print(f"SmolLM2-135M-Instruct ({hs.model_info(model).kind}), torch threads {torch.get_num_threads()}")
    a = compare(model, args.short, "all", args.tl_heads, "all positions patched")
    b = compare(model, args.long, [-1], max(2, args.tl_heads // 3), "last position patched")
    print(f"ratios: all-position {a:.1f}x, last-position at {args.long} tokens {b:.1f}x")


if __name__ == "__main__":
    main()
