"""The synthetic-vs-real pipeline: config, data, scoring, a micro end-to-end run, and errors from its pieces.

The smoke preset itself runs in tests/test_notebooks.py (notebook 03); here a micro config keeps the
end-to-end run to seconds.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from headscope import ContextLengthError, ModelMismatchError
from headscope.models import load_folder, tiny_folder, tiny_tokenizer, tokenizer_of
from headscope.pipeline import (
    REAL,
    SYNTHETIC,
    PipelineConfig,
    PipelineResult,
    Variant,
    answer_correct,
    base_model,
    finetune_variant,
    retrieval_heads,
    run_pipeline,
    task_score,
    variant_samples,
)
from headscope.tasks import Sample

MICRO = PipelineConfig(
    variants=SYNTHETIC[:3],
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    n_ctx=160,
    length=64,
    n_train=24,
    n_eval=12,
    pretrain_steps=4,
    finetune_steps=30,
    lr=1e-2,
    batch_size=4,
    top_k=3,
    require_prediction=False,  # so that heads of a barely trained model score, and recall is defined
    knockout_ks=(1, 2),
    knockout_seeds=(0,),
    n_random=1,
    n_boot=50,
)


def _no_hooks(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def micro_result(tmp_path_factory):
    result = run_pipeline(MICRO, progress=False)
    folder = result.save(tmp_path_factory.mktemp("pipeline") / "result")
    return result, folder


@pytest.fixture(scope="module")
def base():
    model, _ = base_model(dataclasses.replace(MICRO, pretrain_steps=0))
    return model


def test_config_round_trips_and_presets_differ():
    for config in (PipelineConfig.smoke(), PipelineConfig.full(), MICRO):
        assert PipelineConfig.from_dict(config.to_dict()) == config
    assert PipelineConfig.smoke().finetune_steps < PipelineConfig.full().finetune_steps
    assert PipelineConfig.smoke(seed=3).seed == 3


def test_config_reports_every_problem_at_once():
    with pytest.raises(ValueError, match="unique") as err:
        PipelineConfig(variants=(SYNTHETIC[0], SYNTHETIC[0], SYNTHETIC[1]), n_eval=0, patch_target="nope")
    message = str(err.value)
    assert "n_eval must be at least 1" in message and "patch_target must name a synthetic variant" in message
    with pytest.raises(ValueError, match="at least 3 synthetic variants"):
        PipelineConfig(variants=SYNTHETIC[:2])
    with pytest.raises(ValueError, match="needle must be one of"):
        Variant("x", "poetic", "diverse")


def test_variant_samples_have_exact_length_and_disjoint_splits():
    tok = tiny_tokenizer()
    train = variant_samples(MICRO, SYNTHETIC[1], tok, split="train")
    held_out = variant_samples(MICRO, SYNTHETIC[1], tok, split="eval")
    assert len(train) == MICRO.n_train and len(held_out) == MICRO.n_eval
    assert not {s.prompt for s in train} & {s.prompt for s in held_out}
    for s in held_out:
        context = s.prompt[: s.prompt.index("\n\nBased on")]
        assert len(tok(context)["input_ids"]) == MICRO.length
        assert (s.meta["needle_kind"], s.meta["haystack_kind"]) == ("symbolic", "diverse")


def _greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = torch.tensor([tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]])
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids[None])[0, -1].argmax())
            new.append(nxt)
            ids = torch.cat([ids, torch.tensor([nxt])])
    return new


def test_answer_correct_agrees_with_a_greedy_decoding_loop(base):
    tok = tokenizer_of(base)
    # a prompt whose greedy first token is text that encodes back to that token (a random-weight
    # model may well predict a lone byte of a multi-byte character first)
    prompts = ["The magic number is 4712. The magic number is", "The magic number is 4712. The magic number"]
    prompts += ["The magic number is 4712. The", "The river ran slowly. The river", "A quiet village had a red"]
    roundtrip = lambda t: tok(tok.decode([t]), add_special_tokens=False)["input_ids"] == [t]  # noqa: E731
    prompt, new = next((p, new) for p in prompts if roundtrip((new := _greedy(base, tok, p, 3))[0]))
    first = tok.decode(new[:1])
    assert answer_correct(base, Sample(prompt, first)) == 1.0
    other = tok.decode([(new[0] + 1) % len(tok)])
    assert answer_correct(base, Sample(prompt, other)) == 0.0
    score = task_score(base, [Sample(prompt, first), Sample(prompt, other)])
    assert score.accuracy == 0.5 and score.n == 2 and score.logprob < 0


def test_micro_pipeline_round_trips_through_save_and_load(micro_result):
    result, folder = micro_result
    loaded = PipelineResult.load(folder)
    assert loaded == result
    assert [v.name for v in loaded.variants] == ["real", *(v.name for v in MICRO.variants)]
    frame = loaded.to_frame()
    assert list(frame["name"]) == [v.name for v in result.variants]
    figures = loaded.figures()
    assert set(figures) >= {"real_heads", "knockout", "training"}
    if "recall_vs_accuracy" in figures:  # one figure from plot(): the recall scatter when recall is defined
        assert loaded.plot().to_dict() == figures["recall_vs_accuracy"].to_dict()
    else:
        assert loaded.plot().to_dict() == figures["real_heads"].to_dict()


def test_recall_equals_the_set_overlap_of_the_saved_head_sets(micro_result):
    _, folder = micro_result
    loaded = PipelineResult.load(folder)
    real = set(loaded.real.heads)
    n_all = MICRO.n_layers * MICRO.n_heads
    for v in loaded.variants:
        assert len(v.heads) <= MICRO.top_k and all(
            0 <= layer < MICRO.n_layers and 0 <= h < MICRO.n_heads for layer, h in v.heads
        )
        assert v.recall == len(real & set(v.heads)) / len(real)
        assert v.jaccard == len(real & set(v.heads)) / len(real | set(v.heads))
        assert 0.0 <= v.recall <= 1.0
    assert real and loaded.real.recall == 1.0
    # Head sets are the top scores among heads that scored at all.
    for v in loaded.variants:
        grid = loaded.scores[v.name].hit_sums
        positive = {(int(i) // MICRO.n_heads, int(i) % MICRO.n_heads) for i in torch.nonzero(grid.flatten() > 0)}
        assert set(v.heads) <= positive and len(v.heads) == min(MICRO.top_k, len(positive), n_all)


def test_summary_reports_every_variant_and_the_measured_numbers(micro_result):
    result, _ = micro_result
    text = result.summary()
    for v in result.variants:
        assert v.name in text and f"{v.accuracy:.3f}" in text
    assert f"intact {result.knockout.baseline:.3f}" in text
    assert "Spearman(recall, accuracy)" in text


def test_pieces_reject_empty_datasets(base):
    with pytest.raises(ValueError, match="at least one sample"):
        task_score(base, [])
    with pytest.raises(ValueError, match="no samples given"):
        finetune_variant(base, [], MICRO)
    with pytest.raises(ValueError, match="samples is empty"):
        retrieval_heads(base, [], MICRO)
    assert _no_hooks(base)


def test_samples_longer_than_the_context_are_refused(base):
    long = dataclasses.replace(MICRO, length=200)
    with pytest.raises(ContextLengthError, match="longer than the model's context of 160"):
        variant_samples(long, REAL, tokenizer_of(base), split="eval", n_ctx=160)
    samples = variant_samples(long, REAL, tokenizer_of(base), split="eval")
    with pytest.raises(ContextLengthError, match="context of 160 tokens"):
        finetune_variant(base, samples, MICRO)
    with pytest.raises(ContextLengthError):
        retrieval_heads(base, samples, MICRO)
    assert _no_hooks(base)


@pytest.mark.smollm2
def test_samples_from_another_tokenizer_are_refused(base, smollm2_tokenizer):
    other = smollm2_tokenizer
    encoded = [s.encode(other) for s in variant_samples(MICRO, REAL, other, split="eval")]
    assert max(int(e.input_ids.max()) for e in encoded) >= 1024
    with pytest.raises(ModelMismatchError, match="beyond the model's vocabulary"):
        finetune_variant(base, encoded, MICRO)


def test_finetune_variant_leaves_the_base_untouched(base):
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model, run = finetune_variant(base, variant_samples(MICRO, REAL, tokenizer_of(base), split="train"), MICRO)
    assert run.steps == MICRO.finetune_steps
    assert all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("self_attn" in n for n in changed)


def test_named_base_is_loaded_as_is():
    model, pretraining = base_model(dataclasses.replace(MICRO, base="tiny-llama"))
    reference = load_folder(tiny_folder("llama"))
    assert pretraining is None
    x = torch.tensor([[0, 5, 9, 7]])
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_pipeline_knockout_ranks_only_heads_with_a_positive_score(monkeypatch):
    """Zero-score heads used to fill the ranking in layer order; now the curve stops at the positive heads."""
    from headscope.pipeline import _run
    from headscope.retrieval import RetrievalScores

    grid = torch.zeros(2, 4, dtype=torch.float64)
    grid[1, 3], grid[0, 2] = 0.5, 0.25
    scores = RetrievalScores(grid, 4, 4, "m", "teacher_forced")
    seen = {}
    monkeypatch.setattr(_run, "knockout_curve", lambda model, samples, ranking, fn, **kw: seen.update(kw, r=ranking))
    config = dataclasses.replace(MICRO, knockout_ks=(1, 2, 4))
    _, notes = _run._knockout(None, scores, [], config)
    assert seen["r"] == [(1, 3), (0, 2)] and seen["ks"] == [1, 2]
    assert notes and "only 2 heads have a positive retrieval score, so k in [4] was skipped" in notes[0]
    curve, notes = _run._knockout(None, RetrievalScores(torch.zeros(2, 4), 4, 4, "m", "teacher_forced"), [], config)
    assert curve is None and "only 0 heads" in notes[0]
