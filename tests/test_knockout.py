"""Attention knockout on tiny models: every mode against an independent computation, on every kind."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.ablation import Knockout, head_means, knockout, mean_knockout
from headscope.ablation._apply import uses_fused
from headscope.errors import HeadIndexError, ModelError, ModelMismatchError, SpanError
from headscope.hooks import attn_hook, capture
from headscope.models._fused_bridge import fused_bridge
from headscope.tasks import Sample, Span

TOKENS = torch.tensor([[0, 17, 301, 52, 9, 640, 33, 88, 5, 412]])
N = TOKENS.shape[1]


def no_hooks_left(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def attn_acts(model, layers, tokens=TOKENS):
    """Run ``model`` (with whatever is attached) and capture q, k (rotated where rotary), v and z."""
    rotary = attn_hook(0, "rot_q") in model.hook_dict
    sites = {"q": "rot_q" if rotary else "q", "k": "rot_k" if rotary else "k", "v": "v", "z": "z"}
    names = {(layer, key): attn_hook(layer, site) for layer in layers for key, site in sites.items()}
    with torch.no_grad(), capture(model, names.values()) as acts:
        logits = model(tokens)
    return logits, {key: acts[name] for key, name in names.items()}


def hand_z(acts, layer, group, scale, mask_fn):
    """z of every head from captured q, k, v: softmax(scale q·k + causal + mask_fn) @ v, in plain torch."""
    q, k, v = acts[layer, "q"][0], acts[layer, "k"][0], acts[layer, "v"][0]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    n = q.shape[0]
    allowed = torch.ones(scores.shape, dtype=torch.bool).tril()
    allowed = mask_fn(allowed)
    pattern = torch.where(allowed.any(-1, keepdim=True), scores.masked_fill(~allowed, -torch.inf).softmax(-1), 0.0)
    return torch.einsum("hqk,khd->qhd", pattern, v).reshape(n, -1, v.shape[-1])


# -- no-op, edge, uniform, zero, mean against hand computations ----------------------------------


def test_knocking_out_no_head_is_an_exact_no_op(tiny_llama):
    with torch.no_grad():
        plain = tiny_llama(TOKENS)
        with knockout(tiny_llama, [], "uniform"):
            uniform = tiny_llama(TOKENS)
        with Knockout((), "edge", keys=(2, 3)).applied(tiny_llama):
            edge = tiny_llama(TOKENS)
    assert torch.equal(plain, uniform) and torch.equal(plain, edge)
    assert no_hooks_left(tiny_llama)


@pytest.mark.parametrize("route", ["scores", "z"])
def test_edge_knockout_matches_a_hand_built_mask(tiny_llama, route):
    info = hs.model_info(tiny_llama)
    heads, keys, queries = [(0, 1), (1, 0), (1, 3)], [2, 3, 4], [5, 6, 7, 8, 9]
    with knockout(tiny_llama, heads, "edge", keys=keys, queries=queries, route=route):
        logits, acts = attn_acts(tiny_llama, [0, 1])

    for layer in (0, 1):
        knocked = [h for l_, h in heads if l_ == layer]

        def block(allowed, knocked=knocked):
            allowed = allowed.clone()
            for h in knocked:
                for q in queries:
                    allowed[h, q, keys] = False
            return allowed

        expected = hand_z(acts, layer, info.kv_group, 1 / math.sqrt(info.d_head), block)
        assert_close(acts[layer, "z"][0], expected, short=True)
        # without the mask (the knockout missed): the same q, k, v give another z
        assert_differs(
            hand_z(acts, layer, info.kv_group, 1 / math.sqrt(info.d_head), lambda a: a), expected, short=True
        )
    plain, _ = attn_acts(tiny_llama, [0])
    assert_differs(plain, logits, short=True)  # the knockout did change the computation
    assert no_hooks_left(tiny_llama)


def test_edge_knockout_on_a_gpt2_model_matches_a_hand_built_mask(tiny_gpt2):
    info = hs.model_info(tiny_gpt2)
    with knockout(tiny_gpt2, [(0, 2), (1, 1)], "edge", keys=[1, 2, 3], attention="eager"):  # reads hook_q/k/v/z
        _, acts = attn_acts(tiny_gpt2, [0, 1])
    for layer, head in [(0, 2), (1, 1)]:

        def block(allowed, head=head):
            allowed = allowed.clone()
            allowed[head, :, 1:4] = False
            return allowed

        expected = hand_z(acts, layer, 1, 1 / math.sqrt(info.d_head), block)
        assert_close(acts[layer, "z"][0], expected, short=True)
        assert_differs(hand_z(acts, layer, 1, 1 / math.sqrt(info.d_head), lambda a: a), expected, short=True)


@pytest.mark.parametrize("route", ["scores", "z"])
def test_uniform_knockout_averages_value_vectors_over_the_causal_prefix(tiny_llama, route):
    info = hs.model_info(tiny_llama)
    with knockout(tiny_llama, [(0, 2), (1, 1)], "uniform", route=route):
        _, acts = attn_acts(tiny_llama, [0, 1])
    for layer, head in [(0, 2), (1, 1)]:
        v = acts[layer, "v"][0, :, head // info.kv_group]
        prefix_means = v.cumsum(0) / torch.arange(1, N + 1)[:, None]
        assert_close(acts[layer, "z"][0, :, head], prefix_means, short=True)


def plain_route(model, attention: str):
    """The route a knockout with ``attention`` takes, nothing knocked out: untouched rows equal it bit for bit."""
    return fused_bridge(model) if uses_fused(model, attention) else contextlib.nullcontext()


@pytest.mark.parametrize("attention", ["eager", "auto"])
def test_grouped_query_heads_are_knocked_out_one_at_a_time(tiny_llama, attention):
    assert hs.model_info(tiny_llama).kv_group == 2  # heads 0 and 1 share key/value head 0
    with plain_route(tiny_llama, attention):
        _, plain = attn_acts(tiny_llama, [0])
    with knockout(tiny_llama, [(0, 0)], "edge", keys=[1, 2], attention=attention):
        _, knocked = attn_acts(tiny_llama, [0])
    assert torch.equal(knocked[0, "z"][0, :, 1:], plain[0, "z"][0, :, 1:])
    assert_differs(plain[0, "z"][0, 3:, 0], knocked[0, "z"][0, 3:, 0], short=True)


@pytest.mark.parametrize("attention", ["eager", "auto"])
def test_zero_knockout_zeroes_the_head_output_at_chosen_queries_only(tiny_llama, attention):
    with plain_route(tiny_llama, attention):
        _, plain = attn_acts(tiny_llama, [0])
    with knockout(tiny_llama, [(0, 3)], "zero", queries=[4, 5], attention=attention):
        _, acts = attn_acts(tiny_llama, [0])
    z, ref = acts[0, "z"][0], plain[0, "z"][0]
    assert torch.equal(z[4:6, 3], torch.zeros_like(z[4:6, 3]))
    assert torch.equal(z[:4], ref[:4]) and torch.equal(z[6:], ref[6:]) and torch.equal(z[4:6, :3], ref[4:6, :3])


def test_mean_knockout_writes_the_reference_mean_computed_by_hand(tiny_llama):
    reference = [torch.tensor([0, 5, 9, 2, 77]), torch.tensor([0, 300, 12])]
    zs = []
    for tokens in reference:
        _, acts = attn_acts(tiny_llama, [1], tokens[None])
        zs.append(acts[1, "z"][0])
    by_hand = torch.cat(zs).mean(0)  # mean over all 8 positions
    spec = mean_knockout(tiny_llama, [(1, 2), (1, 0)], reference)
    assert spec.heads == ((1, 0), (1, 2))
    assert_close(torch.tensor(spec.means), by_hand[[0, 2]], short=True)
    assert_close(head_means(tiny_llama, reference)[1], by_hand, short=True)
    assert_differs(zs[0].mean(0), by_hand, short=True)  # the mean of one reference input only
    with spec.applied(tiny_llama):
        _, acts = attn_acts(tiny_llama, [1])
    expected = torch.tensor(spec.means, dtype=acts[1, "z"].dtype).expand(N, 2, -1)
    assert torch.equal(acts[1, "z"][0][:, [0, 2]], expected)


@pytest.mark.parametrize("route", ["scores", "z"])
def test_query_with_every_key_blocked_attends_to_nothing_instead_of_nan(tiny_llama, route):
    with knockout(tiny_llama, [(0, 1), (1, 2)], "edge", keys=range(0, 4), route=route):
        logits, acts = attn_acts(tiny_llama, [0, 1])
    assert torch.isfinite(logits).all()
    # queries 0-3 see only keys 0-3: their output for the knocked head is exactly zero
    assert torch.equal(acts[0, "z"][0, :4, 1], torch.zeros_like(acts[0, "z"][0, :4, 1]))
    assert torch.equal(acts[1, "z"][0, :4, 2], torch.zeros_like(acts[1, "z"][0, :4, 2]))
    assert acts[0, "z"][0, 4:, 1].abs().min() > 0


def test_z_route_matches_direct_score_edits(tiny_llama):
    for mode, kwargs in [("edge", {"keys": [1, 4, 5]}), ("uniform", {})]:
        outputs = []
        for route in ("scores", "z"):
            with torch.no_grad(), knockout(tiny_llama, [(0, 0), (0, 3), (1, 1)], mode, route=route, **kwargs):
                outputs.append(tiny_llama(TOKENS))
        assert_close(outputs[0], outputs[1], short=True, msg=mode)


# -- models whose attention ignores score edits ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_neo():
    return hs.load_model("tiny-gpt-neo")


def test_gpt_neo_fallback_matches_attention_recomputed_from_q_k_v(tiny_neo):
    info = hs.model_info(tiny_neo)
    assert not info.score_edits and not info.pattern_edits
    heads, keys = [(0, 0), (0, 3), (1, 2)], [2, 3]
    _, plain = attn_acts(tiny_neo, [0, 1])
    with knockout(tiny_neo, heads, "edge", keys=keys):
        _, acts = attn_acts(tiny_neo, [0, 1])
    for layer in (0, 1):
        knocked = [h for l_, h in heads if l_ == layer]

        def block(allowed, knocked=knocked):
            allowed = allowed.clone()
            allowed[knocked, :, 2:4] = False
            return allowed

        # GPT-Neo does not scale its attention scores
        expected = hand_z(acts, layer, 1, 1.0, block)
        assert_close(acts[layer, "z"][0], expected, short=True)
    assert_differs(plain[1, "z"], acts[1, "z"], short=True)


def test_gpt_neo_uniform_knockout_averages_value_vectors(tiny_neo):
    with knockout(tiny_neo, [(1, 3)], "uniform"):
        _, acts = attn_acts(tiny_neo, [1])
    v = acts[1, "v"][0, :, 3]
    assert_close(acts[1, "z"][0, :, 3], v.cumsum(0) / torch.arange(1, N + 1)[:, None], short=True)


def test_score_route_is_refused_where_score_edits_are_discarded(tiny_neo):
    with pytest.raises(ModelError, match=r"ignores edits of hook_attn_scores.*route='z'"):
        with knockout(tiny_neo, [(0, 1)], "uniform", route="scores"):
            pass
    assert no_hooks_left(tiny_neo)


def test_a_discarded_score_edit_is_detected_on_the_first_call(tiny_neo, monkeypatch):
    """If model_info wrongly claimed score edits work, the read-back of hook_pattern catches it."""
    from headscope.models import _info

    monkeypatch.setitem(_info._INFOS, tiny_neo, replace(hs.model_info(tiny_neo), score_edits=True))
    with pytest.raises(ModelError, match="did not reach the attention pattern"):
        with torch.no_grad(), knockout(tiny_neo, [(0, 1)], "edge", keys=[1]):
            tiny_neo(TOKENS)
    assert no_hooks_left(tiny_neo)


def test_a_wrong_recomputed_pattern_is_detected(tiny_neo, monkeypatch):
    import headscope.ablation._apply as apply

    monkeypatch.setattr(apply, "_probe_scale", lambda model, info, layer: 0.5)
    with pytest.raises(ModelError, match="recomputed from q and k at layer 0 differs"):
        with torch.no_grad(), knockout(tiny_neo, [(0, 1)], "edge", keys=[1]):
            tiny_neo(TOKENS)
    assert no_hooks_left(tiny_neo)


# -- generation -----------------------------------------------------------------------------------


def _greedy(model, tokens, n, **kwargs):
    return model.generate(tokens, max_new_tokens=n, do_sample=False, verbose=False, **kwargs)


@pytest.mark.parametrize("mode", ["edge", "zero"])
def test_knockout_holds_for_every_generation_step_with_a_kv_cache(tiny_llama, mode):
    """Tokens generated with a KV cache equal step-by-step argmax of full forwards under the same knockout."""
    prompt = TOKENS[:, :6]
    kwargs = {"keys": [1, 2, 3]} if mode == "edge" else {"queries": range(6, 12)}
    heads = [(0, h) for h in range(4)] + [(1, h) for h in range(4)]
    with torch.no_grad():
        plain = _greedy(tiny_llama, prompt, 5, use_past_kv_cache=True)
        with knockout(tiny_llama, heads, mode, **kwargs):
            cached = _greedy(tiny_llama, prompt, 5, use_past_kv_cache=True)
            full_argmax = tiny_llama(cached[:, :-1])[0, 5:].argmax(-1)
    assert torch.equal(cached[0, 6:], full_argmax)
    assert not torch.equal(cached, plain)  # and the knockout changed what was generated


def test_z_route_refuses_a_kv_cache_and_works_without(tiny_neo):
    prompt = TOKENS[:, :6]
    with torch.no_grad(), knockout(tiny_neo, [(0, 1)], "edge", keys=[1, 2]):
        with pytest.raises(ModelError, match="use_past_kv_cache=False"):
            _greedy(tiny_neo, prompt, 3, use_past_kv_cache=True)
        out = _greedy(tiny_neo, prompt, 3, use_past_kv_cache=False)
        assert torch.equal(out[0, 6:], tiny_neo(out[:, :-1])[0, 5:].argmax(-1))
    assert no_hooks_left(tiny_neo)


# -- the spec as a value --------------------------------------------------------------------------


def test_knockout_spec_prints_compares_and_round_trips(tmp_path, tiny_llama):
    spec = Knockout([(1, 2), "L0H3"], "edge", keys=[7, 5, 6], queries=range(8, 10))
    assert repr(spec) == ("Knockout(heads=((0, 3), (1, 2)), mode='edge', keys=(5, 6, 7), span=None, queries=(8, 9))")
    assert spec == Knockout([(0, 3), (1, 2)], "edge", keys=(5, 6, 7), queries=(8, 9))
    assert spec != replace(spec, mode="uniform", keys=None)
    spec.save(tmp_path / "k.json")
    assert Knockout.load(tmp_path / "k.json") == spec
    means_spec = mean_knockout(tiny_llama, [(1, 1), (0, 2)], [TOKENS[0]])
    means_spec.save(tmp_path / "m.json")
    loaded = Knockout.load(tmp_path / "m.json")
    assert loaded == means_spec and hash(loaded) == hash(means_spec)


def test_span_resolves_to_the_needle_tokens_of_a_sample(tiny_llama):
    prompt = "The river was quiet. The secret code is 4821. What is the secret code?"
    start = prompt.index("4821")
    sample = Sample(prompt, " 4821", spans=(Span("needle", start, start + 4),))
    enc = sample.encode(tiny_llama.tokenizer)
    needle = list(range(*enc.spans["needle"][0]))
    spec = Knockout([(0, 1)], "edge", span="needle")
    assert spec.for_sample(enc).keys == tuple(needle)
    tokens = enc.input_ids[None]
    with torch.no_grad():
        with spec.applied(tiny_llama, sample=sample):
            by_label = tiny_llama(tokens)
        with knockout(tiny_llama, [(0, 1)], "edge", keys=needle):
            by_position = tiny_llama(tokens)
    assert torch.equal(by_label, by_position)


# -- errors and cleanup ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (([(0, 9)], "uniform"), {}, HeadIndexError, r"within a 2x4 model; got \(0, 9\)"),
        (([(5, 0), (0, 1)], "zero"), {}, HeadIndexError, r"within a 2x4 model; got \(5, 0\)"),
        (([(0, 1), (0, 1)], "zero"), {}, HeadIndexError, r"repeated: \[\(0, 1\)\]"),
        (([(0, -1)], "zero"), {}, HeadIndexError, "non-negative ints"),
        (([(0, 1)], "ablate"), {}, ValueError, "mode must be one of 'edge', 'uniform', 'zero', 'mean'; got 'ablate'"),
        (([(0, 1)], "edge"), {}, ValueError, "exactly one of keys="),
        (([(0, 1)], "edge"), {"keys": []}, SpanError, "no key positions"),
        (([(0, 1)], "uniform"), {"keys": [1]}, ValueError, "apply to mode='edge' only"),
        (([(0, 1)], "edge"), {"keys": [-1]}, SpanError, "positions >= 0"),
        (([(0, 1)], "zero"), {"queries": [5000]}, SpanError, "beyond the context of 2048"),
        (([(0, 1)], "edge"), {"span": "needle"}, SpanError, "pass sample="),
        (([(0, 1)], "mean"), {}, ValueError, "build the spec with mean_knockout"),
        (([(0, 1)], "uniform"), {"route": "fast"}, ValueError, "route must be 'auto', 'scores' or 'z'"),
    ],
)
def test_bad_knockout_input_raises_a_clear_error(args, kwargs, error, message):
    model = hs.load_model("tiny-llama")
    with pytest.raises(error, match=message):
        with knockout(model, *args, **kwargs):
            pass
    assert no_hooks_left(model)


def test_means_of_the_wrong_width_are_rejected():
    model = hs.load_model("tiny-llama")
    with pytest.raises(ModelMismatchError, match="d_head=16"):
        with Knockout([(0, 1)], "mean", means=torch.zeros(1, 8)).applied(model):
            pass


def test_key_position_beyond_the_input_raises_and_removes_hooks(tiny_llama):
    with pytest.raises(SpanError, match="blocks key position 40, but this forward pass has only 10 positions"):
        with torch.no_grad(), knockout(tiny_llama, [(1, 1)], "edge", keys=[3, 40]):
            tiny_llama(TOKENS)
    assert no_hooks_left(tiny_llama)


def test_knockout_removes_hooks_when_block_raises(tiny_llama):
    with pytest.raises(RuntimeError, match="boom"):
        with knockout(tiny_llama, [(0, 1), (1, 2)], "edge", keys=[1]):
            raise RuntimeError("boom")
    assert no_hooks_left(tiny_llama)
    with torch.no_grad():
        again = tiny_llama(TOKENS)
    assert torch.isfinite(again).all()


def test_every_head_form_names_the_same_knockout():
    import numpy as np

    model = hs.load_model("tiny-llama")
    forms = [[(1, 0), (0, 2)], ["L1H0", "L0H2"], ["1-0", [0, 2]], [np.array([1, 0]), (torch.tensor(0), np.int64(2))]]
    specs = {Knockout(heads, "zero") for heads in forms}
    assert specs == {Knockout(((0, 2), (1, 0)), "zero")}
    means = {mean_knockout(model, heads, [TOKENS[0]]) for heads in forms}
    assert len(means) == 1


def test_mean_ablation_can_leave_bos_and_the_needle_out_of_its_means(tiny_llama):
    zs, samples = [], []
    for code in ("4821", "97"):
        prompt = f"The river was quiet. The secret code is {code}. What is the secret code?"
        start = prompt.index(code)
        samples.append(Sample(prompt, f" {code}", spans=(Span("needle", start, start + len(code)),)))
        enc = samples[-1].encode(tiny_llama.tokenizer)
        (n0, n1), z = enc.spans["needle"][0], attn_acts(tiny_llama, [1], enc.input_ids[None])[1][1, "z"][0]
        zs.append(z[[p for p in range(1, len(z)) if not n0 <= p < n1]])
    by_hand = torch.cat(zs).mean(0)
    means = head_means(tiny_llama, samples, exclude=("bos", "needle"), layers=[1])
    assert_close(means[1], by_hand, short=True)
    assert_differs(head_means(tiny_llama, samples, layers=[1])[1], by_hand, short=True)  # nothing left out
    spec = mean_knockout(tiny_llama, ["L1H2"], samples, exclude=("bos", "needle"))
    assert_close(torch.tensor(spec.means[0]), by_hand[2], short=True)
    other = torch.tensor([0, 5, 9, 2, 77])
    z_other = attn_acts(tiny_llama, [1], other[None])[1][1, "z"][0]
    assert_close(head_means(tiny_llama, [other], exclude="bos")[1], z_other[1:].mean(0), short=True)
    with pytest.raises(SpanError, match="exclude='needle' names a span, but a reference input is Tensor"):
        head_means(tiny_llama, [other], exclude=("needle",))
