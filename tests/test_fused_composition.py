"""A knockout on the fused route acts on everything that runs inside it, not only on the bridge's forward.

Detection, the pipeline's generation and training run a Hugging Face twin of the bridge. Before
issue 22 a fused knockout swapped the bridge's attention forwards only, so all three silently
computed the intact model inside ``with knockout(...)``. Each test here runs one of them inside
every knockout mode on the fused route and on the eager route (TransformerLens hooks, which the
twin cannot skip because it is refused while hooks are attached), and requires equal results that
differ from the intact model's.
"""

from __future__ import annotations

import pytest
import torch
from _close import assert_close
from word_samples import always, word_sample

import headscope as hs
from headscope.ablation import Knockout, mean_knockout
from headscope.errors import ModelError
from headscope.evaluate import generate_answer, retrieval_success
from headscope.models import hf_twin, tiny_folder
from headscope.patching import patched, record_heads
from headscope.pipeline._score import _generate, generated_match
from headscope.retrieval import detect_retrieval_heads
from headscope.training import finetune

MODES = ["uniform", "zero", "mean", "edge"]
HEADS = [(0, 0), (0, 3), (1, 1), (1, 2), (2, 0), (2, 2)]
SAMPLES = [word_sample(seed, n_words=40) for seed in range(4)]


@pytest.fixture(scope="module")
def model():
    return hs.load_folder(tiny_folder("llama", n_layers=3, n_heads=4, n_kv_heads=2))


def spec_for(model, mode: str) -> Knockout:
    """Every head of ``HEADS`` at every position; edge blocks keys 1-29 (the needle and what precedes it)."""
    if mode == "mean":
        ids = [s.encode(model.tokenizer).input_ids for s in SAMPLES]
        return mean_knockout(model, HEADS, ids)
    return Knockout(tuple(HEADS), mode, keys=tuple(range(1, 30)) if mode == "edge" else None)  # type: ignore[arg-type]


def detect(model, **kw):
    return detect_retrieval_heads(model, SAMPLES[:1], require_prediction=False, success=always, progress=False, **kw)


@pytest.mark.parametrize("mode", MODES)
def test_the_twin_computes_the_knocked_out_model(model, mode: str) -> None:
    tokens = SAMPLES[0].encode(model.tokenizer).input_ids[None]
    spec = spec_for(model, mode)
    with torch.no_grad():
        intact = model(tokens)
        with spec.applied(model, attention="fused"):
            twin = hf_twin(model)(tokens).logits
        with spec.applied(model, attention="eager"):
            eager = model(tokens)
    assert_close(twin, eager)
    assert (twin - intact).abs().max() > 1e-3


@pytest.mark.parametrize("score", ["copy", "mass"])
@pytest.mark.parametrize("mode", MODES)
def test_detection_inside_a_fused_knockout_equals_the_eager_route(model, mode: str, score: str) -> None:
    spec = spec_for(model, mode)
    intact = detect(model, score=score, attention="fused")
    with spec.applied(model, attention="fused"):
        fused = detect(model, score=score, attention="auto")
    with spec.applied(model, attention="eager"):
        eager = detect(model, score=score, attention="eager")
    if score == "copy":
        assert torch.equal(fused.hit_sums, eager.hit_sums)
    else:
        assert_close(fused.hit_sums, eager.hit_sums, dtype=torch.float32)
    if score == "mass" or mode in ("uniform", "edge"):  # zero and mean move the knocked heads' reads only downstream
        assert not torch.allclose(fused.hit_sums, intact.hit_sums)


@pytest.mark.parametrize("mode", MODES)
def test_generation_detection_inside_a_fused_knockout_equals_the_eager_route(model, mode: str) -> None:
    spec = spec_for(model, mode)
    kw = {"mode": "generation", "max_new_tokens": 5, "score": "mass"}
    intact = detect(model, attention="fused", **kw)
    with spec.applied(model, attention="fused"):
        fused = detect(model, attention="auto", **kw)
    with spec.applied(model, attention="eager", route="scores" if mode in ("uniform", "edge") else "auto"):
        eager = detect(model, attention="eager", **kw)
    assert_close(fused.hit_sums, eager.hit_sums, dtype=torch.float32)
    assert not torch.allclose(fused.hit_sums, intact.hit_sums)


@pytest.mark.parametrize("mode", MODES)
def test_decoding_and_generation_scores_inside_a_fused_knockout_equal_the_eager_route(model, mode: str) -> None:
    """The bridge's own decoding, the success rule on it, and the pipeline's twin generation."""
    spec = spec_for(model, mode)
    sample = SAMPLES[0]
    intact = generate_answer(model, sample, max_new_tokens=6)
    seen = {}
    for attention in ("fused", "eager"):
        with spec.applied(model, attention=attention):
            seen[attention] = (
                generate_answer(model, sample, max_new_tokens=6),
                retrieval_success(model, sample, max_new_tokens=6),
                generated_match(model, [sample], max_new_tokens=6, attention="auto"),
            )
    with spec.applied(model, attention="fused"):
        twin_text = _generate(hf_twin(model), model.tokenizer, sample, 6)
    assert seen["fused"] == seen["eager"]
    assert twin_text == seen["eager"][0]
    if mode != "uniform":  # uniform attention happens to leave this random model's greedy text as it was
        assert twin_text != intact


@pytest.mark.parametrize("mode", MODES)
def test_a_training_step_inside_a_fused_knockout_equals_the_eager_route(mode: str) -> None:
    """One attention-weight step: the loss and the weights' update match the eager route's, not the intact model's.

    The knocked-out heads' gradients are what the knockout changes most (zero, mean and uniform
    leave the knocked heads' queries with none), so the updates tell the routes apart.
    """
    losses, updates = {}, {}
    for label in ("intact", "fused", "eager"):
        model = hs.load_folder(tiny_folder("llama", n_layers=3, n_heads=4, n_kv_heads=2))
        before = torch.cat([p.detach().flatten().clone() for p in model.blocks[0].attn.parameters()])
        spec = spec_for(model, mode)
        context = spec.applied(model, attention=label) if label != "intact" else torch.enable_grad()
        with context:
            losses[label] = finetune(
                model,
                SAMPLES[:2],
                train="attention_weights",
                lr=1e-3,
                steps=1,
                batch_size=2,
                attention="auto",
                progress=False,
            ).losses[0]
        updates[label] = torch.cat([p.detach().flatten() for p in model.blocks[0].attn.parameters()]) - before
    assert losses["fused"] == pytest.approx(losses["eager"], rel=1e-5)
    # AdamW's first step moves each weight by up to lr = 1e-3, and a gradient near its epsilon adds ~1e-6 of
    # rounding noise; the intact model's update differs from the knocked-out one's by a good part of lr.
    torch.testing.assert_close(updates["fused"], updates["eager"], rtol=0, atol=1e-5)
    assert (updates["fused"] - updates["intact"]).abs().max() > 1e-4


def test_training_inside_an_eager_knockout_runs_its_hooks(model) -> None:
    """The twin would skip an eager knockout's hooks: ``"auto"`` trains through the bridge instead."""
    losses = {}
    for attention in ("auto", "eager"):
        fresh = hs.load_folder(tiny_folder("llama", n_layers=3, n_heads=4, n_kv_heads=2))
        with spec_for(fresh, "zero").applied(fresh, attention="eager"):
            losses[attention] = finetune(
                fresh,
                SAMPLES[:2],
                train="attention_weights",
                lr=1e-3,
                steps=1,
                batch_size=2,
                attention=attention,
                progress=False,
            ).losses[0]
        with (
            pytest.raises(ModelError, match="hooks are attached"),
            spec_for(fresh, "zero").applied(fresh, attention="eager"),
        ):
            finetune(fresh, SAMPLES[:2], train="attention_weights", steps=1, attention="fused", progress=False)
    assert losses["auto"] == losses["eager"]


def test_fused_knockouts_nest_and_compose(model) -> None:
    tokens = SAMPLES[1].encode(model.tokenizer).input_ids[None]
    outer = Knockout(((0, 1), (2, 3)), "zero")
    inner = Knockout(((1, 0),), "uniform")
    with torch.no_grad():
        with outer.applied(model, attention="fused"), inner.applied(model, attention="fused"):
            nested = model(tokens)
            nested_twin = hf_twin(model)(tokens).logits
        with outer.applied(model, attention="fused"):
            outer_only = model(tokens)
        with outer.applied(model, attention="eager"), inner.applied(model, attention="eager"):
            eager = model(tokens)
    assert_close(nested, eager)
    assert_close(nested_twin, eager)
    assert (nested - outer_only).abs().max() > 1e-3  # the inner block added its edit


def test_detection_refuses_to_guess_inside_a_fused_patch(model) -> None:
    """A fused patch attaches hooks the twin cannot fire, and hook_pattern cannot fire on the route: say so."""
    tokens = SAMPLES[0].encode(model.tokenizer).input_ids[None]
    source = record_heads(model, SAMPLES[1].encode(model.tokenizer).input_ids[None][:, : tokens.shape[1]], layers=[1])
    with patched(model, source, [(1, 1)], attention="fused"):
        with pytest.raises(ModelError, match="fused route right now"):
            detect(model, attention="auto")
    assert detect(model, attention="auto").n_counted == 1  # and nothing is left attached
