"""Fine-tuning helpers: answer-only loss, parameter selection, the training loop, weight files."""

from __future__ import annotations

import math

import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.hooks import attached, attn_hook
from headscope.models import load_folder, tiny_folder, tiny_tokenizer
from headscope.tasks import EncodedSample, Sample
from headscope.training import (
    FinetuneResult,
    answer_loss,
    finetune,
    load_weights,
    save_weights,
    select_parameters,
)

WORDS = ("red", "blue", "green", "apple", "bread", "paris", "london", "honey")


def key_samples(n: int = 4) -> list[Sample]:
    return [
        Sample(f"The old key is {w}. Some city river. The old key is", f" {w}" + " river" * (i % 3))
        for i, w in enumerate(WORDS[:n])
    ]


def params_by_name(model) -> dict[str, torch.Tensor]:
    return {hs_name(n): p.detach().clone() for n, p in model.named_parameters()}


def hs_name(raw: str) -> str:
    return raw.replace("._original_component", "")


def no_hooks_left(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


# ---------------------------------------------------------------- answer loss


def test_answer_loss_matches_manual_log_softmax_gather(tiny_llama, tokenizer):
    samples = [*key_samples(3), Sample("Short one: blue", " green apple bread")]
    encoded = [s.encode(tokenizer) for s in samples]
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:
            seq = torch.cat([e.input_ids, e.answer_ids]).unsqueeze(0)
            logp = tiny_llama(seq)[0].log_softmax(-1)
            start = len(e.input_ids)
            for j, token in enumerate(e.answer_ids.tolist()):
                total -= logp[start + j - 1, token].item()
                count += 1
        loss = answer_loss(tiny_llama, encoded)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_answer_loss_accepts_samples_and_encodes_them_with_the_models_tokenizer(tiny_gpt2, tokenizer):
    samples = key_samples(2)
    with torch.no_grad():
        from_samples = answer_loss(tiny_gpt2, samples)
        from_encoded = answer_loss(tiny_gpt2, [s.encode(tokenizer) for s in samples])
    assert_close(from_samples, from_encoded, short=True)


def test_padding_in_a_batch_leaves_each_samples_loss_unchanged(tiny_llama, tokenizer):
    encoded = [s.encode(tokenizer) for s in (*key_samples(2), Sample("Tiny: red", " blue green bread apple"))]
    with torch.no_grad():
        alone = [answer_loss(tiny_llama, [e]).item() for e in encoded]
        together = answer_loss(tiny_llama, encoded).item()
    counts = [len(e.answer_ids) for e in encoded]
    assert len({len(e.input_ids) for e in encoded}) > 1
    assert together == pytest.approx(sum(lo * c for lo, c in zip(alone, counts, strict=True)) / sum(counts), rel=1e-5)


# ------------------------------------------------------------ parameter selection


def test_attention_preset_selects_query_key_value_and_output_only(tiny_llama):
    chosen = select_parameters(tiny_llama, "attention")
    weights = select_parameters(tiny_llama, "attention_weights")
    assert all(".attn." in n or ".self_attn." in n for n in chosen)
    assert not any("mlp" in n or "embed" in n or "ln" in n or "norm" in n for n in chosen)
    # 2 layers x (Q, K, V, O) weight matrices on every kind
    assert len(weights) == 8 and not any(n.endswith("bias") or ".b_" in n or "._b_" in n for n in weights)
    assert set(weights) <= set(chosen)
    for layer in range(2):
        assert sum(f".{layer}." in n for n in weights) == 4


def test_attention_preset_on_gpt2_skips_fused_qkv_copy_and_key_bias(tiny_gpt2):
    chosen = select_parameters(tiny_gpt2, "attention")
    assert not any("qkv" in n for n in chosen)
    assert not any(n.endswith(("k.bias", "b_K")) for n in chosen)
    assert any(n.endswith(("attn.q.weight", "attn.W_Q")) for n in chosen)
    assert not any("qkv" in n for n in select_parameters(tiny_gpt2, "all"))


def test_select_by_regex_and_predicate_use_parameter_names(tiny_llama):
    by_regex = select_parameters(tiny_llama, [r"\.1\..*(o_proj|W_O)"])
    assert len(by_regex) == 1
    (name,) = by_regex
    assert select_parameters(tiny_llama, lambda n: n == name) == by_regex


def test_selection_matching_nothing_lists_parameter_names(tiny_llama):
    with pytest.raises(hs.ModelError, match="match no parameter") as info:
        select_parameters(tiny_llama, ["no_such_weight"])
    some_name = hs_name(next(iter(tiny_llama.named_parameters()))[0])
    assert some_name in str(info.value) and "no_such_weight" in str(info.value)
    with pytest.raises(hs.ModelError, match="selects no parameter"):
        select_parameters(tiny_llama, lambda n: False)
    with pytest.raises(ValueError, match="presets") as info:
        select_parameters(tiny_llama, "attn")
    assert "['attn']" in str(info.value)


# ------------------------------------------------------------------ training


def test_finetune_lowers_loss_and_changes_only_selected_parameters(tiny_llama):
    data = key_samples(4)
    before = params_by_name(tiny_llama)
    with torch.no_grad():
        loss_before = answer_loss(tiny_llama, data).item()
    result = finetune(tiny_llama, data, lr=1e-2, steps=15, batch_size=4, progress=False)
    with torch.no_grad():
        loss_after = answer_loss(tiny_llama, data).item()
    after = params_by_name(tiny_llama)
    assert loss_after < loss_before - 0.5
    assert result.losses[0] == pytest.approx(loss_before, rel=1e-4)
    assert set(result.trained) == set(select_parameters(tiny_llama, "attention"))
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(result.trained)
    assert not tiny_llama.training
    assert all(p.requires_grad for p in tiny_llama.parameters())
    assert all(p.grad is None for p in tiny_llama.parameters())


def test_finetune_is_deterministic_under_a_seed(model_kind):
    kind, compat = model_kind
    runs = []
    for seed in (3, 3, 4):
        model = hs.load_model("tiny-gpt2", kind=kind, compatibility_mode=compat)
        result = finetune(model, key_samples(4), lr=1e-2, steps=4, batch_size=1, seed=seed, progress=False)
        runs.append((result.losses, params_by_name(model)))
    (l1, p1), (l2, p2), (l3, _) = runs
    assert l1 == l2
    assert all(torch.equal(p1[n], p2[n]) for n in p1)
    assert l1 != l3  # another seed draws another order


def test_grad_accum_equals_one_larger_batch():
    data = key_samples(4)
    big, small = hs.load_model("tiny-llama"), hs.load_model("tiny-llama")
    one = finetune(big, data, lr=1e-2, steps=1, batch_size=2, grad_accum=1, progress=False)
    two = finetune(small, data, lr=1e-2, steps=1, batch_size=1, grad_accum=2, progress=False)
    # the samples have different answer lengths, so only a token-weighted sum over micro-batches matches
    assert two.losses[0] == pytest.approx(one.losses[0], rel=1e-5)
    # AdamW's first step moves each trained weight by about lr = 1e-2 whatever the gradient's size, so a wrong
    # weighting of the micro-batches flips whole updates; the long tolerance is 1e-4 of each tensor's scale
    for (name, a), (_, b) in zip(big.named_parameters(), small.named_parameters(), strict=True):
        assert_close(b.detach(), a.detach(), msg=name)


def test_learning_rate_schedules_follow_warmup_then_decay():
    data = key_samples(2)
    lin = finetune(hs.load_model("tiny-llama"), data, lr=0.01, steps=6, warmup=2, schedule="linear", progress=False)
    assert lin.lrs == pytest.approx([0.005, 0.01, 0.01, 0.0075, 0.005, 0.0025])
    cos = finetune(hs.load_model("tiny-llama"), data, lr=0.01, steps=4, schedule="cosine", progress=False)
    assert cos.lrs == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
    const = finetune(hs.load_model("tiny-llama"), data, lr=0.01, steps=3, progress=False)
    assert const.lrs == pytest.approx([0.01] * 3)


def test_eval_fn_runs_before_training_every_n_steps_and_at_the_end(tokenizer):
    model = hs.load_model("tiny-llama")
    data = key_samples(4)
    with torch.no_grad():
        start = answer_loss(model, data).item()
    seen = []

    def evaluate(m, step):
        seen.append((step, m.training))
        with torch.no_grad():
            return {"loss": answer_loss(m, data).item()}

    result = finetune(model, data, lr=1e-2, steps=5, eval_every=2, eval_fn=evaluate, progress=False)
    assert [e["step"] for e in result.evals] == [0, 2, 4, 5]
    assert_close(result.evals[0]["loss"], start, dtype=torch.float32, short=True)
    assert result.evals[-1]["loss"] < start
    assert not any(training for _, training in seen)


def test_result_round_trips_through_save_and_load_and_plots(tmp_path):
    result = finetune(
        hs.load_model("tiny-llama"),
        key_samples(2),
        lr=1e-2,
        steps=3,
        eval_fn=lambda m, s: {"acc": s / 10},
        progress=False,
    )
    again = FinetuneResult.load(result.save(tmp_path / "run.json"))
    assert again == result
    frame = result.to_frame()
    assert list(frame.columns) == ["step", "metric", "value"]
    assert frame[frame.metric == "loss"]["value"].tolist() == list(result.losses)
    assert frame[frame.metric == "acc"]["step"].tolist() == [0, 3]
    fig = result.plot()
    assert list(fig.data[0].y) == list(result.losses)


# ------------------------------------------------------------ gradient check


def test_gradient_check_names_parameters_a_hook_cuts_off(tiny_llama):
    before = params_by_name(tiny_llama)

    def detach(act, hook):
        return act.detach()

    with attached(tiny_llama, [(attn_hook(1, "q"), detach)]):
        with pytest.raises(hs.ModelError, match="no gradient") as info:
            finetune(tiny_llama, key_samples(2), train="attention_weights", steps=2, progress=False)
    message = str(info.value)
    assert "1 of the 8" in message and "No update was made" in message
    (dead,) = [n for n in select_parameters(tiny_llama, "attention_weights") if n in message]
    assert ".1." in dead and ("q_proj" in dead or "W_Q" in dead)
    after = params_by_name(tiny_llama)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.requires_grad and p.grad is None for p in tiny_llama.parameters())
    assert no_hooks_left(tiny_llama)


def test_gradient_check_catches_the_fused_qkv_copy_of_gpt2_bridges():
    model = hs.load_model("tiny-gpt2", kind="bridge")
    with pytest.raises(hs.ModelError, match=r"qkv\.weight"):
        finetune(model, key_samples(2), train=[r"attn\.qkv"], steps=1, progress=False)


def test_gradient_check_fires_exactly_when_backward_leaves_a_parameter_without_gradient(tokenizer):
    """On TransformerLens 3.9 a compatibility-mode Llama bridge gives MLP weights no gradient."""
    model = hs.load_model("tiny-llama", compatibility_mode=True)
    data = key_samples(2)
    answer_loss(model, data).backward()
    dead = sorted(hs_name(n) for n, p in model.named_parameters() if p.grad is None or not p.grad.any())
    model.zero_grad(set_to_none=True)
    if dead:
        with pytest.raises(hs.ModelError, match="compatibility mode") as info:
            finetune(model, data, train="all", steps=1, progress=False)
        assert all(n in str(info.value) for n in dead[:5])
    else:
        finetune(model, data, train="all", steps=1, progress=False)


def test_attention_gradients_of_a_compat_llama_bridge_match_finite_differences():
    """A compatibility-mode bridge folds layer norms into q/k/v, but its attention gradients are right for that."""
    model = hs.load_model("tiny-llama", compatibility_mode=True, dtype=torch.float64)
    data = key_samples(2)
    answer_loss(model, data).backward()
    chosen = select_parameters(model, "attention")
    grads = {n: p.grad.clone() for n, p in chosen.items()}
    model.zero_grad(set_to_none=True)
    eps = 1e-4
    for name, param in chosen.items():
        direction = grads[name] / grads[name].norm()
        with torch.no_grad():
            param += eps * direction
            up = answer_loss(model, data).item()
            param -= 2 * eps * direction
            down = answer_loss(model, data).item()
            param += eps * direction
        assert (up - down) / (2 * eps) == pytest.approx(grads[name].norm().item(), rel=1e-2), name


# ------------------------------------------------------------ weight files


def test_trained_weights_round_trip_into_a_fresh_model(model_kind, tmp_path):
    kind, compat = model_kind
    tuned = hs.load_model("tiny-llama", kind=kind, compatibility_mode=compat)
    result = finetune(tuned, key_samples(3), lr=1e-2, steps=3, progress=False)
    path = save_weights(tuned, tmp_path / "attn.safetensors", result.trained)
    fresh = hs.load_model("tiny-llama", kind=kind, compatibility_mode=compat)
    assert load_weights(fresh, path) == result.trained
    tokens = torch.tensor([[1, 50, 60, 70, 80]])
    with torch.no_grad():
        assert torch.equal(fresh(tokens), tuned(tokens))
    base = hs.load_model("tiny-llama", kind=kind, compatibility_mode=compat)
    with torch.no_grad():
        assert_differs(base(tokens), tuned(tokens), short=True)  # the weights loaded are not the untrained ones


def test_load_weights_rejects_weights_of_another_model(tmp_path):
    model = hs.load_model("tiny-llama")
    path = save_weights(model, tmp_path / "w.safetensors", select_parameters(model, "attention"))
    wider = load_folder(tiny_folder("llama", d_model=32))
    before = params_by_name(wider)
    with pytest.raises(hs.ModelMismatchError, match=r"saved \(64, 64\), model \(32, 32\)"):
        load_weights(wider, path)
    assert all(torch.equal(before[n], p) for n, p in params_by_name(wider).items())
    with pytest.raises(hs.ModelMismatchError, match="compatibility_mode=True"):
        load_weights(hs.load_model("tiny-llama", compatibility_mode=True), path)
    with pytest.raises(hs.ModelMismatchError, match="not in this model"):
        load_weights(hs.load_model("tiny-gpt2"), path)
    with pytest.raises(hs.ModelMismatchError, match="no parameters named"):
        save_weights(model, tmp_path / "x.safetensors", ["blocks.9.attn.W_Q"])


# ------------------------------------------------------------ bad input


def test_bad_inputs_raise_clear_errors(tokenizer):
    model = hs.load_model("tiny-llama")
    with pytest.raises(ValueError, match="no samples"):
        finetune(model, [], progress=False)
    long = Sample("red blue " * 1500, " blue")
    with pytest.raises(hs.ContextLengthError, match=r"samples 1 .*context of 2048"):
        finetune(model, [key_samples(1)[0], long], progress=False)
    with pytest.raises(ValueError, match="empty answer"):
        answer_loss(model, [Sample("The key is", "")])
    other = tiny_tokenizer(vocab_size=600)
    with pytest.raises(hs.ModelMismatchError, match="tokenizer differs"):
        finetune(model, key_samples(2), other, progress=False)
    foreign = EncodedSample(torch.tensor([0, 5000]), torch.tensor([7]), {}, {})
    with pytest.raises(hs.ModelMismatchError, match="beyond the model's vocabulary of 1024"):
        answer_loss(model, [foreign])
    with pytest.raises(ValueError, match=r"lr must be positive.*schedule must be"):
        finetune(model, key_samples(2), lr=0, schedule="step", progress=False)


# ------------------------------------------------------------ from scratch


def test_tiny_model_from_scratch_learns_a_copy_task():
    """A freshly initialised 2-layer model, trained with train="all", learns to copy a word it saw."""
    import random

    tok = tiny_tokenizer()
    words = [w for w in (*WORDS, "tea", "salt", "wine", "mary", "bob", "tokyo") if len(tok(" " + w)["input_ids"]) == 1]
    rng = random.Random(0)

    def sample() -> Sample:
        word = rng.choice(words)
        before = " ".join(rng.choices(words, k=rng.randint(1, 6)))
        after = " ".join(rng.choices(words, k=rng.randint(2, 6)))
        return Sample(f"{before} key {word} . {after} key", f" {word}")

    train, held_out = [sample() for _ in range(256)], [sample() for _ in range(48)]
    model = load_folder(tiny_folder("llama", seed=1))
    with torch.no_grad():
        start = answer_loss(model, held_out).item()
    finetune(model, train, train="all", lr=3e-3, steps=300, batch_size=16, warmup=20, schedule="cosine", progress=False)
    hits = 0
    with torch.no_grad():
        end = answer_loss(model, held_out).item()
        for s in held_out:
            e = s.encode(tok)
            hits += int(model(e.input_ids[None])[0, -1].argmax() == e.answer_ids[0])
    assert start > math.log(len(words))
    assert end < 0.2
    assert hits >= 0.9 * len(held_out)


# ------------------------------------------------------------ SmolLM2


@pytest.mark.smollm2
def test_attention_only_finetuning_of_smollm2_lowers_answer_loss_and_leaves_mlps_alone(smollm2):
    data = [
        Sample(f"Note: the vault code is {code}. Question: what is the vault code? Answer:", f" {code}")
        for code in ("7391", "2846")
    ]
    attention = {n: p.detach().clone() for n, p in select_parameters(smollm2, "attention").items()}
    others = {hs_name(n): p.detach().clone() for n, p in smollm2.named_parameters() if hs_name(n) not in attention}
    try:
        with torch.no_grad():
            start = answer_loss(smollm2, data).item()
        result = finetune(smollm2, data, lr=1e-4, steps=2, batch_size=2, progress=False)
        with torch.no_grad():
            end = answer_loss(smollm2, data).item()
        now = {hs_name(n): p for n, p in smollm2.named_parameters()}
        assert end < start - 0.1
        assert set(result.trained) == set(attention) and len(attention) == 30 * 4
        assert all(not torch.equal(now[n], attention[n]) for n in attention)
        assert any("mlp" in n for n in others)
        assert all(torch.equal(now[n], others[n]) for n in others)
    finally:  # the fixture is shared by the session: put its weights back
        with torch.no_grad():
            for n, p in select_parameters(smollm2, "attention").items():
                p.copy_(attention[n])


def test_all_trains_what_the_hugging_face_model_has_and_runs_on_the_fused_route():
    """TransformerLens 3.9 adds a zero ``lm_head.bias`` that HF's Llama has no slot for: "all" leaves it out,
    so the fused twin (which has no such slot either) can train every selected weight."""
    from transformers import AutoModelForCausalLM

    from headscope.models import tiny_folder

    model = hs.load_model("tiny-llama")
    hf = AutoModelForCausalLM.from_pretrained(tiny_folder("llama"))
    hf_names = {name for name, _ in hf.named_parameters()}
    chosen = select_parameters(model, "all")
    assert set(chosen) == hf_names
    data = [hs.Sample(f"The key is {w}. The key is", f" {w}") for w in ("red", "blue")]
    result = finetune(model, data, train="all", lr=1e-3, steps=1, batch_size=2, attention="fused", progress=False)
    assert result.trained == tuple(chosen)
