"""Retrieval scores on SmolLM2 against an independent computation from the HF model's attentions."""

from __future__ import annotations

import pytest
import torch

from headscope.retrieval import RougeRecall, detect_retrieval_heads
from headscope.tasks import Sample, needle_grid

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def samples(smollm2_tokenizer) -> list[Sample]:
    """Three needle samples (the library's builder) at depths 20/50/80%; the gold answer is the needle sentence."""
    grid = needle_grid(smollm2_tokenizer, [260], [20, 50, 80], haystack="templated", answer="sentence", seed=3)
    return [s.with_chat_template(smollm2_tokenizer) for s in grid]


def always(sample: Sample, output: str) -> bool:
    return True


def reference_teacher_forced(hf, sample: Sample, tokenizer, require_prediction: bool) -> torch.Tensor:
    """Hits / needle length from one HF forward with output_attentions, one (row, layer, head) at a time."""
    enc = sample.encode(tokenizer)
    prompt, answer = enc.input_ids.tolist(), enc.answer_ids.tolist()
    (start, end), seq = enc.spans["needle"][0], prompt + answer[:-1]
    with torch.no_grad():
        out = hf(torch.tensor([seq]), output_attentions=True)
    hits = torch.zeros(len(out.attentions), out.attentions[0].shape[1], dtype=torch.float64)
    for t, gold in enumerate(answer):
        row = len(prompt) - 1 + t
        if require_prediction and int(out.logits[0, row].argmax()) != gold:
            continue
        for layer, attention in enumerate(out.attentions):
            for head, key in enumerate(attention[0, :, row].argmax(-1).tolist()):
                if start <= key < end and seq[key] == gold:
                    hits[layer, head] += 1
    return hits / (end - start)


def reference_generation(hf, sample: Sample, tokenizer, max_new_tokens: int) -> tuple[torch.Tensor, list[int]]:
    """Wu et al.'s loop: HF prefill and cached greedy steps with output_attentions, last row of each step."""
    enc = sample.encode(tokenizer)
    (start, end), seq = enc.spans["needle"][0], enc.input_ids.tolist()
    hits = torch.zeros(hf.config.num_hidden_layers, hf.config.num_attention_heads, dtype=torch.float64)
    inputs, past, produced = torch.tensor([seq]), None, []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = hf(inputs, past_key_values=past, use_cache=True, output_attentions=True)
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
            for layer, attention in enumerate(out.attentions):
                for head, key in enumerate(attention[0, :, -1].argmax(-1).tolist()):
                    if start <= key < end and seq[key] == token:
                        hits[layer, head] += 1
            produced.append(token)
            if token == tokenizer.eos_token_id:
                break
            seq.append(token)
            inputs = torch.tensor([[token]])
    return hits / (end - start), produced


@pytest.mark.parametrize("require_prediction", [True, False])
def test_teacher_forced_hits_equal_an_hf_attention_reference(
    smollm2, smollm2_hf, smollm2_tokenizer, samples, require_prediction: bool
) -> None:
    scores = detect_retrieval_heads(
        smollm2, samples, require_prediction=require_prediction, success=always, batch_size=2, progress=False
    )
    expected = torch.stack(
        [reference_teacher_forced(smollm2_hf, s, smollm2_tokenizer, require_prediction) for s in samples]
    )
    assert 250 < samples[0].encode(smollm2_tokenizer).input_ids.numel() < 350
    assert torch.equal(scores.per_sample, expected)
    assert scores.scores.max() > 0.3  # some heads really copy the needle


def test_generation_hits_equal_wu_style_hf_decoding(smollm2, smollm2_hf, smollm2_tokenizer, samples) -> None:
    sample = samples[0]
    expected, produced = reference_generation(smollm2_hf, sample, smollm2_tokenizer, max_new_tokens=24)
    scores = detect_retrieval_heads(smollm2, [sample], mode="generation", max_new_tokens=24, progress=False)
    answer = smollm2_tokenizer.decode(produced, skip_special_tokens=True)
    assert RougeRecall()(sample, answer), answer  # the model answered with the needle sentence (Wu et al.'s rule)
    assert expected.sum() > 0  # and some heads copied from the needle: the comparison below is not vacuous
    assert scores.n_counted == 1
    assert torch.equal(scores.per_sample[0], expected)
