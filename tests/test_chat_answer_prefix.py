"""Chat templates with an answer prefix: the gold answer becomes the very next tokens."""

from __future__ import annotations

from dataclasses import replace

import pytest

import headscope as hs
from headscope.cli import _check_task, _samples, build_parser
from headscope.tasks import Sample


def builder_samples(tokenizer) -> list[Sample]:
    """One sample of every builder that knows its needle sentence, at each realism."""
    samples = []
    for needle in ("natural", "templated", "symbolic"):
        samples += hs.needle_grid(tokenizer, [120], [50], needle=needle, haystack="symbolic", seed=3)
        samples += hs.mdqa(n_docs=3, needle=needle, haystack="templated", seed=3)
        samples += hs.multihop_qa(n_docs=3, needle=needle, haystack="templated", seed=3)
        samples += hs.kv_retrieval(n_pairs=4, needle=needle, haystack="symbolic", seed=3)
    return samples


def test_builder_lead_ins_are_the_needle_sentence_up_to_the_answer(tokenizer):
    by_task: dict[str, list[Sample]] = {}
    for s in builder_samples(tokenizer):
        by_task.setdefault(s.task, []).append(s)
        assert s.lead_in and s.lead_in == s.lead_in.strip(), (s.task, s.lead_in)
    for s in by_task["needle"] + by_task["mdqa"]:
        assert s.meta["needle_sentence"].startswith(s.lead_in + s.answer), (s.lead_in, s.meta["needle_sentence"])
    for s in by_task["multihop"]:
        hop2 = s.meta["facts"][1]
        assert hop2.endswith(s.answer.strip() + ".") or s.answer in hop2
        assert s.meta["bridge"] not in s.lead_in, "the lead-in must not give the bridge entity away"
    assert {s.lead_in for s in by_task["kv"]} == {"Corresponding value:"}
    assert all(not s.lead_in for s in hs.citation(n_docs=4, n_insights=2, needle="templated", haystack="templated"))


def test_chat_template_writes_the_lead_in_by_default_and_the_answer_tokens_follow_it(smollm2_tokenizer):
    tok = smollm2_tokenizer
    for s in builder_samples(tok):
        chat = s.with_chat_template(tok)
        assert chat.prompt.endswith("<|im_start|>assistant\n" + s.lead_in) and chat.lead_in == ""
        assert chat.text("needle") == s.text("needle")
        enc = chat.encode(tok)
        # The prompt and answer, tokenized apart, are exactly the tokens of the whole text.
        whole = tok(chat.prompt + chat.answer, add_special_tokens=False)["input_ids"]
        assert enc.input_ids.tolist() + enc.answer_ids.tolist() == whole, (s.lead_in, s.answer)


def test_answer_prefix_none_or_empty_writes_nothing_and_text_overrides(smollm2_tokenizer):
    tok = smollm2_tokenizer
    s = hs.needle_grid(tok, [150], [50], needle="templated", haystack="templated")[0]
    bare = s.with_chat_template(tok, answer_prefix=None)
    assert bare.prompt.endswith("<|im_start|>assistant\n")
    assert s.with_chat_template(tok, answer_prefix="").prompt == bare.prompt
    assert s.with_chat_template(tok, answer_prefix="So:").prompt == bare.prompt + "So:"
    assert s.with_chat_template(tok).prompt == bare.prompt + s.lead_in
    own = replace(Sample("The key is 4712. What is the key?", " 4712"), lead_in="The key is")
    assert own.with_chat_template(tok).prompt.endswith("assistant\nThe key is")


def test_lead_in_round_trips_and_old_sample_dicts_still_load(tokenizer):
    s = hs.needle_grid(tokenizer, [120], [50], needle="templated", haystack="symbolic")[0]
    assert Sample.from_dict(s.to_dict()) == s
    old = s.to_dict()
    del old["lead_in"]
    assert Sample.from_dict(old).lead_in == ""


@pytest.mark.parametrize(
    ("option", "ending"), [([], "lead_in"), (["--answer-prefix", "none"], ""), (["--answer-prefix", "X:"], "X:")]
)
def test_cli_answer_prefix_chooses_how_the_assistant_turn_starts(option, ending):
    model = hs.load_model("tiny-llama")
    model.tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    task = ["--needle", "templated", "--haystack", "symbolic", "--lengths", "80", "--depths", "50", "--n-samples", "1"]
    args = build_parser().parse_args(["detect", *task, *option])
    args.chat = True
    (chat,) = _samples(args, model, _check_task(args, None))
    args.chat = False
    (plain,) = _samples(args, model, _check_task(args, None))
    expected = plain.lead_in if ending == "lead_in" else ending
    assert plain.lead_in and chat.prompt.endswith("\n<assistant>" + expected)


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
    plain = sample.with_chat_template(tok, answer_prefix=None)
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
    assert lead == sample.lead_in, "the builder's lead-in is the model's own restatement"
    by_default = hs.detect_retrieval_heads(smollm2, [sample.with_chat_template(tok)], progress=False)
    assert by_default.n_counted == 1
