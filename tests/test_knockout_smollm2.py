"""Knockout on the real SmolLM2: agreement with HF eager attention under a hand-built 4D mask, and the
central claim that knocking out the heads that read the needle breaks retrieval while random heads do not.
"""

from __future__ import annotations

import random

import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.ablation import knockout, knockout_curve
from headscope.hooks import attn_hook, capture
from headscope.tasks import Sample, Span

pytestmark = pytest.mark.smollm2

FILLER = [
    "The river ran slowly past the old mill.",
    "Farmers brought apples to the market every week.",
    "A gentle wind moved through the tall grass.",
    "The library opened its doors early on Monday.",
    "Children played by the fountain in the square.",
    "Clouds gathered over the hills in the evening.",
    "The baker sold fresh bread before sunrise.",
    "Boats rested in the harbour after the storm.",
]


def needle_sample(code: int, depth: float, tokenizer, seed: int, n_sentences: int = 24) -> Sample:
    """Filler sentences with "The secret code is {code}." at ``depth``, asked through the chat template.

    SmolLM2 answers "The secret code is 4821.", so that prefix is put after the template and the
    sample's answer is the number alone.
    """
    rng = random.Random(seed)
    sentences = [rng.choice(FILLER) for _ in range(n_sentences)]
    at = int(n_sentences * depth)
    context = " ".join([*sentences[:at], f"The secret code is {code}.", *sentences[at:]])
    start = context.index(f"is {code}.") + 3
    sample = Sample(
        context + "\n\nWhat is the secret code?", f" {code}", spans=(Span("needle", start, start + len(str(code))),)
    ).with_chat_template(tokenizer)
    return Sample(sample.prompt + "The secret code is", sample.answer, spans=sample.spans, bos=False)


def exact_match(model, sample: Sample) -> float:
    """1.0 if greedy decoding would produce the answer: teacher-forced argmax equals every answer token."""
    enc = sample.encode(model.tokenizer)
    ids = torch.cat([enc.input_ids, enc.answer_ids])[None]
    with torch.no_grad():
        logits = model(ids)[0]
    n = len(enc.input_ids)
    return float(torch.equal(logits[n - 1 : n - 1 + len(enc.answer_ids)].argmax(-1), enc.answer_ids))


def test_edge_knockout_of_every_head_equals_hf_attention_with_a_hand_built_mask(smollm2, smollm2_hf):
    ids = hs.to_tokens(smollm2, "The river ran slowly. The secret code is 4821. Farmers sold apples. The code is")
    n, keys = ids.shape[1], list(range(6, 10))
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    allowed[:, keys] = False
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    info = hs.model_info(smollm2)
    every_head = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    with torch.no_grad():
        reference = smollm2_hf(ids, attention_mask=mask).logits.log_softmax(-1)
        plain = smollm2_hf(ids).logits.log_softmax(-1)
        with knockout(smollm2, every_head, "edge", keys=keys):
            knocked = smollm2(ids).log_softmax(-1)
    assert_close(knocked, reference)
    assert_differs(plain, reference, by=100)  # blocking 4 keys in every head moves log-probs by more than 1


def test_knocking_out_needle_reading_heads_breaks_retrieval_but_random_heads_do_not(smollm2, smollm2_tokenizer):
    samples = [
        needle_sample(code, depth, smollm2_tokenizer, seed)
        for seed, (code, depth) in enumerate([(4821, 0.3), (7350, 0.6), (2946, 0.5), (6137, 0.8)])
    ]
    info = hs.model_info(smollm2)
    # Proxy ranking (no retrieval detector here): attention mass from the answer positions to the needle.
    mass = torch.zeros(info.shape)
    names = [attn_hook(layer, "pattern") for layer in range(info.n_layers)]
    for sample in samples:
        enc = sample.encode(smollm2_tokenizer)
        (start, end), n = enc.spans["needle"][0], len(enc.input_ids)
        with torch.no_grad(), capture(smollm2, names) as acts:
            smollm2(torch.cat([enc.input_ids, enc.answer_ids])[None])
        for layer, name in enumerate(names):
            mass[layer] += acts[name][0, :, n - 1 : n - 1 + len(enc.answer_ids), start:end].sum(-1).mean(-1)
    ranking = [(int(i) // info.n_heads, int(i) % info.n_heads) for i in mass.flatten().argsort(descending=True)]

    curve = knockout_curve(
        smollm2,
        samples,
        ranking,
        exact_match,
        ks=[5],
        seeds=[0, 1],
        exclude_top=30,
        mode="edge",
        span="needle",
        progress=False,
    )
    assert curve.baseline == 1.0
    assert curve.top[0] <= 0.5
    assert curve.random_mean()[0] >= 0.75
