"""The fused attention route against the eager route and against Hugging Face's eager attentions.

Tiny random Llama, Qwen2 and Mistral models (rotary, grouped-query attention: 4 query heads over 2
or 1 key/value heads) and SmolLM2 (marked ``smollm2``). Prompts repeat a few words, so tokens in
the needle recur in the answer and random heads score hits by chance on both routes.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from _close import assert_close
from word_samples import always, word_sample

import headscope as hs
from headscope.errors import ModelError
from headscope.models import tiny_folder, tokenizer_of
from headscope.retrieval import RetrievalScores, detect_retrieval_heads
from headscope.retrieval._fused import FusedRoute
from headscope.retrieval._routes import EagerRoute, choose_route
from headscope.tasks import Sample, Span

ARCHS = {"llama": 2, "qwen2": 2, "mistral": 1}  # arch -> key/value heads (of 4 query heads)
SAMPLES = [word_sample(seed) for seed in range(6)]


@pytest.fixture(scope="module", params=list(ARCHS), ids=list(ARCHS))
def folder(request: pytest.FixtureRequest):
    return tiny_folder(request.param, n_layers=3, n_heads=4, n_kv_heads=ARCHS[request.param])


@pytest.fixture(scope="module")
def bridge(folder):
    return hs.load_folder(folder)


def detect(model, **kw) -> RetrievalScores:
    return detect_retrieval_heads(model, SAMPLES, require_prediction=False, success=always, progress=False, **kw)


def no_hooks(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("mode", ["teacher_forced", "generation"])
def test_fused_hit_counts_equal_the_eager_route_per_head_and_sample(bridge, mode: str) -> None:
    fused = detect(bridge, mode=mode, attention="fused", max_new_tokens=8)
    eager = detect(bridge, mode=mode, attention="eager", max_new_tokens=8)
    assert torch.equal(fused.per_sample, eager.per_sample)
    assert fused == eager
    if mode == "teacher_forced":  # not vacuous: random heads score hits on the gold needle words
        assert fused.per_sample.sum() > 0
    assert no_hooks(bridge)


def test_fused_decoding_steps_produce_the_eager_tokens_and_top1_keys(bridge) -> None:
    """Random models produce tokens outside the needle (no hits), so compare every step's keys directly."""
    prompt = SAMPLES[0].encode(tokenizer_of(bridge)).input_ids
    eager = EagerRoute(bridge, 3)
    with torch.no_grad(), eager.session():
        expected = list(eager.steps(prompt, None, max_new_tokens=10, stop_ids=()))
    with torch.no_grad():
        got = list(FusedRoute(bridge).steps(prompt, None, max_new_tokens=10, stop_ids=()))
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert all(torch.equal(a.top1, b.top1) for (_, a), (_, b) in zip(got, expected, strict=True))
    assert len({tuple(r.top1.flatten().tolist()) for _, r in got}) > 1  # the keys move from step to step


def test_fused_batches_equal_one_sample_at_a_time(bridge) -> None:
    assert detect(bridge, attention="fused", batch_size=4) == detect(bridge, attention="fused")


@pytest.mark.parametrize("mode", ["teacher_forced", "generation"])
def test_fused_mass_scores_equal_the_eager_route(bridge, mode: str) -> None:
    fused = detect(bridge, mode=mode, score="mass", attention="fused", max_new_tokens=8)
    eager = detect(bridge, mode=mode, score="mass", attention="eager", max_new_tokens=8)
    assert fused.score == eager.score == "mass"
    assert_close(fused.per_sample, eager.per_sample, dtype=torch.float32, short=True)  # float32 weights, as float64
    assert (fused.per_sample > 0).all() and (fused.per_sample < 1).all()


def hf_eager(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def test_fused_top1_keys_and_needle_mass_equal_hf_eager_attentions(folder, bridge) -> None:
    hf = hf_eager(folder)
    enc = SAMPLES[0].encode(tokenizer_of(bridge))
    tokens = torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None]
    rows = torch.arange(tokens.shape[1])[None]  # every row, not only the answer rows
    (start, end) = enc.spans["needle"][0]
    needles = torch.zeros_like(tokens, dtype=torch.bool)
    needles[0, start:end] = True
    with torch.no_grad():
        logits, reads = FusedRoute(bridge).forward(tokens, rows, needles)
        out = hf(tokens, output_attentions=True)
    attentions = torch.stack(out.attentions)[:, 0]  # [layer, head, query, key]
    assert torch.equal(reads.top1[:, 0], attentions.argmax(-1))
    assert_close(reads.mass[:, 0], attentions[..., start:end].sum(-1), short=True)
    assert_close(logits, out.logits, short=True)


def test_fused_mass_score_is_the_mean_needle_attention_of_hf_eager(folder, bridge) -> None:
    hf = hf_eager(folder)
    scores = detect(bridge, score="mass", attention="fused")
    tokenizer = tokenizer_of(bridge)
    for sample, got in zip(SAMPLES, scores.per_sample, strict=True):
        enc = sample.encode(tokenizer)
        (start, end), n = enc.spans["needle"][0], enc.input_ids.numel()
        with torch.no_grad():
            out = hf(torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None], output_attentions=True)
        rows = torch.stack(out.attentions)[:, 0, :, n - 1 :]  # [layer, head, answer row, key]
        expected = rows[..., start:end].sum(-1).mean(-1).to(torch.float64)
        assert_close(got, expected, dtype=torch.float32, short=True)


def test_fused_route_runs_sdpa_without_a_query_by_key_mask(bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kw):
        seen.append((attn_mask, kw.get("is_causal")))
        return sdpa(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    detect(bridge, attention="fused", batch_size=3)
    assert seen and all(mask is None and causal for mask, causal in seen)


def test_ties_go_to_the_earliest_key_on_both_routes() -> None:
    from headscope.models._fused_attention import AttentionCall
    from headscope.retrieval._top1 import read_rows

    query = torch.zeros(1, 2, 5, 4)  # zero queries: every visible key ties
    key = torch.randn(1, 1, 5, 4)
    call = AttentionCall(query, key, key, None, 0.5)
    reads = read_rows(call.weights(call.scores(torch.tensor([[2, 4]]))), None)
    assert torch.equal(reads.top1, torch.zeros(1, 2, 2, dtype=torch.long))


# -- choosing the route ------------------------------------------------------------------------


def test_auto_takes_fused_on_supported_bridges_and_eager_elsewhere(bridge) -> None:
    assert isinstance(choose_route(bridge, "auto", 3), FusedRoute)
    assert isinstance(choose_route(hs.load_model("tiny-gpt2"), "auto", 2), FusedRoute)
    assert isinstance(choose_route(hs.load_model("tiny-gpt-neo"), "auto", 2), EagerRoute)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compat = hs.load_model("tiny-llama", compatibility_mode=True)
    assert isinstance(choose_route(compat, "auto", 2), EagerRoute)


def test_fused_refuses_a_model_it_cannot_run_and_says_why() -> None:
    with pytest.raises(
        ModelError, match=r"attention='fused' cannot run .*GPTNeoSelfAttention.*AttentionInterface.*attention='eager'"
    ):
        detect_retrieval_heads(hs.load_model("tiny-gpt-neo"), SAMPLES[:1], attention="fused", progress=False)


def test_a_user_hook_is_never_skipped_silently(bridge) -> None:
    calls = []

    def user_hook(act, hook):
        calls.append(hook.name)

    with hs.attached(bridge, [("blocks.0.attn.hook_z", user_hook)]):
        with pytest.raises(ModelError, match=r"hooks are attached to .*blocks\.0\.attn\.hook_z"):
            detect(bridge, attention="fused")
        auto = detect(bridge, attention="auto")  # auto falls back to eager, which fires the hook
    assert calls and auto == detect(bridge, attention="fused")


def test_auto_falls_back_to_eager_when_the_twin_cannot_be_built(bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    from headscope.retrieval import _fused

    def broken(model):
        raise ModelError("the bridge holds no tensor for model.norm.weight")

    monkeypatch.setattr(_fused, "hf_twin", broken)
    assert isinstance(choose_route(bridge, "auto", 3), EagerRoute)
    with pytest.raises(
        ModelError, match=r"cannot run on this model: the bridge holds no tensor for model\.norm\.weight"
    ):
        choose_route(bridge, "fused", 3)


def test_unknown_attention_is_refused(bridge) -> None:
    with pytest.raises(ValueError, match="attention must be 'fused', 'eager' or 'auto'; got 'flash'"):
        detect(bridge, attention="flash")


def test_the_twin_shares_the_bridge_tensors_and_leaves_its_config_alone(bridge) -> None:
    before = bridge.original_model.config._attn_implementation
    twin = FusedRoute(bridge).twin
    shared = {t.data_ptr() for t in bridge.original_model.parameters()}
    assert all(p.data_ptr() in shared for p in twin.parameters())
    assert bridge.original_model.config._attn_implementation == before
    assert twin.config._attn_implementation == "headscope_fused"


# -- SmolLM2 -----------------------------------------------------------------------------------


FILLER = [
    "The river looked calm.",
    "An old farmer was busy.",
    "The small library stayed open late.",
    "A grey cat slept.",
]
NEEDLES = [
    ("The password for the blue locker is falcon seven.", "What is the password for the blue locker?"),
    ("The red notebook is hidden under the piano.", "Where is the red notebook hidden?"),
]


@pytest.fixture(scope="module")
def needle_samples(smollm2_tokenizer) -> list[Sample]:
    """Needle sentences at four depths of a 40-sentence haystack; the gold answer is the needle sentence."""
    samples = []
    for i, depth in enumerate([0.1, 0.4, 0.6, 0.9]):
        rng = random.Random(i)
        sentences = [rng.choice(FILLER) for _ in range(40)]
        needle, question = NEEDLES[i % len(NEEDLES)]
        before = " ".join(sentences[: int(40 * depth)]) + " "
        prompt = f"{before}{needle} {' '.join(sentences[int(40 * depth) :])}\n\nQuestion: {question}"
        sample = Sample(prompt, needle, (Span("needle", len(before), len(before) + len(needle)),))
        samples.append(sample.with_chat_template(smollm2_tokenizer))
    return samples


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["teacher_forced", "generation"])
def test_smollm2_fused_hit_counts_equal_the_eager_route(smollm2, needle_samples, mode: str) -> None:
    kw = dict(mode=mode, max_new_tokens=12, progress=False)
    fused = detect_retrieval_heads(smollm2, needle_samples, attention="fused", **kw)
    eager = detect_retrieval_heads(smollm2, needle_samples, attention="eager", **kw)
    assert fused.n_counted > 0 and fused.per_sample.sum() > 0
    assert torch.equal(fused.per_sample, eager.per_sample)
    assert fused == eager


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_fused_top1_keys_equal_hf_eager_attentions(smollm2, smollm2_hf, smollm2_tokenizer, needle_samples):
    enc = needle_samples[1].encode(smollm2_tokenizer)
    tokens = torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None]
    rows = torch.arange(enc.input_ids.numel() - 1, tokens.shape[1])[None]
    with torch.no_grad():
        _, reads = FusedRoute(smollm2).forward(tokens, rows, None)
        attentions = torch.stack(smollm2_hf(tokens, output_attentions=True).attentions)[:, 0]
    assert torch.equal(reads.top1[:, 0], attentions[:, :, rows[0]].argmax(-1))


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_fused_mass_scores_equal_the_eager_route(smollm2, needle_samples) -> None:
    kw = dict(score="mass", progress=False)
    fused = detect_retrieval_heads(smollm2, needle_samples, attention="fused", **kw)
    eager = detect_retrieval_heads(smollm2, needle_samples, attention="eager", **kw)
    assert_close(fused.per_sample, eager.per_sample, dtype=torch.float32)  # 30 layers: the long tolerance


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.parametrize("span", ["needle", "answer"])
def test_smollm2_fused_hit_counts_equal_the_eager_route_on_mdqa(smollm2, smollm2_tokenizer, span) -> None:
    from headscope.tasks import mdqa

    samples = [s.with_chat_template(smollm2_tokenizer) for s in mdqa(n_docs=8, n_hard=2, n_samples=4, seed=3)]
    kw = dict(span=span, require_prediction=False, success=always, progress=False)
    fused = detect_retrieval_heads(smollm2, samples, attention="fused", **kw)
    eager = detect_retrieval_heads(smollm2, samples, attention="eager", **kw)
    assert fused.per_sample.sum() > 0
    assert torch.equal(fused.per_sample, eager.per_sample)
