"""Chat templates with an answer prefix: the gold answer becomes the very next tokens."""

from __future__ import annotations

import pytest

import headscope as hs


def test_answer_prefix_ends_the_prompt_and_keeps_spans_aligned(smollm2_tokenizer):
    sample = hs.needle_grid(smollm2_tokenizer, [150], [50], needle="templated", haystack="templated")[0]
    wrapped = sample.with_chat_template(smollm2_tokenizer, answer_prefix="The answer is")
    assert wrapped.prompt.endswith("<|im_start|>assistant\nThe answer is")
    assert wrapped.text("needle") == sample.text("needle")
    enc = wrapped.encode(smollm2_tokenizer)
    (start, end), *_ = enc.positions("needle")
    assert smollm2_tokenizer.decode(enc.input_ids[start:end]).strip() == sample.text("needle")[0]


@pytest.mark.smollm2
def test_teacher_forced_detection_counts_a_chat_answer_only_after_its_lead_in(smollm2):
    tok = smollm2.tokenizer
    sample = hs.needle_grid(tok, [300], [50], needle="templated", haystack="diverse", seed=2)[0]
    plain = sample.with_chat_template(tok)
    said = hs.generate_answer(smollm2, plain)
    value = sample.answer.strip()
    assert value in said, f"SmolLM2 did not retrieve {value!r}: {said!r}"
    lead = said[: said.index(value)].rstrip()
    assert lead, "the model answered without a lead-in, so there is nothing to test"
    prefixed = sample.with_chat_template(tok, answer_prefix=lead)
    without = hs.detect_retrieval_heads(smollm2, [plain], progress=False)
    with_lead = hs.detect_retrieval_heads(smollm2, [prefixed], progress=False)
    assert without.n_counted == 0 and with_lead.n_counted == 1
    assert with_lead.above(0.1), "a retrieved answer should give some head a copy score"
