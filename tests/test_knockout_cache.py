"""Knockouts under a KV cache and with masks: equal to a full forward without a cache, or a ModelError.

Every mode on both routes is decoded step by step through headscope's cached decoder and compared,
step by step, with one full forward of the whole sequence under the same knockout. Uniform mode
on the ``z`` route must also see the model's own mask: padding and GPT-Neo's local windows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil

import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.ablation import Knockout, knockout, mean_knockout
from headscope.ablation._apply import uses_fused
from headscope.errors import ModelError
from headscope.hooks import attn_hook, capture
from headscope.models import load_folder, tiny_folder
from headscope.models._fused_bridge import fused_bridge
from headscope.retrieval import Decoder

PROMPT = [0, 17, 301, 52, 9, 640, 33]
HEADS = [(0, 1), (1, 0), (1, 3)]


def _spec(model, mode: str) -> Knockout:
    if mode == "mean":
        return mean_knockout(model, HEADS, [torch.tensor(PROMPT)])
    return Knockout(HEADS, mode, keys=[1, 2, 3] if mode == "edge" else None)  # type: ignore[arg-type]


def _cached_logits(
    model, spec: Knockout, route: str, n_steps: int, attention: str = "auto"
) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding with a KV cache under ``spec``: the generated tokens and the logits of every step."""
    step, rows = Decoder(model), []
    with torch.no_grad(), spec.applied(model, route=route, attention=attention):  # type: ignore[arg-type]
        logits = step(torch.tensor([PROMPT]))
        rows.append(logits[0, -1])
        tokens = []
        for _ in range(n_steps):
            tokens.append(int(rows[-1].argmax()))
            rows.append(step(torch.tensor([[tokens[-1]]]))[0, -1])
    return tokens, torch.stack(rows)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("route", ["scores", "z"])
@pytest.mark.parametrize("mode", ["edge", "uniform", "zero", "mean"])
def test_cached_decoding_under_a_knockout_equals_full_forwards_or_raises(arch, route, mode, model_kind):
    kind, compat = model_kind
    model = load_folder(tiny_folder(arch), kind=kind, compatibility_mode=compat)
    spec = _spec(model, mode)
    if route == "z" and mode in ("edge", "uniform"):
        with pytest.raises(ModelError, match=r"hook_v holds 1 value vectors \(a KV cache\)"):
            _cached_logits(model, spec, route, 3)
        return
    tokens, cached = _cached_logits(model, spec, route, 4)
    with torch.no_grad(), spec.applied(model, route=route):  # type: ignore[arg-type]
        full = model(torch.tensor([PROMPT + tokens]))[0, len(PROMPT) - 1 :]
    assert_close(cached, full, short=True)
    with torch.no_grad():
        plain = model(torch.tensor([PROMPT + tokens]))[0, len(PROMPT) - 1 :]
    assert_differs(plain, full, short=True)  # the knockout did act on the decoding steps


# -- uniform attention respects padding and local windows --------------------------------------


def test_uniform_z_route_averages_over_unpadded_keys_only(tiny_llama):
    tokens = torch.tensor([PROMPT, [5, 5, *PROMPT[:5]]])
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    group = hs.model_info(tiny_llama).kv_group
    with torch.no_grad(), knockout(tiny_llama, HEADS, "uniform", route="z"):
        with capture(tiny_llama, [attn_hook(layer, site) for layer in (0, 1) for site in ("v", "z")]) as acts:
            by_z = tiny_llama(tokens, attention_mask=mask)
    for layer, head in HEADS:
        v = acts[attn_hook(layer, "v")][1, :, head // group]
        z = acts[attn_hook(layer, "z")][1, :, head]
        for q in range(2, 7):  # real query rows of the padded sample: the mean of v over keys 2..q
            assert_close(z[q], v[2 : q + 1].mean(0), short=True)
            assert_differs(v[: q + 1].mean(0), z[q], short=True)  # what averaging over the padding gives
    with torch.no_grad(), knockout(tiny_llama, HEADS, "uniform", route="scores"):
        by_scores = tiny_llama(tokens, attention_mask=mask)
    assert_close(by_z[1, 2:], by_scores[1, 2:], short=True)
    assert_close(by_z[0], by_scores[0], short=True)


@pytest.fixture(scope="module")
def local_neo(tmp_path_factory):
    """A tiny GPT-Neo whose layer 1 attends within a local window of 4 tokens."""
    folder = tmp_path_factory.mktemp("neo") / "local"
    shutil.copytree(tiny_folder("gpt-neo"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(attention_types=[[["global", "local"], 1]], attention_layers=["global", "local"], window_size=4)
    (folder / "config.json").write_text(json.dumps(config))
    return load_folder(folder)


def test_uniform_knockout_on_a_local_attention_layer_averages_over_its_window(local_neo):
    """GPT-Neo's bridge fires hook_pattern after hook_z, so the z route takes the window from the config."""
    tokens = torch.tensor([PROMPT])
    with capture(local_neo, [attn_hook(1, "pattern")]) as acts:
        local_neo(tokens)
    assert bool((acts[attn_hook(1, "pattern")][0, 0, 6, :3] == 0).all())  # the window really is local
    with torch.no_grad(), knockout(local_neo, [(1, 2)], "uniform"):
        with capture(local_neo, [attn_hook(1, "v"), attn_hook(1, "z")]) as acts:
            local_neo(tokens)
    v, z = acts[attn_hook(1, "v")][0, :, 2], acts[attn_hook(1, "z")][0, :, 2]
    expected = torch.stack([v[max(0, row - 3) : row + 1].mean(0) for row in range(len(PROMPT))])
    assert_close(z, expected, short=True)
    with torch.no_grad(), knockout(local_neo, [(0, 2)], "uniform"):
        local_neo(tokens)  # layer 0 is global: no error


def test_uniform_knockout_of_a_padded_batch_raises_where_the_mask_is_not_visible(local_neo):
    tokens = torch.tensor([[5, 5, *PROMPT[:5]]])
    with torch.no_grad(), knockout(local_neo, [(0, 2)], "uniform"):
        with pytest.raises(ModelError, match=r"layer 0 masks key positions .*padding"):
            local_neo(tokens, attention_mask=torch.tensor([[0, 0, 1, 1, 1, 1, 1]]))


@pytest.mark.parametrize("mode", ["edge", "uniform", "zero", "mean"])
def test_gpt_neo_cached_decoding_under_a_knockout_equals_full_forwards_or_raises(mode):
    """GPT-Neo's bridge runs hook_z before hook_pattern and ignores score edits: only the z route exists."""
    model = hs.load_model("tiny-gpt-neo")
    spec = _spec(model, mode)
    if mode in ("edge", "uniform"):
        with pytest.raises(ModelError, match=r"new queries over .* keys: the 'z' route needs every key's value"):
            _cached_logits(model, spec, "auto", 3)
        return
    tokens, cached = _cached_logits(model, spec, "auto", 4)
    with torch.no_grad(), spec.applied(model):
        full = model(torch.tensor([PROMPT + tokens]))[0, len(PROMPT) - 1 :]
    assert_close(cached, full, short=True)
    with torch.no_grad():
        assert_differs(model(torch.tensor([PROMPT + tokens]))[0, len(PROMPT) - 1 :], full, short=True)


@pytest.mark.parametrize("attention", ["eager", "auto"])
@pytest.mark.parametrize("mode", ["edge", "uniform", "zero", "mean"])
def test_answer_row_knockout_under_a_cache_equals_full_forwards(tiny_llama, mode, attention):
    """positions='answer' in generation: the last prompt row and every generated row, with the prompt read intact."""
    spec = dataclasses.replace(_spec(tiny_llama, mode), queries=tuple(range(len(PROMPT) - 1, 2048)))
    tokens, cached = _cached_logits(tiny_llama, spec, "auto", 4, attention)
    with torch.no_grad():
        with spec.applied(tiny_llama, attention=attention):
            full = tiny_llama(torch.tensor([PROMPT + tokens]))
        with fused_bridge(tiny_llama) if uses_fused(tiny_llama, attention) else contextlib.nullcontext():
            plain = tiny_llama(torch.tensor([PROMPT + tokens]))
    assert_close(cached, full[0, len(PROMPT) - 1 :], short=True)
    assert torch.equal(full[0, : len(PROMPT) - 1], plain[0, : len(PROMPT) - 1])
    assert_differs(plain[0, len(PROMPT) - 1 :], full[0, len(PROMPT) - 1 :], short=True)
