"""Real-data loaders (Lost in the Middle, its real MDQA variant, MuSiQue, plain QA) and answer scoring."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

import headscope as hs
from headscope.tasks import (
    Sample,
    TaskError,
    citation_scores,
    exact_match,
    load_mdqa,
    load_musique,
    load_qa_jsonl,
    normalize_answer,
    parse_citations,
    real_mdqa,
    rouge1_recall,
    subspan_match,
    token_f1,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(params=["tiny", pytest.param("smollm2", marks=pytest.mark.smollm2)])
def tok(request, tokenizer):
    return tokenizer if request.param == "tiny" else request.getfixturevalue("smollm2_tokenizer")


def check_spans(sample: Sample, tok) -> dict[str, bool]:
    enc = sample.encode(tok)
    for label in sample.labels():
        spans = [s for s in sample.spans if s.label == label]
        for span, (a, b) in zip(spans, enc.spans[label], strict=True):
            want = sample.prompt[span.start : span.end].strip()
            got = tok.decode(enc.input_ids[a:b], clean_up_tokenization_spaces=False).strip()
            assert got == want if enc.aligned[label] else want in got, (label, got, want)
    return enc.aligned


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("compressed", [False, True])
def test_mdqa_loader_marks_gold_document_and_answers_in_it(tok, tmp_path, compressed):
    path = FIXTURES / "mdqa_small.jsonl"
    if compressed:
        path = tmp_path / "mdqa_small.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write((FIXTURES / "mdqa_small.jsonl").read_text())
    with pytest.warns(UserWarning, match="skipped 1 row"):
        samples = load_mdqa(path)
    raw = [r for r in rows(FIXTURES / "mdqa_small.jsonl") if r["answers"] != ["no such answer here"]]
    assert len(samples) == len(raw) == 5
    for sample, row in zip(samples, raw, strict=True):
        gold_index = next(i for i, c in enumerate(row["ctxs"]) if c["isgold"])
        gold = row["ctxs"][gold_index]
        assert sample.text("gold_doc") == [f"Document [{gold_index + 1}](Title: {gold['title']}) {gold['text']}"]
        assert len(sample.text("doc")) == len(row["ctxs"])
        lowered = {a.lower() for a in row["answers"]}
        assert sample.text("answer") and all(t.lower() in lowered for t in sample.text("answer"))
        assert sample.text("needle") == sample.text("answer")[:1]
        assert sample.meta["answers"] == row["answers"] and sample.answer == " " + row["answers"][0]
        assert sample.prompt.endswith(f"Question: {row['question']}\nAnswer:")
        check_spans(sample, tok)
    # case-insensitive answers: "Hobart" occurs three times (title, text, lower-case text)
    assert len(samples[1].text("answer")) == 3


def test_mdqa_loader_refuses_unanswerable_rows_when_asked():
    with pytest.raises(hs.SpanError, match=r"mdqa_small.jsonl, line 7: no answer of \['no such answer here'\]"):
        load_mdqa(FIXTURES / "mdqa_small.jsonl", skip_unanswerable=False)


def test_mdqa_loader_reads_the_real_oracle_file(tok, nq_oracle_path):
    """Uses ../shared/data/nq-open-oracle.jsonl.gz (Lost in the Middle, MIT); skipped where absent."""
    samples = load_mdqa(nq_oracle_path, limit=20)
    assert len(samples) == 20
    assert samples[0].text("needle") == ["Wilhelm Conrad Röntgen"]
    for sample in samples[:5]:
        check_spans(sample, tok)


def test_real_mdqa_distractors_are_other_gold_passages_without_the_answer(tok, nq_oracle_path):
    """Uses ../shared/data/nq-open-oracle.jsonl.gz; skipped where absent."""
    samples = real_mdqa(nq_oracle_path, n_docs=6, gold_position=4, n_samples=3, seed=1)
    with gzip.open(nq_oracle_path, "rt", encoding="utf-8") as handle:
        golds = {json.loads(line)["ctxs"][0]["text"] for line in handle}
    for sample in samples:
        docs = sample.text("doc")
        assert sample.text("gold_doc") == [docs[4]]
        for doc in docs[:4] + docs[5:]:
            text = doc.split(") ", 1)[1]
            assert text in golds
            title_and_text = doc.split("(Title: ", 1)[1]
            assert not any(normalize_answer(a) in normalize_answer(title_and_text) for a in sample.meta["answers"])
        check_spans(sample, tok)
    assert real_mdqa(nq_oracle_path, n_docs=6, n_samples=3, seed=1)[0].meta["question"] == samples[0].meta["question"]


def test_real_mdqa_on_the_fixture_is_seeded(tok):
    first = real_mdqa(FIXTURES / "mdqa_small.jsonl", n_docs=3, gold_position=1, n_samples=2, seed=3)
    again = real_mdqa(FIXTURES / "mdqa_small.jsonl", n_docs=3, gold_position=1, n_samples=2, seed=3)
    assert [s.to_json() for s in first] == [s.to_json() for s in again]
    for sample in first:
        assert len(sample.text("doc")) == 3 and sample.text("gold_doc") == [sample.text("doc")[1]]
        check_spans(sample, tok)
    with pytest.raises(TaskError, match="yields only"):
        real_mdqa(FIXTURES / "mdqa_small.jsonl", n_docs=3, n_samples=50)


def test_musique_loader_takes_the_needle_from_the_last_hop_paragraph(tok):
    first, second = load_musique(FIXTURES / "musique_small.jsonl")
    assert len(first.text("gold_doc")) == 2 and len(first.text("doc")) == 3
    # "Cluj" occurs twice in the last-hop paragraph; the alias "Cluj-Napoca" nowhere
    assert first.text("answer") == ["Cluj", "Cluj"]
    last_hop = first.text("doc")[2]
    needle = next(s for s in first.spans if s.label == "needle")
    doc3 = [s for s in first.spans if s.label == "doc"][2]
    assert doc3.start <= needle.start and last_hop.startswith("Document [3](Title: Rosa Albescu)")
    assert first.meta["answers"] == ["Cluj", "Cluj-Napoca"]
    # no decomposition: the needle is the first answer occurrence ("the" is part of the answer)
    assert second.text("needle") == ["the Border City"]
    for sample in (first, second):
        check_spans(sample, tok)


def test_plain_qa_loader_and_a_span_boundary_inside_a_merged_token(tok, smollm2_tokenizer_or_none):
    acme, umbrella = load_qa_jsonl(FIXTURES / "qa_small.jsonl")
    assert acme.text("needle") == ["Acme Inc."] and acme.prompt.startswith("The firm (Acme Inc.)")
    assert umbrella.text("answer") == ["green umbrella", "umbrella"]
    aligned = check_spans(acme, tok)
    check_spans(umbrella, tok)
    if tok is smollm2_tokenizer_or_none:
        # SmolLM2 merges ".)" into one token: the span ends inside it, so the token range covers it whole
        assert aligned["needle"] is False
    inside = Sample("A white valley.", " alle", (hs.tasks.Span("needle", 9, 13),))
    enc = inside.encode(tok)
    ((a, b),) = enc.spans["needle"]
    assert enc.aligned["needle"] is False and "alle" in tok.decode(enc.input_ids[a:b])


@pytest.fixture
def smollm2_tokenizer_or_none(request):
    try:
        return request.getfixturevalue("smollm2_tokenizer")
    except pytest.skip.Exception:
        return None


def test_malformed_or_incomplete_lines_name_file_and_line(tmp_path):
    with pytest.raises(TaskError, match=r"qa_malformed.jsonl, line 2: not valid JSON"):
        load_qa_jsonl(FIXTURES / "qa_malformed.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answers": ["a"]}\n')
    with pytest.raises(TaskError, match=r"bad.jsonl, line 1: missing field 'ctxs'"):
        load_mdqa(bad)
    bad.write_text('\n\n["not", "an", "object"]\n')
    with pytest.raises(TaskError, match=r"line 3: expected a JSON object, got list"):
        load_musique(bad)
    with pytest.raises(TaskError, match="no such file"):
        load_mdqa(tmp_path / "missing.jsonl")
    gz = tmp_path / "broken.jsonl.gz"
    shutil.copy(FIXTURES / "qa_malformed.jsonl", tmp_path / "plain")
    with gzip.open(gz, "wt") as handle:
        handle.write((tmp_path / "plain").read_text())
    with pytest.raises(TaskError, match=r"broken.jsonl.gz, line 2"):
        load_qa_jsonl(gz)


def test_plain_qa_loader_refuses_an_answer_missing_from_the_context(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"context": "Cats purr.", "question": "What do dogs do?", "answer": "bark"}\n')
    with pytest.raises(hs.SpanError, match=r"qa.jsonl, line 1: no answer of \['bark'\] occurs in the context"):
        load_qa_jsonl(path, skip_unanswerable=False)


def test_squad_scores_follow_the_squad_definitions():
    assert normalize_answer("  The Cat, a  dog!") == "cat dog"
    assert exact_match("The Hobart.", ["Sydney", "hobart"]) == 1.0
    assert exact_match("Hobart city", "Hobart") == 0.0
    # pred tokens [hobart, is, capital], gold [hobart]: precision 1/3, recall 1 -> F1 0.5
    assert token_f1("Hobart is the capital", "Hobart") == pytest.approx(0.5)
    assert token_f1("x", ["Hobart", "x y"]) == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", "Hobart") == 0.0
    assert subspan_match("It is Hobart, I think.", ["Perth", "hobart"]) == 1.0
    assert subspan_match("Hobartville", "Hobart") == 1.0  # Liu et al.'s best_subspan_em: a substring test
    assert subspan_match("Hobartville", "Hobart", whole_words=True) == 0.0
    with pytest.raises(TaskError, match="answers is empty"):
        exact_match("x", [])


def test_rouge1_recall_counts_reference_words_found():
    assert rouge1_recall("smoked paprika, surely", "smoked paprika") == 1.0
    assert rouge1_recall("paprika", "smoked paprika") == 0.5
    assert rouge1_recall("the the", "the the the cat") == 0.5
    assert rouge1_recall("nothing", ["other", "nothing here"]) == 0.5


def test_citation_scores_compare_cited_ids_per_matched_bullet():
    gold = "- Bees dance to share routes [2][5]\n- Ants follow scent trails [1]"
    assert parse_citations(gold) == [("Bees dance to share routes", (2, 5)), ("Ants follow scent trails", (1,))]
    pred = "Summary:\n* Bees dance to share routes [2]\n* Ants follow scent trails [1][3]\n* Wasps sting [4]"
    scores = citation_scores(pred, gold)
    # correct cites: [2] and [1] = 2; predicted 4 cites; gold 3 cites
    assert scores.precision == pytest.approx(2 / 4) and scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) and scores.coverage == 1.0
    assert citation_scores("no bullets at all", gold).coverage == 0.0
    assert citation_scores("- Bees dance to share routes [2, 5]", gold).precision == 1.0
