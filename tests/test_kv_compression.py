"""KV-cache compression from a head set: the policy, the real compressed cache, the curve.

The compressed cache is checked against independent computations: TransformerLens's own eager
attention with the streaming heads' out-of-band scores set to -inf by a hook (no cache at all),
and, on families whose bridges compute attention in Hugging Face code, a hand-written eager
attention function over the whole sequence with the same band mask.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

import headscope as hs
from headscope.cli import main
from headscope.compare import LoadedHeads
from headscope.compression import (
    CompressedCache,
    CompressedDecoder,
    CompressionCurve,
    KVPolicy,
    generate_compressed,
    kept_positions,
)
from headscope.models._families import family_folder
from headscope.models._fused import hf_twin, user_hooks
from headscope.models._fused_attention import fused_state

SINK, WINDOW = 2, 5


@pytest.fixture(scope="module")
def llama():
    return hs.load_model("tiny-llama")


@pytest.fixture(params=[256, 3], ids=["one-block", "blocks-of-3"])
def rows(request, monkeypatch):
    """The prefill's streaming rows in one block (30 tokens), or in blocks of 3 rows (the long-prompt path)."""
    monkeypatch.setattr("headscope.compression._cache.ROWS", request.param)
    return request.param


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 1000, (1, n), generator=torch.Generator().manual_seed(seed))


def _greedy(step, prompt: torch.Tensor, n: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens and each step's last-row logits from ``step(tokens) -> logits``."""
    logits = step(prompt)[:, -1]
    tokens, rows = [], [logits]
    for _ in range(n):
        tokens.append(int(logits.argmax()))
        logits = step(torch.tensor([[tokens[-1]]]))[:, -1]
        rows.append(logits)
    return tokens, rows


def _cached(twin):
    """``step(tokens) -> logits`` of ``twin`` with a fresh uncompressed cache."""
    cache = DynamicCache()
    return lambda tokens: twin(tokens, use_cache=True, past_key_values=cache).logits


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """float32 agreement: sdpa and eager attention differ in the last bits, scaled by the logits."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def _mixed(model) -> KVPolicy:
    """L0 KV head 1 and L1 KV head 0 full, the other two streaming."""
    return hs.kv_policy(["L0H2", "L1H0"], model, sink=SINK, window=WINDOW)


# --- a 100%-full policy is the uncompressed model --------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_full_policy_equals_the_uncompressed_fused_route_bit_for_bit(family, llama):
    model = llama if family == "llama" else hs.load_model(str(family_folder(family)))
    policy = hs.kv_policy(torch.rand(hs.model_info(model).shape), model, full_fraction=1.0, window=WINDOW)
    assert policy.n_full == policy.full.numel()
    with torch.no_grad():
        compressed = _greedy(CompressedDecoder(model, policy), _tokens(40), 6)
        plain = _greedy(_cached(hf_twin(model)), _tokens(40), 6)
        bridge = model(torch.cat([_tokens(40), torch.tensor([compressed[0][:-1]])], dim=1))
    assert compressed[0] == plain[0]
    assert all(torch.equal(a, b) for a, b in zip(compressed[1], plain[1], strict=True))  # bitwise
    # ... and the bridge's own eager forward (TransformerLens attention) agrees to float32 rounding
    assert _close(torch.stack(compressed[1][:-1], 1)[0], bridge[0, 39:])


# --- streaming heads never read an evicted key ---------------------------------------------------------------


def _in_band(n_query: int, n_key: int, sink: int, window: int) -> torch.Tensor:
    """``[query, key]``: the last ``n_query`` of ``n_key`` positions see key ``k`` when it is a sink or recent."""
    offset = n_key - n_query
    return torch.tensor(
        [[k <= q + offset and (k < sink or q + offset - k < window) for k in range(n_key)] for q in range(n_query)]
    )


def _band_hooks(policy: KVPolicy, n: int):
    """TransformerLens hooks that hide, on streaming heads, every key outside sink + window (by hand)."""
    outside = ~_in_band(n, n, policy.sink, policy.window)  # [query, key]

    def hook_for(layer: int):
        heads = [h for h in range(policy.n_heads) if not policy.full[layer, h // policy.group]]

        def hide(scores, hook):
            scores = scores.clone()
            scores[:, heads] = scores[:, heads].masked_fill(outside, float("-inf"))
            return scores

        return hide

    return [(f"blocks.{layer}.attn.hook_attn_scores", hook_for(layer)) for layer in range(policy.shape[0])]


def test_streaming_heads_match_full_attention_with_evicted_keys_masked_by_hand(llama, rows):
    policy = _mixed(llama)
    assert hs.model_info(llama).score_edits  # the llama bridge honours score edits (the reference relies on it)
    prompt = _tokens(30)
    with torch.no_grad():
        tokens, rows = _greedy(CompressedDecoder(llama, policy), prompt, 5)
        sequence = torch.cat([prompt, torch.tensor([tokens[:-1]])], dim=1)
        with hs.attached(llama, _band_hooks(policy, sequence.shape[1])):
            reference = llama(sequence)[0, 29:]
        unmasked = llama(sequence)[0, 29:]
    assert _close(torch.stack(rows[:-1], 1)[0], reference)
    assert not _close(reference, unmasked)  # the band changes the logits, so the check has teeth
    assert user_hooks(llama) == []


def _hand_attention(policy: KVPolicy):
    """Eager attention over the whole sequence, the model's mask and, for streaming heads, the band."""

    def attend(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
        group = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
        scores = (query @ key.transpose(-1, -2)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        n_q, n_k = query.shape[2], key.shape[2]
        visible = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)[None, None]
        if attention_mask is not None:
            visible = visible & attention_mask.bool()
        streaming = torch.tensor([not policy.full[module.layer_idx, h // policy.group] for h in range(query.shape[1])])
        in_band = _in_band(n_q, n_k, policy.sink, policy.window)
        visible = visible & (~streaming[:, None, None] | in_band)
        weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        return (weights @ value).transpose(1, 2), None

    return attend


@pytest.mark.parametrize("family", ["mistral", "gemma2"])  # a model sliding window on top; soft-capped scores
def test_streaming_heads_match_a_hand_written_banded_attention(family, rows):
    model = hs.load_model(str(family_folder(family)))
    policy = hs.kv_policy(["L0H2", "L1H0", "L2H1"], model, sink=SINK, window=WINDOW)
    prompt = _tokens(30)
    reference = hf_twin(model)
    AttentionInterface.register("test_banded", _hand_attention(policy))
    ALL_MASK_ATTENTION_FUNCTIONS.register("test_banded", sdpa_mask)
    reference.set_attn_implementation("test_banded")
    with torch.no_grad():
        tokens, rows = _greedy(CompressedDecoder(model, policy), prompt, 5)
        sequence = torch.cat([prompt, torch.tensor([tokens[:-1]])], dim=1)
        expected = reference(sequence, use_cache=False).logits[0, 29:]
    assert _close(torch.stack(rows[:-1], 1)[0], expected)


def test_changing_an_evicted_token_changes_nothing_when_every_head_streams(llama, rows):
    policy = hs.kv_policy([], llama, sink=SINK, window=4)  # no KV head full
    prompt = _tokens(40)
    near = prompt.clone()
    near[0, 38] = (near[0, 38] + 1) % 1000  # inside the window: must matter
    far = prompt.clone()
    far[0, 10] = (far[0, 10] + 1) % 1000  # two layers of window 4 reach back 6 positions from the end: evicted
    with torch.no_grad():
        runs = [_greedy(CompressedDecoder(llama, policy), p, 4) for p in (prompt, far, near)]
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert not torch.equal(runs[0][1][0], runs[2][1][0])


def test_streaming_heads_hold_exactly_the_sink_and_window_keys(llama):
    policy = _mixed(llama)
    prompt = _tokens(23)
    decoder, cache = CompressedDecoder(llama, policy), DynamicCache()
    with torch.no_grad():
        decoder(prompt)
        hf_twin(llama)(prompt, use_cache=True, past_key_values=cache)
    kept = kept_positions(23, SINK, WINDOW)
    assert kept.tolist() == [0, 1, 18, 19, 20, 21, 22]
    for stored in decoder.cache.layers:
        assert stored.keys.shape[2] == 23 and stored.stream_keys.shape[2] == stored.stream_values.shape[2] == 7
    # layer 0 reads the embeddings, the same with or without compression: its keys must be the uncompressed ones
    stored, full_keys = decoder.cache.layers[0], cache.layers[0].keys
    assert torch.equal(stored.keys, full_keys[:, stored.full])
    assert torch.equal(stored.stream_keys, full_keys[:, stored.stream][:, :, kept])
    assert torch.equal(stored.stream_values, cache.layers[0].values[:, stored.stream][:, :, kept])


# --- memory: measured bytes equal the formula -----------------------------------------------------------------


@pytest.mark.parametrize("n", [3, SINK + WINDOW, 30])
def test_measured_cache_bytes_equal_the_formula(llama, n):
    for policy in (_mixed(llama), hs.kv_policy([], llama, sink=SINK, window=WINDOW)):
        decoder = CompressedDecoder(llama, policy)
        with torch.no_grad():
            decoder(_tokens(n))
            assert decoder.cache.nbytes() == policy.bytes(n).compressed
            decoder(torch.tensor([[7]]))
            decoder(torch.tensor([[8]]))
        assert decoder.cache.nbytes() == policy.bytes(n + 2).compressed
    info = hs.model_info(llama)
    # the formula itself: K and V, d_head floats of 4 bytes, per KV head and kept position
    assert policy.bytes(30).full == 2 * info.d_head * 4 * info.n_layers * info.n_kv_heads * 30
    assert policy.bytes(30).compressed == 2 * info.d_head * 4 * info.n_layers * info.n_kv_heads * (SINK + WINDOW)


def test_full_policy_holds_what_the_uncompressed_cache_holds(llama):
    policy = hs.kv_policy(torch.rand(2, 4), llama, full_fraction=1.0)
    decoder, cache = CompressedDecoder(llama, policy), DynamicCache()
    with torch.no_grad():
        decoder(_tokens(17))
        hf_twin(llama)(_tokens(17), use_cache=True, past_key_values=cache)
    held = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    assert decoder.cache.nbytes() == held == policy.bytes(17).full


# --- the policy ----------------------------------------------------------------------------------------------


def test_scores_pool_per_kv_head_by_max_unless_told_otherwise(llama):
    # KV head 0 of layer 0: one strong head (0.9) beside a zero; KV head 1: two middling heads (0.5 + 0.5)
    scores = torch.tensor([[0.9, 0.0, 0.5, 0.5], [0.1, 0.0, 0.2, 0.0]])
    assert hs.kv_policy(scores, llama, full_fraction=0.25).full_kv_heads() == [(0, 0)]
    assert hs.kv_policy(scores, llama, full_fraction=0.25, pool="sum").full_kv_heads() == [(0, 1)]
    assert hs.kv_policy(scores, llama, full_fraction=0.5).full_kv_heads() == [(0, 0), (0, 1)]
    assert torch.equal(hs.kv_policy(scores, llama, full_fraction=0.0).full, torch.zeros(2, 2, dtype=torch.bool))


def test_retrieval_scores_loaded_heads_and_head_sets_all_make_policies(llama):
    grid = torch.tensor([[0.0, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.7]], dtype=torch.float64)
    scores = hs.RetrievalScores(grid, 1, 1, "tiny", "teacher_forced")
    assert hs.kv_policy(scores, llama, full_fraction=0.5).full_kv_heads() == [(0, 0), (1, 1)]
    duo = LoadedHeads("duo", "t.tsv", (2, 4), ((1, 0), (1, 1)), None, torch.tensor([[0.2, 0.0], [1.0, 0.3]]), "")
    assert hs.kv_policy(duo, llama, full_fraction=0.25).full_kv_heads() == [(1, 0)]  # the file's KV values
    qrhead = LoadedHeads("qrhead", "1-3,0-0", (2, 4), ((1, 3), (0, 0)), None, None, "as listed")
    assert hs.kv_policy(qrhead, llama).full_kv_heads() == [(0, 0), (1, 1)]
    assert hs.kv_policy(qrhead, llama, full_fraction=0.25).full_kv_heads() == [(1, 1)]  # first listed first
    assert hs.kv_policy(hs.HeadSet.of(["L1H3"], hs.model_info(llama)), llama).query_heads().labels == ("L1H2", "L1H3")


def test_policy_round_trips_through_save_and_load(llama, tmp_path):
    policy = hs.kv_policy(torch.rand(2, 4), llama, full_fraction=0.5, sink=1, window=9)
    back = KVPolicy.load(policy.save(tmp_path / "policy.json"))
    assert torch.equal(back.full, policy.full) and torch.equal(back.kv_scores, policy.kv_scores)
    assert (back.sink, back.window, back.n_heads, back.d_head) == (1, 9, 4, 16)
    frame = policy.to_frame()
    assert list(frame.columns) == ["layer", "kv_head", "label", "score", "full"] and frame["full"].sum() == 2
    z = policy.plot().data[0].z  # per query head: 1 where it reads a full KV head
    assert z.shape == (2, 4) and (z == policy.full.repeat_interleave(2, dim=1).float().numpy()).all()


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [1.5, -0.1])
def test_fraction_outside_zero_one_is_a_config_error(llama, fraction):
    with pytest.raises(hs.ConfigError, match=r"full_fraction must lie in \[0, 1\]"):
        hs.kv_policy(torch.rand(2, 4), llama, full_fraction=fraction)
    with pytest.raises(hs.ConfigError, match=r"fractions must be shares of KV heads in \[0, 1\]"):
        hs.compression_curve(llama, [hs.Sample("a", " b")], fractions=[fraction], rankings={}, seeds=[0])


def test_bad_policies_say_what_was_wrong(llama):
    with pytest.raises(hs.HeadIndexError, match="within a 2x4 model"):
        hs.kv_policy(["L9H0"], llama)
    with pytest.raises(hs.HeadIndexError, match=r"\[layer, head\] grid of this 2x4 model"):
        hs.kv_policy(torch.rand(3, 4), llama, full_fraction=0.5)
    with pytest.raises(hs.ConfigError, match="scores need full_fraction="):
        hs.kv_policy(torch.rand(2, 4), llama)
    with pytest.raises(hs.ConfigError, match="only 1 are read by these heads"):
        hs.kv_policy(["L0H0"], llama, full_fraction=0.75)
    with pytest.raises(hs.ConfigError, match="window must be an int >= 1"):
        hs.kv_policy(["L0H0"], llama, window=0)
    with pytest.raises(hs.ConfigError, match="asks for 2 of 4 KV heads, but only 1 are scored"):  # NaN: never scored
        hs.kv_policy(torch.tensor([[0.1, 0.2, np.nan, np.nan], [np.nan] * 4]), llama, full_fraction=0.5)
    other = KVPolicy(torch.ones(3, 2, dtype=torch.bool), 4, 16)
    with pytest.raises(hs.ConfigError, match="the policy is for 3 layers x 2 KV heads"):
        generate_compressed(llama, hs.Sample("a", " b"), other)


def test_a_model_off_the_fused_route_is_refused_and_left_without_hooks():
    model = hs.load_model("tiny-gpt-neo")
    policy = hs.kv_policy(["L0H0"], model)  # a policy needs only the shape
    with pytest.raises(hs.ModelError, match=r"fused attention route.*GPTNeoSelfAttention"):
        generate_compressed(model, hs.Sample("a", " b"), policy)
    with pytest.raises(hs.ModelError, match="GPTNeoSelfAttention"):
        hs.compression_curve(model, [hs.Sample("a", " b")], fractions=[0.5], rankings={"r": ["L0H0"]}, seeds=[])
    assert user_hooks(model) == []


def test_a_knockout_and_a_compressed_cache_do_not_share_a_forward(llama):
    with hs.knockout(llama, [(0, 1)]):
        with pytest.raises(hs.ModelError, match="knockout or patch is active"):
            generate_compressed(llama, hs.Sample("a", " b"), _mixed(llama))
    assert fused_state(llama).edits == [] and user_hooks(llama) == []


def test_a_cache_no_attention_function_reads_is_caught(llama):
    twin = hf_twin(llama)
    twin.set_attn_implementation("sdpa")  # HF's own attention ignores the streaming heads' keys
    cache = CompressedCache(_mixed(llama))
    with torch.no_grad():
        twin(_tokens(8), use_cache=True, past_key_values=cache)
    with pytest.raises(hs.ModelError, match="no attention function read"):
        cache.check_read()


# --- the curve -----------------------------------------------------------------------------------------------


def test_curve_runs_each_distinct_set_once_and_round_trips(llama, tmp_path):
    samples = [hs.Sample("The code is 41. The code is", " 41"), hs.Sample("Ada likes tea. Ada likes", " tea")]
    ranking = torch.tensor([[0.0, 0.9, 0.1, 0.2], [0.3, 0.3, 0.0, 0.0]])

    def rule(sample, text):  # a random tiny model answers nothing: score a property of its text instead
        return "e" in text

    curve = hs.compression_curve(
        llama, samples, fractions=[0.0, 0.5, 1.0], rankings={"retrieval": ranking}, seeds=[0, 1],
        window=3, sink=1, max_new_tokens=3, success=rule, progress=False,
    )  # fmt: skip
    frame = curve.to_frame()
    assert list(frame["run"]) == ["retrieval"] * 3 + ["random"] * 6 + ["full attention"]
    assert curve.orders[0][:2] == ((0, 0), (1, 0))
    # at 0 every run streams every head and at 1 keeps every head: one decoding each, the same outcomes
    assert len({curve.success[r][0] for r in range(3)}) == 1
    assert all(curve.success[r][2] == curve.full_success for r in range(3))
    assert all(curve.cache_bytes[r][2] == curve.full_bytes for r in range(3))
    # the bytes are measured per sample after the prompt and match the policy formula
    n_prompt = [len(s.encode(llama.tokenizer).input_ids) for s in samples]
    policy = hs.kv_policy(ranking, llama, full_fraction=0.5, sink=1, window=3)
    assert list(curve.cache_bytes[0][1]) == [policy.bytes(n).compressed for n in n_prompt]
    # full attention's outcomes are those of the uncompressed twin's greedy answers
    twin, eos = hf_twin(llama), llama.tokenizer.eos_token_id
    for sample, outcome in zip(samples, curve.full_success, strict=True):
        with torch.no_grad():
            tokens, _ = _greedy(_cached(twin), sample.encode(llama.tokenizer).input_ids[None], 3)
        text = llama.tokenizer.decode(tokens[: tokens.index(eos) if eos in tokens else 3], skip_special_tokens=True)
        assert outcome == float(rule(sample, text))
    assert curve.rule == "rule" and len({o for run in curve.success for f in run for o in f}) == 2  # both outcomes
    assert CompressionCurve.load(curve.save(tmp_path / "curve.json")) == curve
    names = [trace.name for trace in curve.plot().data]
    assert "retrieval" in names and "full attention" in names and any("random" in n for n in names)


def test_versus_random_pairs_samples_and_gives_the_exact_sign_flip_p_value():
    def curve(success, seeds):
        n_runs, n_samples = len(success), len(success[0][0])
        return CompressionCurve(
            (0.5,), (2,), 4, ("retrieval",) + ("random",) * (n_runs - 1), seeds, ((),) * n_runs, success,
            (((1,) * n_samples,),) * n_runs, (1.0,) * n_samples, (2,) * n_samples, 4, 8, "max", "r", n_samples,
        )  # fmt: skip

    # per-sample differences against the random mean: 1, 0.5, 0.5, 0 -> 3 non-zero, |sum| 2 reached by 2 of 8 flips
    result = curve(((((1, 1, 1, 0)),), ((0, 0, 1, 0),), ((0, 1, 0, 0),)), (None, 0, 1)).versus_random(0)
    assert result.to_dict("records") == [
        {"fraction": 0.5, "accuracy": 0.75, "random": 0.25, "difference": 0.5, "p_value": 0.25, "p_min": 0.25}
    ]
    twenty = curve((((1,) * 20,), ((0,) * 20,)), (None, 0)).versus_random(0)  # equal differences: exact at any n
    assert twenty["p_value"].item() == 2 * 2**-20 == twenty["p_min"].item()
    mixed = curve((((1,) * 20,), ((0,) * 20,), ((1,) * 10 + (0,) * 10,)), (None, 0, 1)).versus_random(0)
    assert mixed["p_value"].item() == mixed["p_min"].item() == 1 / 20_001  # 0.5s and 1s: Monte Carlo beyond 16
    with pytest.raises(hs.ConfigError, match="no random KV-head sets"):
        curve((((1, 0),),), (None,)).versus_random(0)


# --- the command line ----------------------------------------------------------------------------------------

TINY = ["--model", "tiny-llama", "--lengths", "150", "--depths", "0", "100", "--window", "16", "--max-new-tokens", "3"]


def _scores_file(path):
    grid = torch.tensor([[0.0, 0.9, 0.1, 0.2], [0.3, 0.3, 0.0, 0.0]], dtype=torch.float64)
    return hs.RetrievalScores(grid, 1, 1, "tiny-llama", "teacher_forced").save(path)


def test_compress_writes_the_curve_csv_and_report_and_says_where_retrieval_stands(tmp_path, capsys):
    scores, out = _scores_file(tmp_path / "scores.json"), tmp_path / "out"
    argv = ["compress", *TINY, "--scores", str(scores), "--fractions", "0", "0.5", "--seeds", "0", "1", "--no-mass"]
    with pytest.warns(UserWarning, match="full attention answers none"):  # a random tiny model answers nothing
        assert main([*argv, "--out", str(out)]) == 0
    curve = CompressionCurve.load(out / "compression.json")
    assert curve.runs == ("retrieval", "random", "random") and curve.n_samples == 2 and curve.window == 16
    frame = pd.read_csv(out / "compression.csv")
    assert list(frame["kind"]) == ["ranking"] * 2 + ["random"] * 4 + ["full"]
    assert "Accuracy against the share of KV heads kept full" in (out / "report.html").read_text()
    printed = capsys.readouterr().out
    assert "KV memory ratio" in printed and "50% KV heads full: retrieval-chosen 0.000, within the random" in printed


def test_compress_into_a_detection_folder_adds_a_section_to_its_report(tmp_path):
    scores = _scores_file(tmp_path / "scores.json")
    argv = ["compress", *TINY, "--scores", str(scores), "--fractions", "0.5", "--seeds", "0", "--no-mass"]
    with pytest.warns(UserWarning):
        assert main([*argv, "--out", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "KV-cache compression: retrieval-chosen KV heads against random ones" in html
    assert "Every head, sorted by score" in html  # the detection run's report, not a separate one


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--fractions", "1.5"], "--fractions are shares of KV heads kept full, in [0, 1]; got 1.5"),
        (["--mass-seed", "1"], "--mass-seed 1 equals --seed: the needles that choose heads must not test them"),
        (["--mass-scores", "SCORES"], "holds copy scores, not attention mass"),
        (["--sink", "-1"], "sink must be an int >= 0"),
        (["--model", "tiny-gpt-neo"], "GPTNeoSelfAttention"),
    ],
)
def test_compress_rejects_bad_input_in_one_line_before_any_decoding(extra, words, tmp_path, capsys):
    scores = str(_scores_file(tmp_path / "scores.json"))
    extra = [scores if e == "SCORES" else e for e in extra]
    assert main(["compress", *TINY, "--scores", scores, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("headscope: error: ")]
    assert len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "out" / "mass_scores.json").exists()  # refused before the mass detection ran


# --- SmolLM2: one small curve ----------------------------------------------------------------------------------


@pytest.mark.smollm2
def test_a_small_curve_on_smollm2_measures_memory_and_keeps_full_attention_exact(smollm2):
    tokenizer = smollm2.tokenizer

    def needles(seed: int) -> list[hs.Sample]:
        grid = hs.needle_grid(tokenizer, lengths=[300], depths=[20, 80], n_samples=1, needle="templated", seed=seed)
        return [s.with_chat_template(tokenizer) for s in grid]

    chosen_on, tested_on = needles(0), needles(1)  # the samples that choose heads do not test them
    copy = hs.detect_retrieval_heads(smollm2, chosen_on)
    mass = hs.detect_retrieval_heads(smollm2, chosen_on, score="mass")
    curve = hs.compression_curve(
        smollm2, tested_on, fractions=[0.5, 1.0], rankings={"retrieval": copy, "mass": mass}, seeds=[0],
        window=32, max_new_tokens=12, progress=False,
    )  # fmt: skip
    frame = curve.to_frame()
    print(f"\nSmolLM2 compression curve: {frame[['run', 'fraction', 'accuracy', 'memory_ratio']].values.tolist()}")
    assert curve.full_success == (1.0, 1.0), "SmolLM2 copies both 300-token needles with the whole cache"
    assert all(curve.success[r][1] == curve.full_success for r in range(3))  # every KV head full: full attention
    # measured bytes: SmolLM2 keeps 30 x 3 KV heads of 64 float32 numbers, K and V
    n_prompt = [len(s.encode(tokenizer).input_ids) for s in tested_on]
    assert curve.full_bytes == tuple(30 * 3 * 64 * 4 * 2 * n for n in n_prompt)
    half = hs.kv_policy(copy, smollm2, full_fraction=0.5, window=32)
    assert half.n_full == 45 and list(curve.cache_bytes[0][0]) == [half.bytes(n).compressed for n in n_prompt]
    # a 100%-full policy decodes what the bridge itself decodes (TransformerLens attention, its own cache)
    every = hs.kv_policy(copy, smollm2, full_fraction=1.0)
    compressed = generate_compressed(smollm2, tested_on[0], every, max_new_tokens=12)
    assert compressed.text == hs.generate_answer(smollm2, tested_on[0], max_new_tokens=12)
