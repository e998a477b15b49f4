"""Activation patching: no-op and restoration identities, agreement with TransformerLens, the resumed sweep,
cross-model patching, attribution, the comparison experiment, results, and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from _close import assert_close, assert_differs

import headscope as hs
from headscope.errors import HeadIndexError, HeadscopeError, ModelError, ModelMismatchError
from headscope.hooks import attn_hook, capture
from headscope.models import load_folder, tiny_folder
from headscope.patching import (
    AnswerLogProb,
    LogitDiff,
    PatchingComparison,
    PatchingResult,
    _resume,
    attribution_patching,
    compare_patching,
    generation_score,
    head_patching_sweep,
    patch_heads,
    patched,
    record_heads,
)

CORRUPT_AT = 3


def _inputs(batch: int = 1, n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, 1000, (batch, n), generator=gen)
    clean[:, 0] = 0
    corrupt = clean.clone()
    corrupt[:, CORRUPT_AT] = (clean[:, CORRUPT_AT] + 17) % 1000
    return clean, corrupt


def _no_hooks(model) -> bool:
    return not any(hp.fwd_hooks or hp.bwd_hooks for hp in model.hook_dict.values())


def _all_heads(model) -> list[tuple[int, int]]:
    info = hs.model_info(model)
    return [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]


def _logit_scale(model, tokens) -> float:
    """The magnitude of ``model``'s logits on ``tokens``: a logit difference carries their rounding, not its own."""
    with torch.no_grad():
        return float(model(tokens).abs().max())


def _naive_sweep(model, clean, corrupt, metric, positions) -> torch.Tensor:
    """One full patched forward per head, through the public single-patch path."""
    info = hs.model_info(model)
    out = torch.zeros(info.shape)
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            logits = patch_heads(model, model, corrupt, [(layer, head)], positions=positions, source_tokens=clean)
            out[layer, head] = metric(logits).item()
    return out


# --- identities ---------------------------------------------------------------------------------


def test_patching_no_heads_is_an_exact_noop(tiny_llama):
    clean, corrupt = _inputs()
    with torch.no_grad():
        plain = tiny_llama(corrupt)
    logits = patch_heads(tiny_llama, tiny_llama, corrupt, [], source_tokens=clean)
    assert torch.equal(logits, plain)
    assert _no_hooks(tiny_llama)


def test_patching_a_model_with_itself_on_the_same_input_changes_nothing(tiny_llama):
    _, corrupt = _inputs()
    with torch.no_grad():
        plain = tiny_llama(corrupt)
    logits = patch_heads(tiny_llama, tiny_llama, corrupt, _all_heads(tiny_llama))
    assert_close(logits, plain, short=True)


def test_patching_every_head_restores_clean_logits_where_tokens_agree(tiny_llama):
    clean, corrupt = _inputs(batch=2)
    with torch.no_grad():
        clean_logits, corrupt_logits = tiny_llama(clean), tiny_llama(corrupt)
    logits = patch_heads(tiny_llama, tiny_llama, corrupt, _all_heads(tiny_llama), source_tokens=clean)
    after = slice(CORRUPT_AT + 1, None)
    assert_close(logits[:, after], clean_logits[:, after], short=True)
    # the corrupted position keeps its own embedding, so it is not restored
    assert_differs(logits[:, CORRUPT_AT], clean_logits[:, CORRUPT_AT], short=True)
    assert_differs(corrupt_logits[:, after], clean_logits[:, after], short=True)  # what an unpatched run gives


def test_patched_block_writes_the_source_head_only_at_the_chosen_positions(tiny_gpt2):
    clean, corrupt = _inputs()
    acts = record_heads(tiny_gpt2, clean, layers=[1])
    name = attn_hook(1, "z")
    with capture(tiny_gpt2, [name]) as plain:
        tiny_gpt2(corrupt)
    with patched(tiny_gpt2, acts, [(1, 2)], positions=[-2, -1]), capture(tiny_gpt2, [name]) as seen:
        tiny_gpt2(corrupt)
    z, src, orig = seen[name], acts[name], plain[name]
    torch.testing.assert_close(z[:, -2:, 2], src[:, -2:, 2], atol=0, rtol=0)
    torch.testing.assert_close(z[:, :-2], orig[:, :-2], atol=0, rtol=0)
    torch.testing.assert_close(z[:, :, [0, 1, 3]], orig[:, :, [0, 1, 3]], atol=0, rtol=0)
    assert _no_hooks(tiny_gpt2)


def test_patching_queries_under_grouped_query_attention_patches_only_that_query_head(tiny_llama):
    clean, corrupt = _inputs()
    acts = record_heads(tiny_llama, clean, layers=[0], sites=["q"])
    with patched(tiny_llama, acts, [(0, 1)], sites=["q"]), capture(tiny_llama, [attn_hook(0, "q")]) as seen:
        tiny_llama(corrupt)
    q = seen[attn_hook(0, "q")]
    torch.testing.assert_close(q[:, :, 1], acts[attn_hook(0, "q")][:, :, 1], atol=0, rtol=0)


def test_generation_under_patching_patches_the_prompt_only(tiny_llama):
    clean, corrupt = _inputs()
    heads = _all_heads(tiny_llama)
    acts = record_heads(tiny_llama, clean)
    expected = patch_heads(tiny_llama, tiny_llama, corrupt, heads, source_tokens=clean)[0, -1].argmax().item()
    tok = tiny_llama.tokenizer
    with patched(tiny_llama, acts, heads):
        hit = generation_score(tiny_llama, corrupt[0], lambda text: text == tok.decode([expected]), max_new_tokens=1)
    assert hit == 1.0
    assert _no_hooks(tiny_llama)


# --- the sweep ----------------------------------------------------------------------------------


def test_sweep_matches_transformer_lens_all_position_head_patching(tiny_llama):
    from transformer_lens.patching import get_act_patch_attn_head_out_all_pos

    clean, corrupt = _inputs(batch=2)
    metric = LogitDiff(5, 6)
    ours = head_patching_sweep(tiny_llama, clean, corrupt, metric, progress=False)
    _, cache = tiny_llama.run_with_cache(clean)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_act_patch_attn_head_out_all_pos(tiny_llama, corrupt, cache, metric)
    theirs = theirs if isinstance(theirs, torch.Tensor) else theirs.values
    assert ours.settings["resumed"]
    scale = _logit_scale(tiny_llama, corrupt)
    assert_close(ours.values, theirs.float().cpu(), short=True, scale=scale)
    # the comparison is not between two baselines: a sweep that patched nothing would give these
    assert_differs(torch.full_like(ours.values, ours.baseline), theirs.float().cpu(), short=True, scale=scale)
    assert _no_hooks(tiny_llama)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2", "tiny-gpt-neo"])
def test_last_position_sweep_reusing_earlier_keys_matches_full_patching(arch):
    model = hs.load_model(arch)
    clean, corrupt = _inputs(n=12)
    metric = LogitDiff(5, 6)
    positions = range(-3, 0)
    fast = head_patching_sweep(model, clean, corrupt, metric, positions=positions, progress=False)
    assert fast.settings["resumed"] and fast.settings["positions"] == [9, 10, 11]
    naive = _naive_sweep(model, clean, corrupt, metric, positions)
    assert_close(fast.values, naive, short=True, scale=_logit_scale(model, corrupt))


def test_last_position_sweep_on_every_model_kind(tiny_llama):
    clean, corrupt = _inputs(batch=2, n=9)
    metric = AnswerLogProb((int(corrupt[0, -2]), int(corrupt[0, -1])))
    fast = head_patching_sweep(tiny_llama, clean, corrupt, metric, positions=[-3, -2], progress=False)
    naive = _naive_sweep(tiny_llama, clean, corrupt, metric, [-3, -2])
    assert_close(fast.values, naive, short=True)  # log-probs: their own magnitude is the logits' scale


def test_sweep_falls_back_to_full_forwards_with_a_warning_when_blocks_cannot_be_resumed(monkeypatch):
    model = hs.load_model("tiny-gpt2")
    clean, corrupt = _inputs()
    metric = LogitDiff(5, 6)
    exact = head_patching_sweep(model, clean, corrupt, metric, positions=[-1], progress=False)
    monkeypatch.setattr(_resume.Recorded, "check", lambda self, start=0: False)
    with pytest.warns(UserWarning, match="full forwards"):
        slow = head_patching_sweep(model, clean, corrupt, metric, positions=[-1], heads_per_run=3, progress=False)
    assert not slow.settings["resumed"]
    assert_close(slow.values, exact.values, short=True, scale=_logit_scale(model, corrupt))


def test_sweep_limited_to_some_layers_leaves_the_others_nan():
    model = hs.load_model("tiny-llama")
    clean, corrupt = _inputs()
    result = head_patching_sweep(model, clean, corrupt, LogitDiff(5, 6), layers=[1], progress=False)
    assert torch.isnan(result.values[0]).all() and not torch.isnan(result.values[1]).any()


# --- across models ------------------------------------------------------------------------------


def test_cross_model_patching_between_two_seeds_of_one_config():
    target = load_folder(tiny_folder("llama", seed=0))
    twin = load_folder(tiny_folder("llama", seed=0))
    source = load_folder(tiny_folder("llama", seed=1))
    _, tokens = _inputs()
    heads = _all_heads(target)
    with torch.no_grad():
        own = target(tokens)
    # a twin with identical weights patches nothing away
    assert_close(patch_heads(target, twin, tokens, heads), own, short=True)
    # from another seed: every head of the target now carries the source's z
    names = [attn_hook(layer, "z") for layer in range(2)]
    with capture(source, names) as want:
        source(tokens)
    with patched(target, record_heads(source, tokens), heads), capture(target, names) as got:
        logits = target(tokens)
    for name in names:
        assert_close(got[name], want[name], short=True, msg=name)
    assert_differs(own, logits, short=True)  # the source's heads did change the target's logits
    assert_close(patch_heads(target, source, tokens, heads), logits, short=True)


@pytest.mark.parametrize(("change", "named"), [({"n_layers": 3}, "n_layers"), ({"d_model": 32}, "d_model")])
def test_patching_between_models_of_different_shapes_names_the_difference(change, named):
    target = hs.load_model("tiny-llama")
    other = load_folder(tiny_folder("llama", **change))
    _, tokens = _inputs()
    with pytest.raises(ModelMismatchError, match=named):
        patch_heads(target, other, tokens, [(0, 0)])
    assert _no_hooks(target) and _no_hooks(other)


def test_patching_between_models_with_different_tokenizers_is_refused():
    target, other = hs.load_model("tiny-llama"), hs.load_model("tiny-llama")
    from transformers import AutoTokenizer

    other.tokenizer = AutoTokenizer.from_pretrained(tiny_folder("llama"))
    other.tokenizer.add_tokens(["zzqq"])
    with pytest.raises(ModelMismatchError, match="tokenizer"):
        patch_heads(target, other, _inputs()[1], [(0, 0)])


# --- bad input ----------------------------------------------------------------------------------


def test_bad_heads_positions_and_lengths_raise_clear_errors_and_leave_no_hooks():
    model = hs.load_model("tiny-llama")
    clean, corrupt = _inputs()
    with pytest.raises(HeadIndexError, match=r"2x4 model; got \(5, 0\)"):
        patch_heads(model, model, corrupt, [(5, 0)], source_tokens=clean)
    with pytest.raises(HeadIndexError, match=r"positions must lie in \[-10, 10\).*\[10\]"):
        patch_heads(model, model, corrupt, [(0, 0)], positions=[10], source_tokens=clean)
    with pytest.raises(HeadscopeError, match="same length"):
        patch_heads(model, model, corrupt, [(0, 0)], source_tokens=clean[:, :-1])
    with pytest.raises(HeadscopeError, match="same shape"):
        head_patching_sweep(model, clean[:, :-1], corrupt, LogitDiff(1, 2), progress=False)
    with pytest.raises(HeadIndexError, match="layers must lie"):
        head_patching_sweep(model, clean, corrupt, LogitDiff(1, 2), layers=[2], progress=False)
    with pytest.raises(HeadscopeError, match="positions is empty"):
        head_patching_sweep(model, clean, corrupt, LogitDiff(1, 2), positions=[], progress=False)
    with pytest.raises(HeadscopeError, match=r"no blocks\.1\.attn\.hook_z"):
        with patched(model, record_heads(model, clean, layers=[0]), [(1, 0)]):
            pass
    assert _no_hooks(model)


def test_patched_block_removes_its_hooks_when_the_block_raises():
    model = hs.load_model("tiny-llama")
    acts = record_heads(model, _inputs()[0])
    with pytest.raises(RuntimeError, match="boom"):
        with patched(model, acts, [(0, 1), (1, 3)]):
            raise RuntimeError("boom")
    assert _no_hooks(model)


def test_patching_attention_patterns_is_refused_where_the_model_discards_pattern_edits():
    model = hs.load_model("tiny-gpt-neo")
    with pytest.raises(ModelError, match="discards edits of hook_pattern"):
        record_heads(model, _inputs()[0], sites=["pattern"])


def test_patching_attention_patterns_copies_the_source_pattern():
    model = hs.load_model("tiny-gpt2")
    clean, corrupt = _inputs()
    acts = record_heads(model, clean, layers=[1], sites=["pattern"])
    name = attn_hook(1, "pattern")
    with patched(model, acts, [(1, 0)], sites=["pattern"]), capture(model, [name]) as seen:
        model(corrupt)
    torch.testing.assert_close(seen[name][:, 0], acts[name][:, 0], atol=0, rtol=0)


# --- attribution --------------------------------------------------------------------------------


def test_attribution_patching_correlates_with_the_exact_sweep(tiny_llama):
    clean, corrupt = _inputs(batch=2)
    metric = LogitDiff(5, 6)
    exact = head_patching_sweep(tiny_llama, clean, corrupt, metric, progress=False)
    approx = attribution_patching(tiny_llama, clean, corrupt, metric)
    assert_close(
        approx.baseline, exact.baseline, dtype=torch.float32, short=True, scale=_logit_scale(tiny_llama, corrupt)
    )
    corr = torch.corrcoef(torch.stack([exact.effects().flatten(), approx.effects().flatten()]))[0, 1]
    assert corr > 0.8
    assert all(p.grad is None for p in tiny_llama.parameters())
    assert _no_hooks(tiny_llama)


# --- metrics and results ------------------------------------------------------------------------


def test_answer_logprob_equals_a_hand_computed_teacher_forced_sum():
    model = hs.load_model("tiny-gpt2")
    _, tokens = _inputs()
    answer = tokens[0, -3:].tolist()
    with torch.no_grad():
        logits = model(tokens)
    by_hand = sum(
        torch.log_softmax(logits[0, len(tokens[0]) - 4 + i], -1)[answer[i]].item() for i in range(len(answer))
    )
    assert_close(AnswerLogProb(tuple(answer))(logits).item(), by_hand, dtype=torch.float32, short=True)
    assert LogitDiff(3, 7, position=-2)(logits).item() == pytest.approx((logits[0, -2, 3] - logits[0, -2, 7]).item())


def test_patching_result_round_trips_through_save_and_load(tmp_path):
    model = hs.load_model("tiny-llama")
    clean, corrupt = _inputs()
    result = head_patching_sweep(model, clean, corrupt, LogitDiff(5, 6), positions=[-2, -1], progress=False)
    result.save(tmp_path / "r.json")
    back = PatchingResult.load(tmp_path / "r.json")
    assert back == result and torch.equal(back.values, result.values)
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "head", "label", "value", "effect"] and len(frame) == 8
    best, _ = result.top(1)[0]
    assert frame.loc[frame.effect.idxmax(), "label"] == f"L{best[0]}H{best[1]}"
    fig = result.plot()
    assert fig.data[0].zmid == 0 and fig.data[0].z.shape == (2, 4)


# --- the comparison experiment ------------------------------------------------------------------


def test_compare_patching_reports_shared_complement_and_random_sets(tmp_path):
    target = load_folder(tiny_folder("llama", seed=0))
    source = load_folder(tiny_folder("llama", seed=1))
    inputs = [_inputs(seed=s)[1] for s in range(2)]
    metric = LogitDiff(5, 6)
    shared = [(0, 1), (1, 2)]
    cmp = compare_patching(target, source, inputs, shared, metric, n_random=3, seed=4, progress=False)
    assert cmp.sets["shared"] == shared and len(cmp.sets["complement"]) == 6
    assert all(len(cmp.sets[f"random-{i}"]) == 2 and not set(cmp.sets[f"random-{i}"]) & set(shared) for i in range(3))
    want = sum(metric(patch_heads(target, source, x, shared)).item() for x in inputs) / 2
    scale = max(_logit_scale(target, x) for x in inputs)
    assert_close(cmp.values["shared"], want, dtype=torch.float32, short=True, scale=scale)
    with torch.no_grad():
        by_hand = sum(metric(source(x)).item() for x in inputs) / 2
    assert_close(cmp.values["source"], by_hand, dtype=torch.float32, short=True, scale=scale)
    frame = cmp.to_frame()
    assert set(frame.kind) == {"target", "source", "shared", "complement", "random"}
    assert frame.loc[frame.set == "source", "recovered"].item() == pytest.approx(1.0)
    cmp.save(tmp_path / "c.json")
    assert PatchingComparison.load(tmp_path / "c.json") == cmp
    assert cmp.plot().data
    with pytest.raises(HeadscopeError, match="shared_heads is empty"):
        compare_patching(target, source, inputs, [], metric, progress=False)
    with pytest.raises(HeadscopeError, match="no complement"):
        compare_patching(target, source, inputs, _all_heads(target), metric, progress=False)
    assert _no_hooks(target) and _no_hooks(source)


def test_compare_patching_scores_encoded_samples_by_answer_logprob(tokenizer):
    from headscope.tasks import Sample

    target = load_folder(tiny_folder("llama", seed=0))
    source = load_folder(tiny_folder("llama", seed=1))
    sample = Sample(prompt="The key is 4712. What is the key? Answer:", answer=" 4712").encode(tokenizer)
    cmp = compare_patching(target, source, [sample], [(1, 0)], n_random=1, progress=False)
    tokens = torch.cat([sample.input_ids, sample.answer_ids]).unsqueeze(0)
    with torch.no_grad():
        want = AnswerLogProb(tuple(sample.answer_ids.tolist()))(target(tokens)).item()
    assert cmp.metric == "answer_logprob"
    assert_close(cmp.values["target"], want, dtype=torch.float32, short=True)


# --- SmolLM2 ------------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_last_position_sweep_on_smollm2_matches_full_patching(smollm2, smollm2_tokenizer):
    # SmolLM2 writes " 4712" as " ", "4", "7", "1", "2": the prompt ends on the space, so the next token is a digit
    # (the metric once compared the space token with itself and was 0 for every head)
    text = "The secret code is 4712. " + "The river runs past the old mill and the village. " * 12
    clean = hs.to_tokens(smollm2, text + "What is the secret code? The secret code is ")
    corrupt = hs.to_tokens(smollm2, text.replace("4712", "9035") + "What is the secret code? The secret code is ")
    assert clean.shape == corrupt.shape
    (answer,), (distractor,) = smollm2_tokenizer.encode("4"), smollm2_tokenizer.encode("9")
    assert smollm2_tokenizer.decode(clean[0, -1]) == " " and answer != distractor
    metric = LogitDiff(answer, distractor)
    with torch.no_grad():
        clean_logits, corrupt_logits = smollm2(clean), smollm2(corrupt)
    scale = float(corrupt_logits.abs().max())  # a logit difference carries the rounding of the logits
    assert_differs(metric(corrupt_logits).item(), metric(clean_logits).item(), dtype=torch.float32, scale=scale)
    fast = head_patching_sweep(smollm2, clean, corrupt, metric, positions=[-1], layers=[20, 29], progress=False)
    assert fast.settings["resumed"]
    assert_close(fast.baseline, metric(corrupt_logits).item(), dtype=torch.float32, scale=scale)
    for head in [(20, 3), (29, 8)]:
        want = metric(patch_heads(smollm2, smollm2, corrupt, [head], positions=[-1], source_tokens=clean)).item()
        assert_close(fast.values[head].item(), want, dtype=torch.float32, scale=scale, msg=f"L{head[0]}H{head[1]}")
    computed = fast.values[[20, 29]]
    assert_differs(torch.full_like(computed, fast.baseline), computed, scale=scale)  # some head moves the metric


def test_patching_reads_head_labels_like_every_other_function():
    """``patched`` used to die with int('L') on "L1H0" while knockout accepted labels."""
    import numpy as np

    model = hs.load_model("tiny-llama")
    clean, corrupt = torch.tensor([[0, 5, 9, 7, 3]]), torch.tensor([[0, 6, 9, 7, 3]])
    acts = record_heads(model, clean)
    with torch.no_grad():
        with patched(model, acts, [(1, 0), (0, 2)]):
            expected = model(corrupt)
        for heads in (["L1H0", "L0H2"], ["1-0", (0, 2)], [np.array([1, 0]), torch.tensor([0, 2])]):
            with patched(model, acts, heads):
                assert torch.equal(model(corrupt), expected)
            assert torch.equal(patch_heads(model, model, corrupt, heads, source_tokens=clean), expected)
