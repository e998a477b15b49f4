"""Synthetic task builders: exact token budgets, needle placement, spans that decode to their text, determinism."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import headscope as hs
from headscope.tasks import (
    Sample,
    Span,
    TaskError,
    citation,
    citation_scores,
    kv_retrieval,
    mdqa,
    multihop_qa,
    needle_grid,
    needle_sample,
    parse_citations,
    shipped_corpus,
)

KINDS = ("natural", "templated", "symbolic")
HAYSTACKS = ("diverse", "templated", "symbolic")
QUESTION_MARK = "\n\nBased on the content"


@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.smollm2)])
def tok(request, tokenizer):
    return tokenizer if request.param == "tiny" else request.getfixturevalue("smollm2_tokenizer")


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def check_spans(sample: Sample, tok) -> None:
    """Every span's token range decodes (with the tokenizer's own decoder) to the span text, whitespace aside."""
    enc = sample.encode(tok)
    by_label: dict[str, list[Span]] = {}
    for span in sample.spans:
        by_label.setdefault(span.label, []).append(span)
    for label, spans in by_label.items():
        assert len(enc.spans[label]) == len(spans)
        for span, (a, b) in zip(spans, enc.spans[label], strict=True):
            want = sample.prompt[span.start : span.end].strip()
            got = tok.decode(enc.input_ids[a:b], clean_up_tokenization_spaces=False).strip()
            if enc.aligned[label]:
                assert got == want, (label, got, want)
            else:
                assert want in got, (label, got, want)


@pytest.mark.parametrize("needle", KINDS)
@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_needle_context_is_exactly_length_tokens_and_spans_decode(tok, needle, haystack):
    grid = needle_grid(tok, [160, 411], [0, 37.5, 100], needle=needle, haystack=haystack, seed=5)
    assert len(grid) == 6
    for sample in grid:
        context = sample.prompt[: sample.prompt.index(QUESTION_MARK)]
        assert n_tokens(tok, context) == sample.meta["length"]
        (needle_text,) = sample.text("needle")
        assert needle_text == sample.answer.strip() == sample.meta["answers"][0]
        assert sample.meta["needle_sentence"] in context
        assert needle_text in sample.meta["needle_sentence"]
        assert sample.text("answer") and all(t.lower() == needle_text.lower() for t in sample.text("answer"))
        assert sample.prompt.endswith("Answer:")
        check_spans(sample, tok)


@pytest.mark.parametrize("depth", [0, 10, 50, 90, 100])
def test_needle_sits_at_the_sentence_end_before_its_depth(tokenizer, depth):
    sample = needle_sample(tokenizer, 300, depth, needle="templated", haystack="diverse", seed=2)
    context = sample.prompt[: sample.prompt.index(QUESTION_MARK)]
    sentence = sample.meta["needle_sentence"]
    start = context.index(sentence)
    before, after = context[:start].rstrip(" "), context[start + len(sentence) :].lstrip(" ")
    haystack = before + (" " if before and after and not before.endswith("\n") else "") + after
    if depth == 0:
        assert start == 0
    elif depth == 100:
        assert context.endswith(sentence)
    else:
        offsets = tokenizer(haystack, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        target = offsets[int(len(offsets) * depth / 100)][0]
        # the needle went at the last sentence end at or before the depth's token (the start if none)
        assert before == "" or re.search(r"[.!?]$|\n$", before), before[-20:]
        assert len(before) <= target
        assert not re.search(r"[.!?]\s|\n", haystack[len(before) : target].rstrip())


def test_multiple_needles_ask_about_one_and_mark_the_others_as_distractors(tok):
    sample = needle_sample(tok, 500, 40, n_needles=3, needle="natural", seed=1)
    assert len(sample.text("distractor")) == 2
    assert sample.answer.strip() not in sample.text("distractor")
    assert sample.text("needle") == [sample.answer.strip()]
    assert len(sample.meta["needle_depths"]) == 3 and sample.meta["needle_depths"][0] == 40
    check_spans(sample, tok)


@pytest.mark.parametrize("needle", KINDS)
def test_sentence_answer_is_the_whole_needle_sentence_in_the_same_prompt(tokenizer, needle):
    """answer="sentence" changes only the gold answer and its spans: same prompt, no lead-in."""
    value = needle_sample(tokenizer, 300, 50, needle=needle, seed=4)
    whole = needle_sample(tokenizer, 300, 50, needle=needle, seed=4, answer="sentence")
    sentence = value.meta["needle_sentence"]
    assert whole.prompt == value.prompt and whole.answer == " " + sentence
    assert whole.text("needle") == [sentence] == whole.text("answer") and whole.meta["answers"] == [sentence]
    assert value.answer.strip() in sentence and len(sentence) > len(value.answer.strip())
    assert whole.lead_in == "" and value.lead_in and whole.meta["answer_kind"] == "sentence"
    context = whole.prompt[: whole.prompt.index(QUESTION_MARK)]
    assert context.count(sentence) == 1 and n_tokens(tokenizer, context) == 300
    check_spans(whole, tokenizer)
    enc = whole.encode(tokenizer)
    ((start, end),) = enc.spans["needle"]
    assert end - start > value.encode(tokenizer).answer_ids.numel()  # graded: many tokens to copy


def test_sentence_answer_passes_through_the_grid_and_rejects_other_kinds(tokenizer):
    grid = needle_grid(tokenizer, [200], [0, 100], answer="sentence", seed=2)
    assert [s.answer.strip() for s in grid] == [s.meta["needle_sentence"] for s in grid]
    with pytest.raises(TaskError, match="answer must be 'value' or 'sentence'; got 'phrase'"):
        needle_grid(tokenizer, [200], [0], answer="phrase")


def test_grid_cells_share_needle_and_haystack_across_lengths_and_depths(tokenizer):
    grid = needle_grid(tokenizer, [200, 300], [0, 50], n_samples=2, seed=9)
    by_index = {}
    for sample in grid:
        by_index.setdefault(sample.meta["index"], set()).add(sample.meta["needle_sentence"])
    assert all(len(sentences) == 1 for sentences in by_index.values())
    assert by_index[0] != by_index[1]
    short = [s for s in grid if s.meta["length"] == 200 and s.meta["index"] == 0 and s.meta["depth"] == 0]
    long = [s for s in grid if s.meta["length"] == 300 and s.meta["index"] == 0 and s.meta["depth"] == 0]
    # same haystack: the shorter context (minus its cut tail) is a prefix of the longer one
    assert long[0].prompt.startswith(short[0].prompt[: short[0].prompt.index(QUESTION_MARK) - 10])


BUILDERS = {
    "needle": lambda seed, needle, haystack: needle_grid(
        hs.models.tiny_tokenizer(), [150], [25, 100], needle=needle, haystack=haystack, seed=seed, n_samples=2
    ),
    "mdqa": lambda seed, needle, haystack: mdqa(n_docs=4, needle=needle, haystack=haystack, seed=seed, n_samples=2),
    "multihop": lambda seed, needle, haystack: multihop_qa(
        n_docs=4, needle=needle, haystack=haystack, seed=seed, n_samples=2
    ),
    "citation": lambda seed, needle, haystack: citation(
        n_docs=5, needle=needle, haystack=haystack, seed=seed, n_samples=2
    ),
    "kv": lambda seed, needle, haystack: kv_retrieval(
        n_pairs=5, needle=needle, haystack=haystack, seed=seed, n_samples=2
    ),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
@pytest.mark.parametrize(
    "needle,haystack", [("natural", "diverse"), ("symbolic", "templated"), ("templated", "symbolic")]
)
def test_same_seed_gives_byte_identical_samples(builder, needle, haystack):
    first = [s.to_json() for s in BUILDERS[builder](7, needle, haystack)]
    again = [s.to_json() for s in BUILDERS[builder](7, needle, haystack)]
    other = [s.to_json() for s in BUILDERS[builder](8, needle, haystack)]
    assert first == again
    assert first != other
    assert first[0] != first[1]
    assert [Sample.from_dict(json.loads(j)).to_json() for j in first] == first


@pytest.mark.parametrize("needle", KINDS)
@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_mdqa_puts_the_gold_document_where_asked(tok, needle, haystack):
    for position in (0, 3, 5):
        (sample,) = mdqa(n_docs=6, gold_position=position, needle=needle, haystack=haystack, n_hard=2, seed=position)
        docs = sample.text("doc")
        assert len(docs) == 6 and all(d.startswith(f"Document [{i + 1}](Title: ") for i, d in enumerate(docs))
        assert sample.text("gold_doc") == [docs[position]]
        assert sample.meta["needle_sentence"] in docs[position]
        answer = sample.answer.strip()
        assert sum(answer in d for d in docs) == 1  # hard distractors share the relation, not the answer
        gold = next(s for s in sample.spans if s.label == "gold_doc")
        for span in sample.spans:
            if span.label in ("answer", "needle"):
                assert gold.start <= span.start < span.end <= gold.end
        check_spans(sample, tok)


@pytest.mark.parametrize("needle", KINDS)
def test_multihop_needs_both_facts_and_answers_from_the_second(tok, needle):
    for sample in multihop_qa(n_docs=5, positions=(4, 1), needle=needle, haystack="diverse", n_samples=2, seed=3):
        docs = sample.text("doc")
        hop1, hop2 = sample.meta["facts"]
        answer, bridge = sample.answer.strip(), sample.meta["bridge"]
        assert hop1 in docs[4] and hop2 in docs[1] and sorted(sample.text("gold_doc")) == sorted([docs[1], docs[4]])
        assert answer in hop2 and answer not in hop1 and bridge in hop1 and bridge in hop2
        question = sample.meta["question"]
        assert answer not in question and bridge not in question
        assert sample.text("needle") == [answer] and sample.text("bridge") == [bridge, bridge]
        check_spans(sample, tok)


@pytest.mark.parametrize("needle", KINDS)
def test_citation_answer_cites_exactly_the_documents_holding_each_insight(tok, needle):
    (sample,) = citation(n_docs=7, n_insights=3, max_cites=3, needle=needle, haystack="templated", seed=4)
    docs = sample.text("doc")
    bullets = parse_citations(sample.answer)
    assert len(bullets) == 3
    for statement, ids in bullets:
        holders = tuple(i + 1 for i, d in enumerate(docs) if statement in d)
        assert ids == holders
    assert sorted(set(sample.text("needle"))) == sorted(s for s, _ in bullets)
    assert citation_scores(sample.answer, sample.answer).f1 == 1.0
    check_spans(sample, tok)


@pytest.mark.parametrize("needle", KINDS)
@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_kv_gold_pair_parses_as_json_with_the_answer(tok, needle, haystack):
    (sample,) = kv_retrieval(n_pairs=6, gold_position=2, needle=needle, haystack=haystack, seed=1)
    block = sample.prompt[sample.prompt.index("{") : sample.prompt.index("}\n\nKey:") + 1]
    data = json.loads(block)
    key = json.loads(sample.prompt.split("\nKey: ")[1].split("\n")[0])
    assert len(data) == 6 and list(data)[2] == key and data[key] == sample.answer.strip()
    assert sample.text("needle") == [sample.answer.strip()]
    assert json.loads("{" + sample.text("gold_doc")[0] + "}") == {key: data[key]}
    check_spans(sample, tok)


def test_diverse_haystack_uses_the_given_corpus_or_writer():
    corpus = [
        ("Otters", "Otters hold hands while they sleep. They float on their backs."),
        "Plain text about kites. Kites fly.",
    ]
    (sample,) = mdqa(n_docs=3, corpus=corpus, seed=1)
    assert "Otters hold hands" in sample.prompt and "Kites fly." in sample.prompt
    calls = []

    def write_document(rng, topic):
        calls.append(topic)
        return f"A short note about {topic.lower()} number {rng.randint(0, 999)}. It ends here."

    first = mdqa(n_docs=4, write_document=write_document, seed=2)[0]
    again = mdqa(n_docs=4, write_document=write_document, seed=2)[0]
    assert first.to_json() == again.to_json()
    titles = {d.title for d in shipped_corpus()}
    assert calls and set(calls) <= titles
    assert all(f"(Title: {t})" in first.prompt for t in calls[:4])


def test_builder_errors_say_what_is_wrong(tokenizer):
    with pytest.raises(TaskError, match="depth must be a percentage in \\[0, 100\\]; got 120"):
        needle_sample(tokenizer, 200, 120)
    with pytest.raises(TaskError, match="depth must be"):
        needle_grid(tokenizer, [200], [-1])
    with pytest.raises(TaskError, match="leaves no haystack in a context of 10 tokens"):
        needle_sample(tokenizer, 10, 50)
    with pytest.raises(TaskError, match="corpus is empty"):
        needle_sample(tokenizer, 200, 50, corpus=["   "])
    with pytest.raises(TaskError, match="corpus is empty"):
        mdqa(corpus=[])
    with pytest.raises(TaskError, match="apply to haystack='diverse' only"):
        mdqa(haystack="symbolic", corpus=["a text."])
    with pytest.raises(TaskError, match=r"needle must be one of .* got 'fuzzy'"):
        mdqa(needle="fuzzy")
    with pytest.raises(TaskError, match="must lie in \\[0, 4\\]; got \\[5\\]"):
        mdqa(n_docs=5, gold_position=5)
    with pytest.raises(TaskError, match="two different document positions"):
        multihop_qa(n_docs=5, positions=(2, 2))
    with pytest.raises(TaskError, match="must return non-empty text"):
        mdqa(write_document=lambda rng, topic: "")
    answer = mdqa(corpus=["A plain text."], seed=0)[0].answer.strip()  # the needle does not depend on the corpus
    with pytest.raises(TaskError, match="every haystack document mentions"):
        mdqa(corpus=[f"This text mentions {answer}."], seed=0)


def test_context_longer_than_the_model_window_is_refused(tokenizer):
    info = hs.model_info(hs.load_model("tiny-llama"))
    with pytest.raises(hs.ContextLengthError, match=f"longer than the model's context of {info.n_ctx} tokens"):
        needle_grid(tokenizer, [info.n_ctx + 1], [50], n_ctx=info.n_ctx)
    # the context fits, but not with the question after it
    with pytest.raises(hs.ContextLengthError, match="the prompt takes"):
        needle_sample(tokenizer, info.n_ctx - 2, 50, n_ctx=info.n_ctx)
    sample = needle_sample(tokenizer, info.n_ctx // 2, 50, n_ctx=info.n_ctx)
    info.check_length(len(sample.encode(tokenizer).input_ids))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.integers(min_value=90, max_value=500),
    depth=st.floats(min_value=0, max_value=100),
    needle=st.sampled_from(KINDS),
    haystack=st.sampled_from(HAYSTACKS),
    n_needles=st.integers(min_value=1, max_value=2),
    seed=st.integers(min_value=0, max_value=10**6),
)
def test_any_needle_sample_hits_its_budget_and_aligns(tokenizer, length, depth, needle, haystack, n_needles, seed):
    try:
        sample = needle_sample(
            tokenizer, length, depth, needle=needle, haystack=haystack, n_needles=n_needles, seed=seed
        )
    except TaskError as err:  # only a needle too long for a short budget is acceptable
        assert "leaves no haystack" in str(err)
        return
    assert n_tokens(tokenizer, sample.prompt[: sample.prompt.index(QUESTION_MARK)]) == length
    check_spans(sample, tokenizer)
