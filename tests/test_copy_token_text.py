"""The copy score can take " Paris" and "Paris" for one token (issue 22, finding 6).

A real MDQA answer carries no leading space ("Paris"), while its copies in the documents do
(" Paris"), so under Wu et al.'s id comparison the first answer token never scores and a
single-token answer never does. ``match="text"`` compares token text up to one leading space
marker. Each test counts the expected hits by hand from the model's own attention patterns.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import headscope as hs
from headscope.hooks import attn_hook, capture
from headscope.models import model_info
from headscope.retrieval import detect_retrieval_heads
from headscope.retrieval._match import TokenMatch
from headscope.tasks import Sample, Span


def always(sample, output) -> bool:
    return True


def test_text_matching_joins_exactly_the_tokens_that_differ_by_one_leading_space(tokenizer) -> None:
    """Over the whole tiny vocabulary: equal classes <=> equal ids, or the same string less a leading 'Ġ'."""
    vocab = tokenizer.get_vocab()
    ids = torch.arange(len(tokenizer))
    classes = TokenMatch(tokenizer, "text")(ids)
    assert torch.equal(TokenMatch(tokenizer, "id")(ids), ids)
    by_id = {i: s for s, i in vocab.items()}
    expected = {
        (vocab[s], vocab[s[1:]]) for s in vocab if s.startswith("Ġ") and s.lstrip("Ġ") and s[1:] in vocab
    }  # (" key", "key"), ...
    paired = {i for pair in expected for i in pair}
    assert len(paired) == 2 * len(expected) > 100
    for spaced, bare in expected:
        assert by_id[spaced] == "Ġ" + by_id[bare] and classes[spaced] == classes[bare] == min(spaced, bare)
    assert all(classes[i] == i for i in range(len(ids)) if i not in paired)  # every other token stays itself
    assert len(set(classes.tolist())) == len(ids) - len(expected)
    beyond = torch.tensor([len(tokenizer) + 3])  # a model vocabulary padded past the tokenizer's
    assert torch.equal(TokenMatch(tokenizer, "text")(beyond), beyond)


def _single_token_samples(tokenizer) -> list[Sample]:
    """QA samples whose answer is one token without a leading space; its copies in the context have one."""
    texts = [
        ("the key is red. john found the key in the city. the key was old. what did john find? ", "key"),
        ("mary said 935 twice: 935 and 935 again. what number did mary say? ", "935"),
        ("the old city of john was quiet. john wrote to john. who wrote? ", "john"),
    ]
    samples = []
    for prompt, answer in texts:
        starts = [i for i in range(len(prompt)) if prompt.startswith(f" {answer}", i)]
        spans = tuple(Span("answer", s + 1, s + 1 + len(answer)) for s in starts)
        samples.append(Sample(prompt.rstrip(), answer, spans))
    return samples


def _hand_count(model, sample: Sample, same) -> torch.Tensor:
    """Per head: 1.0 if the last prompt row's top-1 key is an answer-span token that matches the answer token."""
    enc = sample.encode(model.tokenizer)
    info = model_info(model)
    with torch.no_grad(), capture(model, [attn_hook(layer, "pattern") for layer in range(info.n_layers)]) as acts:
        model(enc.input_ids[None])
    inside = torch.zeros(enc.input_ids.numel(), dtype=torch.bool)
    for start, end in enc.spans["answer"]:
        inside[start:end] = True
    hits = torch.zeros(info.shape, dtype=torch.float64)
    for layer in range(info.n_layers):
        top1 = acts[attn_hook(layer, "pattern")][0, :, -1].argmax(-1)  # [head]
        for head, key in enumerate(top1.tolist()):
            hits[layer, head] = float(bool(inside[key]) and same(enc.input_ids[key]) == same(enc.answer_ids[0]))
    return hits


def test_single_token_answers_score_under_text_matching_only(tiny_llama) -> None:
    tok = tiny_llama.tokenizer
    samples = _single_token_samples(tok)
    for s in samples:
        enc = s.encode(tok)
        assert enc.answer_ids.numel() == 1  # single-token answers...
        copies = [int(t) for a, b in enc.spans["answer"] for t in enc.input_ids[a:b]]
        assert copies and all(tok.convert_ids_to_tokens(t) == "Ġ" + s.answer for t in copies)  # ...copied as " x"
    kwargs = dict(span="answer", success=always, require_prediction=False, attention="eager", progress=False)
    with pytest.warns(UserWarning, match="hold none of their gold answer tokens"):  # ids: blind to the copies
        by_id = detect_retrieval_heads(tiny_llama, samples, match="id", **kwargs)
    by_text = detect_retrieval_heads(tiny_llama, samples, match="text", **kwargs)
    assert by_id.per_sample.abs().sum() == 0  # ids never match: " key" is another id than "key"
    same = TokenMatch(tok, "text")
    expected = torch.stack([_hand_count(tiny_llama, s, same) for s in samples])
    assert expected.sum() > 0, "no head looks at an answer copy: the comparison would be vacuous"
    assert torch.equal(by_text.per_sample, expected)  # needle length 1: a hit scores 1
    assert by_text.settings["match"] == "text" and by_id.settings["match"] == "id"
    with pytest.raises(hs.ConfigError, match="match must be 'text'"):
        detect_retrieval_heads(tiny_llama, samples, match="ids", **kwargs)


def test_the_blind_sample_warning_knows_text_matching(tiny_llama) -> None:
    """Under text matching the answer's copies are its tokens: no 'none of their answer tokens' warning."""
    samples = _single_token_samples(tiny_llama.tokenizer)
    kwargs = dict(span="answer", success=always, require_prediction=False, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        detect_retrieval_heads(tiny_llama, samples, match="text", **kwargs)


def test_the_blind_sample_warning_names_the_cause_of_the_match_in_use(tiny_llama) -> None:
    """An answer absent from its span: under "id" the hint is match='text'; under "text" it is the wording."""
    prompt = "the city was quiet. john found a key. what did john find? "
    samples = [Sample(prompt, "door", (Span("answer", 0, 8),))]
    kwargs = dict(span="answer", success=always, require_prediction=False, progress=False)
    for match, cause in (("id", "match='text'"), ("text", "words the answer differently")):
        with pytest.warns(UserWarning, match="none of their gold answer tokens") as caught:
            detect_retrieval_heads(tiny_llama, samples, match=match, **kwargs)
        message = " ".join(str(w.message) for w in caught)
        assert cause in message and (match == "id") == ("match='text'" in message)


def test_mass_scores_do_not_record_a_match(tiny_llama) -> None:
    samples = _single_token_samples(tiny_llama.tokenizer)
    mass = detect_retrieval_heads(tiny_llama, samples, span="answer", score="mass", success=always, progress=False)
    assert "match" not in mass.settings


# -- SmolLM2 -------------------------------------------------------------------------------------

DOCS = {
    "Paris": "Document [1](Title: France) France is a country in Europe. Its capital is Paris, on the Seine. "
    "Document [2](Title: Seine) The Seine flows through Paris to the sea.",
    "London": "Document [1](Title: Thames) The Thames flows through London. "
    "Document [2](Title: England) England's capital and largest city is London.",
    "Rome": "Document [1](Title: Italy) Italy's capital is Rome, an ancient city. "
    "Document [2](Title: Tiber) The Tiber river runs through Rome.",
    "blue": "Document [1](Title: Sky) On a clear day the sky looks blue because of scattering.",
}
QUESTIONS = {
    "Paris": "What is the capital of France?",
    "London": "Which city does the Thames flow through?",
    "Rome": "What is the capital of Italy?",
    "blue": "What colour is the sky on a clear day?",
}


def _smollm2_samples(tokenizer) -> list[Sample]:
    """Chat prompts whose reply starts "Answer: **", after which SmolLM2 writes the answer with no leading space."""
    samples = []
    for answer, context in DOCS.items():
        prompt = f"{context}\n\nQuestion: {QUESTIONS[answer]}\nGive just the one-word answer."
        starts = [i for i in range(len(prompt)) if prompt.startswith(f" {answer}", i)]
        spans = tuple(Span("answer", s + 1, s + 1 + len(answer)) for s in starts)
        samples.append(Sample(prompt, answer, spans).with_chat_template(tokenizer, answer_prefix="Answer: **"))
    return samples


@pytest.mark.smollm2
def test_smollm2_single_token_answers_score_by_text_not_by_id(smollm2) -> None:
    tok = smollm2.tokenizer
    samples = _smollm2_samples(tok)
    for s in samples:
        enc = s.encode(tok)
        assert enc.answer_ids.tolist() == tok(s.answer, add_special_tokens=False)["input_ids"]
        assert enc.answer_ids.numel() == 1, s.answer  # "Paris" is one token, and so is " Paris"
        copies = {int(t) for a, b in enc.spans["answer"] for t in enc.input_ids[a:b]}
        assert copies == set(tok(" " + s.answer, add_special_tokens=False)["input_ids"]) != {int(enc.answer_ids[0])}
    kwargs = dict(span="answer", success=always, require_prediction=False, attention="eager", progress=False)
    with pytest.warns(UserWarning, match="hold none of their gold answer tokens"):
        by_id = detect_retrieval_heads(smollm2, samples, match="id", **kwargs)
    by_text = detect_retrieval_heads(smollm2, samples, match="text", **kwargs)
    assert by_id.per_sample.abs().sum() == 0
    same = TokenMatch(tok, "text")
    expected = torch.stack([_hand_count(smollm2, s, same) for s in samples])
    assert torch.equal(by_text.per_sample, expected)
    assert expected.sum() > 0, "no head looks at an answer copy: the comparison would be vacuous"
    # the fused route reads the same rows: equal hit counts
    fused = detect_retrieval_heads(smollm2, samples, match="text", **{**kwargs, "attention": "auto"})
    assert torch.equal(fused.per_sample, expected)
    # require_prediction: a hit also needs the model's argmax to be the answer token, compared by text too
    strict = detect_retrieval_heads(smollm2, samples, match="text", **{**kwargs, "require_prediction": True})
    said = [_argmax_matches(smollm2, s, same) for s in samples]
    assert any(said), [tok.decode(_argmax(smollm2, s)) for s in samples]
    for i, ok in enumerate(said):
        assert torch.equal(strict.per_sample[i], expected[i] if ok else torch.zeros_like(expected[i])), i


def _argmax(model, sample: Sample) -> int:
    with torch.no_grad():
        return int(model(sample.encode(model.tokenizer).input_ids[None])[0, -1].argmax())


def _argmax_matches(model, sample: Sample, same) -> bool:
    answer = sample.encode(model.tokenizer).answer_ids[0]
    return bool(same(torch.tensor(_argmax(model, sample))) == same(answer))


def test_the_command_line_records_its_match(tmp_path) -> None:
    from headscope.cli import main
    from headscope.models import tiny_folder

    task = ["--no-chat", "--needle", "symbolic", "--haystack", "symbolic", "--lengths", "80", "--depths", "50"]
    argv = ["detect", "--model", str(tiny_folder("llama")), *task, "--n-samples", "1"]
    for extra, match in (([], "text"), (["--match", "id"], "id")):
        assert main([*argv, *extra, "--out", str(tmp_path / match)]) in (0, 1)
        assert hs.RetrievalScores.load(tmp_path / match / "scores.json").settings["match"] == match
