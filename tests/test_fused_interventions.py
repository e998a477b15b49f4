"""Knockout, patching and hooks on the fused attention route, against the eager route.

Tiny random Llama, Qwen2 and Mistral bridges (rotary; 4 query heads over 2 or 1 key/value heads)
GPT-2 (fused knockout; its joint q/k/v projection fires no split hooks, so patching stays eager) and
GPT-Neo (not fused: ``"auto"`` falls back to eager, ``"fused"`` says why). Every equality is on
logits against the same call with ``attention="eager"``, to float32 rounding at the logits' scale
(``tests/_close.py``: short for the 3-layer tiny models, long for SmolLM2's 30 layers), and each is backed by
``assert_differs``: what the bug would give (the intact or the corrupted logits) lies many tolerances away.
"""

from __future__ import annotations

import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.ablation import Knockout, knockout, knockout_curve, mean_knockout
from headscope.errors import ConfigError, ModelError
from headscope.hooks import attached, attn_hook, capture
from headscope.models import tiny_folder
from headscope.models._fused_bridge import fused_bridge
from headscope.patching import LogitDiff, head_patching_sweep, patch_heads, patched, record_heads
from headscope.retrieval import Decoder
from headscope.tasks import Sample

ARCHS = {"llama": 2, "qwen2": 2, "mistral": 1}  # arch -> key/value heads (of 4 query heads)
TOKENS = torch.tensor([[0, 17, 301, 52, 9, 640, 33, 88, 5, 412, 71, 19, 230, 8]])
N = TOKENS.shape[1]
ANSWER = tuple(range(9, 2048))  # positions="answer": from the last prompt row on
HEADS = [(0, 0), (0, 3), (1, 1), (2, 2)]


@pytest.fixture(scope="module", params=list(ARCHS), ids=list(ARCHS))
def bridge(request: pytest.FixtureRequest):
    return hs.load_folder(tiny_folder(request.param, n_layers=3, n_heads=4, n_kv_heads=ARCHS[request.param]))


def spec_for(model, mode: str, queries) -> Knockout:
    if mode == "mean":
        return mean_knockout(model, HEADS, [TOKENS[0, :7], TOKENS[0, 3:]], queries=queries)
    keys = (2, 3, 4) if mode == "edge" else None
    return Knockout(tuple(HEADS), mode, keys=keys, queries=queries)  # type: ignore[arg-type]


def no_hooks(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def logits_under(model, spec: Knockout, attention: str, tokens=TOKENS, **kw) -> torch.Tensor:
    with torch.no_grad(), spec.applied(model, attention=attention):
        return model(tokens, **kw)


# -- knockout -------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["answer", "all"])
@pytest.mark.parametrize("mode", ["uniform", "zero", "mean", "edge"])
def test_fused_knockout_logits_equal_the_eager_route(bridge, mode: str, positions: str) -> None:
    spec = spec_for(bridge, mode, ANSWER if positions == "answer" else None)
    fused = logits_under(bridge, spec, "fused")
    eager = logits_under(bridge, spec, "eager")
    with torch.no_grad():
        plain = bridge(TOKENS)
    assert_close(fused, eager, short=True)
    assert_differs(plain, eager, short=True)  # a knockout the fused route ignored would leave these
    assert no_hooks(bridge)


def test_fused_knockout_never_builds_a_query_by_key_matrix(bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uniform at every row takes sdpa's causal fast path plus one running mean: no [query, key] tensor anywhere."""
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(query, key, value, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    logits_under(bridge, spec_for(bridge, "uniform", None), "fused")
    assert len(seen) == 3 and all(mask is None for mask in seen)


@pytest.mark.parametrize("mode", ["uniform", "edge", "zero"])
def test_fused_knockout_of_a_padded_batch_equals_the_eager_route(bridge, mode: str) -> None:
    tokens = torch.cat([TOKENS, TOKENS.flip(1)])
    mask = torch.ones_like(tokens)
    mask[1, -4:] = 0  # right padding in the second row
    spec = spec_for(bridge, mode, None)
    fused = logits_under(bridge, spec, "fused", tokens, attention_mask=mask)
    eager = logits_under(bridge, spec, "eager", tokens, attention_mask=mask)
    assert_close(fused[mask.bool()], eager[mask.bool()], short=True)


@pytest.mark.parametrize("mode", ["uniform", "edge", "zero", "mean"])
def test_fused_knockout_holds_under_kv_cached_decoding(bridge, mode: str) -> None:
    """Every cached step's logits equal a full eager forward under the same answer-row knockout."""
    spec = spec_for(bridge, mode, ANSWER)
    step, rows, tokens = Decoder(bridge), [], TOKENS[0, :10].tolist()
    with torch.no_grad(), spec.applied(bridge, attention="fused"):
        rows.append(step(torch.tensor([tokens]))[0, -1])
        for _ in range(4):
            tokens.append(int(rows[-1].argmax()))
            rows.append(step(torch.tensor([tokens[-1:]]))[0, -1])
    full = logits_under(bridge, spec, "eager", torch.tensor([tokens]))[0, 9:]
    assert_close(torch.stack(rows), full, short=True)
    with torch.no_grad():
        assert_differs(bridge(torch.tensor([tokens]))[0, 9:], full, short=True)  # the cache dropped the knockout


def test_uniform_knockout_is_the_running_mean_of_value_vectors(bridge) -> None:
    group = hs.model_info(bridge).kv_group
    with torch.no_grad(), knockout(bridge, [(1, 3)], "uniform", attention="fused"):
        with capture(bridge, [attn_hook(1, "v"), attn_hook(1, "z")]) as acts:
            bridge(TOKENS)
    v = acts[attn_hook(1, "v")][0, :, 3 // group]
    expected = v.cumsum(0) / torch.arange(1, N + 1)[:, None]
    assert_close(acts[attn_hook(1, "z")][0, :, 3], expected, short=True)


def test_knockout_curve_records_its_route_and_matches_the_eager_curve(bridge) -> None:
    samples = [Sample("red blue green gold river stone red blue", " green gold")]

    def score(model, sample):
        enc = sample.encode(model.tokenizer)
        with torch.no_grad():
            logits = model(torch.cat([enc.input_ids, enc.answer_ids[:-1]])[None])
        return logits[0, -1].log_softmax(-1)[enc.answer_ids[-1]].item()

    kw = dict(ks=[1, 3], seeds=[0], mode="uniform", progress=False)
    fused = knockout_curve(bridge, samples, HEADS, score, attention="fused", **kw)
    eager = knockout_curve(bridge, samples, HEADS, score, attention="eager", **kw)
    assert (fused.attention, eager.attention) == ("fused", "eager")
    assert_close(fused.top, eager.top, dtype=torch.float32, short=True)  # log-probs of float32 logits
    # one head of a random 3-layer model moves the answer log-prob by ~1e-3: over 5 tolerances, not 10
    assert_differs((eager.baseline,) * 2, eager.top, by=5, dtype=torch.float32, short=True)


# -- patching -------------------------------------------------------------------------------------


def test_fused_patching_equals_the_eager_route(bridge) -> None:
    clean, corrupt = TOKENS, TOKENS.clone()
    corrupt[0, 3] = 77
    kw = dict(positions=list(range(9, N)), source_tokens=clean)
    fused = patch_heads(bridge, bridge, corrupt, HEADS, attention="fused", **kw)
    eager = patch_heads(bridge, bridge, corrupt, HEADS, attention="eager", **kw)
    assert_close(fused, eager, short=True)
    with torch.no_grad():
        assert_differs(bridge(corrupt), eager, short=True)  # a patch the fused route ignored


@pytest.mark.parametrize("site", ["q", "k", "v"])
def test_fused_patching_of_q_k_v_equals_the_eager_route(bridge, site: str) -> None:
    corrupt = TOKENS.clone()
    corrupt[0, 3] = 77
    out = {}
    for attention in ("fused", "eager"):
        acts = record_heads(bridge, TOKENS, sites=(site,), attention=attention)
        with torch.no_grad(), patched(bridge, acts, HEADS, sites=(site,), attention=attention):
            out[attention] = bridge(corrupt)
    assert_close(out["fused"], out["eager"], short=True)
    with torch.no_grad():
        assert_differs(bridge(corrupt), out["eager"], short=True)


def test_fused_head_sweep_with_key_value_reuse_equals_the_eager_sweep(bridge) -> None:
    corrupt = TOKENS.clone()
    corrupt[0, 3] = 77
    metric = LogitDiff(int(TOKENS[0, -1]), 5)
    kw = dict(positions=range(-4, 0), progress=False)
    fused = head_patching_sweep(bridge, TOKENS[:, :-1], corrupt[:, :-1], metric, attention="fused", **kw)
    eager = head_patching_sweep(bridge, TOKENS[:, :-1], corrupt[:, :-1], metric, attention="eager", **kw)
    assert fused.settings["resumed"] and fused.settings["attention"] == "fused"
    with torch.no_grad():  # a logit difference carries the rounding of the logits it subtracts
        scale = float(bridge(corrupt[:, :-1]).abs().max())
    assert_close(fused.values, eager.values, short=True, scale=scale)
    assert_differs(torch.full_like(eager.values, eager.baseline), eager.values, short=True, scale=scale)


def test_patching_the_pattern_is_refused_on_the_fused_route(bridge) -> None:
    with pytest.raises(ConfigError, match="patching site 'pattern' needs the eager attention route"):
        record_heads(bridge, TOKENS, sites=("pattern",), attention="fused")


# -- hooks ----------------------------------------------------------------------------------------

FIRED = ["hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z"]


def test_fused_route_fires_every_hook_it_can_with_the_eager_activations(bridge) -> None:
    names = [attn_hook(1, site[5:]) for site in FIRED] + ["blocks.1.hook_resid_pre", "blocks.2.hook_resid_post"]
    with torch.no_grad(), capture(bridge, names) as eager:
        bridge(TOKENS)
    with torch.no_grad(), capture(bridge, names) as fused, fused_bridge(bridge):
        bridge(TOKENS)
    assert set(fused) == set(names)
    for name in names:
        assert_close(fused[name], eager[name], short=True, msg=name)


def test_a_hook_edit_on_the_fused_route_takes_effect_as_on_the_eager_route(bridge) -> None:
    def scale_rot_q(q, hook):
        return q * 2.0

    out = {}
    for attention in ("fused", "eager"):
        with torch.no_grad(), attached(bridge, [(attn_hook(0, "rot_q"), scale_rot_q)]):
            with fused_bridge(bridge) if attention == "fused" else torch.no_grad():
                out[attention] = bridge(TOKENS)
    assert_close(out["fused"], out["eager"], short=True)
    with torch.no_grad():
        assert_differs(bridge(TOKENS), out["eager"], short=True)  # an edit the fused route skipped


@pytest.mark.parametrize("site", ["pattern", "attn_scores"])
def test_a_pattern_or_score_hook_is_never_skipped_silently(bridge, site: str) -> None:
    with attached(bridge, [(attn_hook(1, site), lambda act, hook: None)]):
        with pytest.raises(ModelError, match=rf"hooks are attached to blocks\.1\.attn\.hook_{site}.*attention='eager'"):
            with knockout(bridge, HEADS, "zero", attention="fused"):
                pass
        with torch.no_grad(), knockout(bridge, HEADS, "zero") as spec:  # auto: eager, so the hook fires
            bridge(TOKENS)
    assert spec.mode == "zero" and no_hooks(bridge)


def test_a_pattern_hook_attached_inside_a_fused_block_raises_at_the_forward(bridge) -> None:
    with knockout(bridge, HEADS, "zero", attention="fused"):
        with capture(bridge, [attn_hook(0, "pattern")]), pytest.raises(ModelError, match="cannot fire"):
            bridge(TOKENS)


# -- choosing the route ---------------------------------------------------------------------------


def test_gpt_neo_falls_back_to_eager_under_auto_and_fused_says_why() -> None:
    model = hs.load_model("tiny-gpt-neo")
    spec = Knockout(((0, 1), (1, 2)), "uniform")
    with pytest.raises(ModelError, match=r"attention='fused' cannot run .*GPTNeoSelfAttention.*AttentionInterface"):
        logits_under(model, spec, "fused")
    torch.testing.assert_close(logits_under(model, spec, "auto"), logits_under(model, spec, "eager"), atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["uniform", "edge", "zero"])
def test_gpt2_knockout_runs_fused_and_equals_the_eager_route(mode: str) -> None:
    model = hs.load_model("tiny-gpt2")  # 2 layers of 4 heads
    spec = Knockout(((0, 1), (1, 2)), mode, keys=(2, 3, 4) if mode == "edge" else None)  # type: ignore[arg-type]
    fused = logits_under(model, spec, "fused")
    assert_close(fused, logits_under(model, spec, "eager"))
    assert_differs(bridge_logits(model), fused)


def test_gpt2_patching_stays_eager_because_its_split_hooks_do_not_fire_fused() -> None:
    """GPT-2 projects q, k and v jointly (c_attn) and calls c_proj itself: hook_q/k/v/z stay silent there."""
    model = hs.load_model("tiny-gpt2")
    source = record_heads(model, TOKENS.flip(1), layers=[1])
    with pytest.raises(ConfigError, match=r"patching site 'z' \(its hook does not fire on this model's fused route\)"):
        with patched(model, source, [(1, 1)], attention="fused"):
            pass
    with torch.no_grad(), patched(model, source, [(1, 1)], attention="auto"):
        auto = model(TOKENS)
    with torch.no_grad(), patched(model, source, [(1, 1)], attention="eager"):
        eager = model(TOKENS)
    assert torch.equal(auto, eager)
    assert_differs(bridge_logits(model), eager)


def bridge_logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS)


def test_an_eager_hook_route_cannot_combine_with_fused(bridge) -> None:
    with pytest.raises(ConfigError, match=r"route='z' needs the eager attention route"):
        with knockout(bridge, HEADS, "uniform", route="z", attention="fused"):
            pass
    with pytest.raises(ConfigError, match="attention must be 'fused', 'eager' or 'auto'; got 'flash'"):
        with knockout(bridge, HEADS, "uniform", attention="flash"):  # type: ignore[arg-type]
            pass


# -- SmolLM2 --------------------------------------------------------------------------------------


@pytest.mark.smollm2
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["uniform", "edge", "zero"])
def test_smollm2_fused_knockout_logits_equal_the_eager_route(smollm2, mode: str) -> None:
    """300 tokens, 20 heads over 10 layers, knocked out from row 250 on (edge blocks keys 100-139)."""
    tokens = torch.randint(200, 40000, (1, 300), generator=torch.Generator().manual_seed(0))
    heads = tuple((layer, head) for layer in range(0, 30, 3) for head in (0, 5))
    spec = Knockout(
        heads, mode, keys=tuple(range(100, 140)) if mode == "edge" else None, queries=tuple(range(250, 8192))
    )  # type: ignore[arg-type]
    fused = logits_under(smollm2, spec, "fused", tokens)[0, 250:]
    eager = logits_under(smollm2, spec, "eager", tokens)[0, 250:]
    assert_close(fused, eager)
    with torch.no_grad():
        assert_differs(smollm2(tokens)[0, 250:], eager)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_fused_patching_equals_the_eager_route(smollm2) -> None:
    clean = torch.randint(200, 40000, (1, 300), generator=torch.Generator().manual_seed(1))
    corrupt = clean.clone()
    corrupt[0, 100:110] = 17
    heads = [(layer, head) for layer in range(10, 30, 4) for head in (1, 7)]
    kw = dict(positions=list(range(290, 300)), source_tokens=clean)
    fused = patch_heads(smollm2, smollm2, corrupt, heads, attention="fused", **kw)
    eager = patch_heads(smollm2, smollm2, corrupt, heads, attention="eager", **kw)
    assert_close(fused, eager)  # 2 of 14.7M logits differed by 1.07e-4 (relative 9e-6) on a fresh machine
    with torch.no_grad():
        assert_differs(smollm2(corrupt), eager)
