"""When does an answer count: one success rule everywhere, the value named as a whole word, and Liu et
al.'s best-subspan match (issue 22, findings 3 and 9)."""

from __future__ import annotations

import re
import string

import pytest

import headscope as hs
from headscope.cli import main
from headscope.retrieval import DEFAULT_SUCCESS, RougeRecall, SuccessLog, detect_retrieval_heads
from headscope.tasks import Sample, Span, rouge1_recall, subspan_match
from headscope.tasks._scoring import names_value

WELSH = Sample("p", " The native language of Ada is Welsh.", meta={"value": "Welsh"})


def test_a_sentence_with_the_wrong_value_does_not_count() -> None:
    """The finding: 6 of 7 words recalled, so ROUGE alone counted "... is Spanish." for "... is Welsh."."""
    wrong = "The native language of Ada is Spanish."
    assert rouge1_recall(wrong, WELSH.answer) == pytest.approx(6 / 7)  # the other half of the rule passes
    assert not DEFAULT_SUCCESS(WELSH, wrong)
    assert not RougeRecall(0.5)(WELSH, wrong)  # the rule's defaults are the one rule
    assert DEFAULT_SUCCESS(WELSH, "The native language of Ada is Welsh.")
    assert RougeRecall(0.5, require_value=False)(WELSH, wrong)  # Wu et al.'s rule alone, on request


def test_the_value_must_be_named_as_a_whole_word() -> None:
    ann = Sample("p", " Ann", meta={"value": "Ann"})
    assert not DEFAULT_SUCCESS(ann, "Her name is Anna.")  # was a substring test: "ann" in "anna"
    assert not DEFAULT_SUCCESS(ann, "Joanne")
    assert DEFAULT_SUCCESS(ann, "It is ANN!")
    code = Sample("p", " 4712", meta={"value": "4712"})
    assert not DEFAULT_SUCCESS(code, "47123") and DEFAULT_SUCCESS(code, "The code is 4712.")


@pytest.mark.parametrize(
    ("output", "value", "named"),
    [
        ("Her name is Anna.", "Ann", False),
        ("Her name is Ann.", "Ann", True),
        ("her name is ann", "ANN", True),
        ("It is star anise, I think", "star anise", True),
        ("It is anise star", "star anise", False),
        ("the starry anise", "star anise", False),
        ("She moved to New-York in May", "New York", True),
        ("Newyork", "New York", False),
        ("The value is jtgev4.", "jtgev4", True),
        ("The value is jtgev45.", "jtgev4", False),
        ("He spoke Welsh", "welsh.", True),
        ("Zürich, not Zurich", "Zürich", True),
        ("Zurich", "Zürich", False),
        ("", "Ann", False),
    ],
)
def test_names_value_matches_whole_words_ignoring_case_and_punctuation(output, value, named) -> None:
    assert names_value(output, value) is named


def _output_of(model, sample: Sample) -> str:
    """What generation-mode detection decodes for ``sample`` (every sample counted, outputs logged)."""
    log = SuccessLog(lambda s, out: True)
    detect_retrieval_heads(model, [sample], mode="generation", max_new_tokens=8, success=log, progress=False)
    return log.records[0][1]


def test_detection_counts_by_default_only_samples_whose_output_names_the_value(tiny_llama) -> None:
    base = Sample("The code is 4712. The code is", " x", (Span("needle", 12, 16),))
    output = _output_of(tiny_llama, base)
    words = re.findall(r"[^\W_]+", output)
    assert words, output  # the check below needs a word to name
    word = max(words, key=len)

    def counted(value: str) -> int:
        # the gold answer is the model's own output: ROUGE-1 recall 1.0, so only the value decides
        sample = Sample(base.prompt, " " + output, base.spans, meta={"value": value})
        scores = detect_retrieval_heads(tiny_llama, [sample], mode="generation", max_new_tokens=8, progress=False)
        assert scores.settings["success"] == str(DEFAULT_SUCCESS)
        return scores.n_counted

    assert counted(word) == 1
    assert counted("Welsh") == 0  # counted before: recall alone decided
    if len(word) > 1:
        assert counted(word[:-1]) == 0  # a word's prefix is no whole word


def test_retrieval_success_uses_the_same_rule(tiny_llama) -> None:
    sample = Sample("The code is 4712. The code is", " x")
    output = hs.generate_answer(tiny_llama, sample)
    assert re.findall(r"[^\W_]+", output), output
    said = Sample(sample.prompt, " " + output, meta={"value": max(re.findall(r"[^\W_]+", output), key=len)})
    unsaid = Sample(sample.prompt, " " + output, meta={"value": "Welsh"})
    assert hs.retrieval_success(tiny_llama, said) == 1.0
    assert hs.retrieval_success(tiny_llama, unsaid) == 0.0  # was 1.0: the knockout curve's generation metric


def test_the_success_log_and_the_command_line_use_the_same_rule(tmp_path) -> None:
    from headscope.models import tiny_folder

    assert SuccessLog().rule == DEFAULT_SUCCESS
    task = ["--no-chat", "--needle", "symbolic", "--haystack", "symbolic", "--lengths", "80", "--depths", "50"]
    for answer in ("value", "sentence"):
        out = tmp_path / answer
        argv = ["detect", "--model", str(tiny_folder("llama")), *task, "--n-samples", "1", "--answer", answer]
        assert main([*argv, "--mode", "generation", "--max-new-tokens", "4", "--out", str(out)]) in (0, 1)
        scores = hs.RetrievalScores.load(out / "scores.json")
        assert scores.settings["success"] == str(DEFAULT_SUCCESS), answer


# -- Liu et al.'s best-subspan exact match --------------------------------------------------------


def liu_best_subspan_em(prediction: str, ground_truths: list[str]) -> float:
    """Lost in the Middle's ``best_subspan_em`` (nelson-liu/lost-in-the-middle, metrics.py), written out again."""

    def normalize(text: str) -> str:
        text = text.lower()
        text = "".join(ch for ch in text if ch not in set(string.punctuation))
        text = re.sub(r"\b(a|an|the)\b", " ", text)
        return " ".join(text.split())

    return float(any(normalize(g).lower() in normalize(prediction).lower() for g in ground_truths))


CASES = [
    ("It was popular in the 1990s.", ["1990"]),
    ("I think it is the Eiffel Tower in Paris", ["eiffel tower"]),
    ("Parisian cafes", ["Paris"]),
    ("Answer: paris!", ["PARIS", "Lyon"]),
    ("The answer is Hobart, I think.", ["Perth", "hobart"]),
    ("an apple a day", ["The apple"]),
    ("U.S.A. won", ["USA"]),
    ("no match here", ["Canberra"]),
    ("Joanne", ["Ann"]),
    ("  spaced   out  ", ["spaced out"]),
]


@pytest.mark.parametrize(("prediction", "golds"), CASES)
def test_subspan_match_is_liu_et_als_best_subspan_em(prediction, golds) -> None:
    assert subspan_match(prediction, golds) == liu_best_subspan_em(prediction, golds)


def test_1990s_scores_as_in_lost_in_the_middle() -> None:
    assert subspan_match("It was popular in the 1990s.", "1990") == 1.0  # was 0.0 (word boundaries)
    assert subspan_match("It was popular in the 1990s.", "1990", whole_words=True) == 0.0
    assert subspan_match("It was popular in 1990.", "1990", whole_words=True) == 1.0


def test_a_value_given_as_a_number_is_read_as_its_text() -> None:
    sample = Sample("p", " 4712", meta={"value": 4712})
    assert DEFAULT_SUCCESS(sample, "The code is 4712.") and not DEFAULT_SUCCESS(sample, "47120")
