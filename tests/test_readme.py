"""Every Python block of README.md runs, in order and in one namespace, and gives the numbers a reader expects.

Each block is matched to its checks by a line it contains, so a new block without a check fails
``test_every_readme_block_compiles_and_has_a_check`` (fast) before the SmolLM2 run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _setup(ns: dict) -> None:
    samples = ns["samples"]
    assert len(samples) == 9 and len({s.meta["needle_sentence"] for s in samples}) == 3
    assert samples[0].prompt.endswith("<|im_start|>assistant\nThe native language of Omar Vasquez is")
    for s in samples:  # each assistant turn starts with the needle sentence up to the answer
        lead = s.prompt.rsplit("<|im_start|>assistant\n", 1)[1]
        assert lead and s.meta["needle_sentence"].startswith(lead + s.answer), (lead, s.answer)


def _detect(ns: dict) -> None:
    scores = ns["scores"]
    counted = f"counted {scores.n_counted} of {scores.n_samples}"
    print(f"\nREADME detection: {counted}, top {[(f'L{a}H{b}', round(v, 2)) for (a, b), v in scores.top(5)]}")
    assert scores.mode == "teacher_forced" and scores.n_counted > scores.n_samples / 2, counted
    assert scores.top(1)[0][1] > 0.5 and len(scores.above(0.1)) >= 5, scores.top(10)
    assert Path("scores.json").is_file() and Path("head_score.json").is_file()


def _stability(ns: dict) -> None:
    import headscope as hs

    scores, boot = ns["scores"], ns["boot"]
    stable = boot.stable(0.9)
    print(f"\nREADME stability: stable {[str(h) for h in stable]}, P(top 10) of the top head {boot.p_top.max():.3f}")
    assert boot.n_samples == scores.n_counted and boot.top == tuple(hs.head_set(scores.scores, top_k=10))
    assert all(boot.p_top[h] >= 0.9 for h in stable) and (boot.low <= boot.high).all()
    assert scores.top(1)[0][0] in stable, "the leading head (score above 0.5) stays in the top 10"


def _knockout(ns: dict) -> None:
    curve, sample = ns["curve"], ns["samples"][0]
    print(f"\nREADME knockout curve: clean {curve.baseline:.3f}, top {curve.top}, random mean "
          f"{curve.random_mean().round(3).tolist()} std {curve.random_std().round(3).tolist()}")  # fmt: skip
    assert curve.baseline > 0.7, "the intact model answers most needles"
    band = curve.random_mean()[-1] - curve.random_std()[-1]
    assert curve.top[-1] < band - 0.2, "knocking out the top 10 heads drops far below the random band"
    assert curve.random_mean()[-1] > 0.6, "random heads matter much less"
    import headscope as hs

    assert sample.answer.strip() in hs.generate_answer(ns["model"], sample, max_new_tokens=8)


def _view(ns: dict) -> None:
    html = ns["view"].html()
    assert "<" in html and len(html) > 1000
    top = ns["rows"].top_frame()
    assert top["in_span"].any(), "a top retrieval head attends to the needle on a row producing the answer"


def _tasks(ns: dict) -> None:
    (sample,) = ns["mdqa"]
    assert sample.meta["gold_position"] == 4 and len(sample.text("doc")) == 10 and sample.lead_in


def _finetune(ns: dict) -> None:
    result = ns["result"]
    assert result.steps == 3 and result.losses[-1] < result.losses[0], result.losses  # one batch, seen thrice
    assert result.trained and all("attn" in name for name in result.trained), result.trained[:4]
    assert Path("synthetic.safetensors").is_file()


def _patch(ns: dict) -> None:
    sweep, comparison = ns["sweep"], ns["result"]
    assert sweep.reference > sweep.baseline + 1, "the clean run prefers ' apple', the corrupted ' grape'"
    (_, effect), *_ = sweep.top(5)
    print(f"\nREADME patching: corrupted {sweep.baseline:.2f}, clean {sweep.reference:.2f}, top {sweep.top(3)}")
    assert effect > 0.2 * (sweep.reference - sweep.baseline), "one head carries a good part of the answer"
    assert set(comparison.values) == {"target", "source", "shared", "complement", "random-0", "random-1"}
    assert all(math.isfinite(v) for v in comparison.values.values())


def _compare(ns: dict) -> None:
    import headscope as hs

    recall = hs.recall(ns["heads"], ns["tuned_heads"])
    print(f"\nREADME fine-tuned copy: top-10 recall {recall:.2f}")
    assert recall >= 0.5, "three steps of fine-tuning keep most of the top retrieval heads"
    assert hs.rank_correlation(ns["scores"].scores, ns["tuned_scores"].scores, top_k=20).spearman > 0.5
    shared = ns["shared"]
    assert list(shared) == sorted(set(ns["heads"]) & set(ns["tuned_heads"])) and shared.shape == (30, 9)
    assert shared.labels == tuple(f"L{a}H{b}" for a, b in shared)


def _compression(ns: dict) -> None:
    policy, curve = ns["policy"], ns["kv_curve"]
    assert policy.n_full == 45 and round(policy.bytes(8192).ratio, 2) == 1.99
    frame = curve.to_frame()
    full = frame[frame["kind"] == "full"]["accuracy"].item()
    runs = frame[["run", "fraction", "accuracy"]].values.tolist()
    print(f"\nREADME compression: full attention {full:.2f}, runs {runs}")
    assert full == 1.0, "SmolLM2 copies both held-out 300-token needles with the whole cache"
    assert (frame["memory_ratio"] > 1).sum() == len(frame) - 1, "every compressed run holds fewer bytes"
    against = curve.versus_random(0)
    assert list(against["fraction"]) == [0.5] and (against["p_value"] >= against["p_min"]).all()


def _models(ns: dict) -> None:
    import torch

    info = ns["info"]
    assert (info.n_layers, info.n_heads, info.n_kv_heads) == (30, 9, 3) and isinstance(info.pattern_edits, bool)
    assert {p.dtype for p in ns["half"].parameters()} == {torch.bfloat16}


#: (a line the block contains, what a reader would check after it)
CHECKS: list[tuple[str, Callable[[dict], None]]] = [
    ("model = hs.load_model()", _setup),
    ("scores = hs.detect_retrieval_heads(model, samples)", _detect),
    ("boot = hs.stability(", _stability),
    ("curve = hs.knockout_curve(", _knockout),
    ("view = hs.attention_view(", _view),
    ("mdqa = hs.mdqa(", _tasks),
    ("result = hs.finetune(", _finetune),
    ("sweep = hs.head_patching_sweep(", _patch),
    ("tuned_scores = hs.detect_retrieval_heads(", _compare),
    ("kv_curve = hs.compression_curve(", _compression),
    ("info = hs.model_info(model)", _models),
]


def checks_for(block: str) -> list[Callable[[dict], None]]:
    return [check for line, check in CHECKS if line in block]


def test_every_readme_block_compiles_and_has_a_check():
    blocks = python_blocks()
    assert len(blocks) == len(CHECKS)
    for i, block in enumerate(blocks, 1):
        compile(block, f"README.md python block {i}", "exec")
        assert len(checks_for(block)) == 1, f"README python block {i} needs exactly one check:\n{block}"


@pytest.mark.smollm2
@pytest.mark.slow
def test_readme_blocks_run_in_order_and_give_meaningful_numbers(smollm2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks save files
    namespace: dict = {}
    for i, block in enumerate(python_blocks(), 1):
        exec(compile(block, f"README.md python block {i}", "exec"), namespace)
        for check in checks_for(block):
            check(namespace)
