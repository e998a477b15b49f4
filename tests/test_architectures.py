"""The architecture matrix: every decoder family, float32 and bfloat16, each route, against Hugging Face eager.

The models are tiny random-weight ones built from each family's real config
(:mod:`headscope.models._families`: rotary scaling, sliding windows shorter than the prompt,
soft-capping, q/k norms, fused projections, partial rotary, parallel residuals, local attention).
The reference is the same folder loaded by ``AutoModelForCausalLM`` with eager attention:
``output_attentions=True`` for detection, and for knockout and patching the same intervention made
inside the family's own eager attention function (:mod:`headscope.support._reference`, itself
checked here against plain eager and an output-projection hook).

The fused route is run wherever ``fused_unsupported(model)`` is ``None``; elsewhere the test checks
that ``attention="fused"`` is refused with that reason. So families the fused route learns are
picked up here without a change.

Tolerances (:func:`~headscope.support._checks.logit_tolerance`): float32 logits within 1e-5 of the
reference (relative, over all logits); bfloat16 within 5e-2 and within 0.15 of the intervention's
own effect. Top-1 keys must agree wherever HF's top-1 margin is clear; in bfloat16 the agreement
rate on rows whose float32 margin is clear is asserted and printed.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import headscope as hs
from headscope.ablation import MODES
from headscope.errors import ConfigError, ModelError
from headscope.models import available_kinds, tokenizer_of
from headscope.models._families import FAMILIES, WINDOW, family_folder, family_names
from headscope.models._fused import fused_unsupported
from headscope.models._fused_bridge import fused_sites
from headscope.patching import patch_heads, patched, record_heads
from headscope.retrieval import detect_retrieval_heads
from headscope.retrieval._routes import choose_route
from headscope.support._checks import (
    HEADS,
    MARGIN,
    corrupted,
    forced_tokens,
    hf_reads,
    knockout_specs,
    logit_tolerance,
    mass_tolerance,
    needle_of,
    probe_sample,
    reference_knockout,
    reference_patch,
    relative_error,
)
from headscope.support._reference import attention_modules, load_reference
from headscope.tasks import EncodedSample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CASES = [(family, dtype) for family in family_names() for dtype in DTYPES]
ROUTES = ("eager", "fused")
#: In bfloat16, the share of rows with a clear float32 margin (above ``FP32_CLEAR``) whose top-1 key must
#: survive the rounding.
BF16_AGREEMENT, FP32_CLEAR = 0.97, 5e-2


@dataclass
class Case:
    """One family in one dtype: the bridge, its HF eager reference and the probe prompt."""

    family: str
    dtype: torch.dtype
    model: Any
    reference: Any
    encoded: EncodedSample
    tokens: torch.Tensor  # [1, pos]: prompt + answer[:-1]
    answer_rows: torch.Tensor
    needle: torch.Tensor  # [pos] bool

    @property
    def fused_reason(self) -> str | None:
        return fused_unsupported(self.model)


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{d}" for f, d in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    family, dtype_name = request.param
    dtype = DTYPES[dtype_name]
    folder = family_folder(family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = hs.load_folder(folder, kind="bridge", dtype=dtype)
    encoded = probe_sample().encode(tokenizer_of(model))
    tokens, rows = forced_tokens(encoded)
    return Case(
        family, dtype, model, load_reference(folder, dtype), encoded, tokens, rows, needle_of(encoded, tokens.shape[1])
    )


@functools.cache
def fp32_reads(family: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HF eager top-1 keys, margins and needle masses in float32 (the bfloat16 cases' yardstick)."""
    from transformers import AutoTokenizer

    encoded = probe_sample().encode(AutoTokenizer.from_pretrained(str(family_folder(family))))
    tokens, _ = forced_tokens(encoded)
    reference = load_reference(family_folder(family), torch.float32)
    return hf_reads(reference, tokens, needle_of(encoded, tokens.shape[1]))


def route_or_refusal(case: Case, route: str) -> bool:
    """True when ``route`` runs on the case; for a fused route that cannot, check the refusal names the reason."""
    if route == "eager" or case.fused_reason is None:
        return True
    with pytest.raises(ModelError, match="cannot run on this model"):
        choose_route(case.model, "fused", 3)
    return False


def patch_route_or_refusal(case: Case, route: str) -> bool:
    """As :func:`route_or_refusal`; patching also needs ``hook_z`` to fire on the fused route (not GPT-2's)."""
    if not route_or_refusal(case, route):
        return False
    if route == "eager" or "z" in fused_sites(case.model):
        return True
    with pytest.raises(ConfigError, match="its hook does not fire on this model's fused route"):
        record_heads(case.model, case.tokens, attention=route)
    return False


# -- the probe itself -------------------------------------------------------------------------------------


def test_prompt_is_longer_than_every_window_and_the_needle_crosses_one(case: Case) -> None:
    (start, _), *_ = case.encoded.positions("needle")
    assert case.tokens.shape[1] > 2 * WINDOW + 8 and case.tokens.shape[1] <= 80
    assert case.answer_rows[0] - start > WINDOW  # answer rows see the needle only on full layers


def test_reference_without_edits_is_hf_eager_and_the_bridge(case: Case) -> None:
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(
        str(family_folder(case.family)), attn_implementation="eager", dtype=case.dtype
    ).eval()
    with torch.no_grad():
        expected = eager(case.tokens).logits
        assert torch.equal(case.reference(case.tokens).logits, expected)
        bridge = case.model(case.tokens)
    bound, _ = logit_tolerance(case.dtype)
    assert relative_error(bridge, expected) <= bound


def test_reference_zero_knockout_equals_zeroing_the_output_projection_input(case: Case) -> None:
    """Independent of the reference's own code path: a pre-hook on the output projection zeroes the heads' slices."""
    spec = knockout_specs(case.model, case.tokens, (20,))["zero"]
    d_head = case.model.cfg.d_head
    handles = []
    for layer, head in HEADS:
        projection = _output_projection(attention_modules(case.reference)[layer])

        def zero(module, args, head=head):
            x = args[0].clone()
            x[..., head * d_head : (head + 1) * d_head] = 0.0
            return (x, *args[1:])

        handles.append(projection.register_forward_pre_hook(zero))
    try:
        with torch.no_grad():
            expected = case.reference(case.tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    got = reference_knockout(case.reference, spec, case.tokens)
    assert relative_error(got, expected) <= logit_tolerance(case.dtype)[0]


def _output_projection(attention: Any) -> Any:
    for name in ("o_proj", "dense", "c_proj", "out_proj"):
        if hasattr(attention, name):
            return getattr(attention, name)
    raise AssertionError(f"no output projection on {type(attention).__name__}")


# -- detection ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_row_reads_equal_hf_eager_attentions(case: Case, route: str) -> None:
    """Top-1 key and needle mass of every query row, on the route's row readers, against HF's attentions."""
    if not route_or_refusal(case, route):
        return
    n_pos = case.tokens.shape[1]
    top1, margin, mass = hf_reads(case.reference, case.tokens, case.needle)
    chosen = choose_route(case.model, route, 3)
    with torch.no_grad(), chosen.session():
        _, reads = chosen.forward(
            case.tokens, torch.arange(n_pos)[None], case.needle[None], torch.ones_like(case.tokens)
        )
    got_top1, got_mass = reads.top1[:, 0], reads.mass[:, 0].float()  # type: ignore[union-attr]
    torch.testing.assert_close(got_mass, mass, rtol=0, atol=mass_tolerance(case.dtype))
    clear = margin > MARGIN[case.dtype]
    if case.dtype == torch.float32:
        assert clear.float().mean() > 0.9, "the probe's rows have clear top-1 margins"
        assert torch.equal(got_top1[clear], top1[clear])
        return
    # bfloat16: rounding compounds over the layers, differently on each route, so count agreements
    top1_32, margin_32, _ = fp32_reads(case.family)
    clear_32 = margin_32 > FP32_CLEAR
    same_dtype = float((got_top1[clear] == top1[clear]).float().mean())
    vs_fp32 = float((got_top1[clear_32] == top1_32[clear_32]).float().mean())
    print(
        f"\n{case.family} {route} bf16 top-1: {same_dtype:.1%} of {int(clear.sum())} rows equal HF bf16, "
        f"{vs_fp32:.1%} of {int(clear_32.sum())} rows equal HF fp32"
    )
    assert same_dtype >= BF16_AGREEMENT and vs_fp32 >= BF16_AGREEMENT


@pytest.mark.parametrize("route", ROUTES)
def test_detection_scores_equal_scores_from_hf_attentions(case: Case, route: str) -> None:
    """``detect_retrieval_heads``'s copy and mass scores against the same scores computed from HF's attentions."""
    if not route_or_refusal(case, route):
        return
    sample = probe_sample(late=True)  # the needle within a window of the answer rows: sliding layers copy too
    encoded = sample.encode(tokenizer_of(case.model))
    tokens, rows = forced_tokens(encoded)
    needle = needle_of(encoded, tokens.shape[1])
    top1, margin, mass = hf_reads(case.reference, tokens, needle)
    keys = top1[:, :, rows]
    hit = needle[keys] & (tokens[0][keys] == encoded.answer_ids)
    kw = dict(require_prediction=False, success=lambda s, out: True, progress=False, attention=route)
    copy = detect_retrieval_heads(case.model, [sample], score="copy", **kw).per_sample[0]
    got_mass = detect_retrieval_heads(case.model, [sample], score="mass", **kw).per_sample[0]
    clear = (margin[:, :, rows] > MARGIN[case.dtype]).all(-1)  # heads whose every answer row is clear
    expected_copy = hit.sum(-1).double() / int(needle.sum())
    assert hit.any(), "not vacuous: some heads copy needle tokens on the answer rows"
    assert torch.equal(copy[clear], expected_copy[clear])
    torch.testing.assert_close(got_mass, mass[:, :, rows].double().mean(-1), rtol=0, atol=mass_tolerance(case.dtype))


# -- knockout -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("route", ROUTES)
def test_knockout_equals_the_same_knockout_inside_hf_eager_attention(case: Case, route: str, mode: str) -> None:
    if not route_or_refusal(case, route):
        return
    (start, _), *_ = case.encoded.positions("needle")
    spec = knockout_specs(case.model, case.tokens, tuple(range(start, start + 8)))[mode]
    expected = reference_knockout(case.reference, spec, case.tokens)
    with torch.no_grad():
        clean = case.model(case.tokens)
        with spec.applied(case.model, attention=route):
            got = case.model(case.tokens)
    assert not any(point.fwd_hooks for point in case.model.hook_dict.values()), "no hook outlives the block"
    bound, effect_bound = logit_tolerance(case.dtype)
    effect = relative_error(expected, clean)
    assert effect > 1e-2 and relative_error(got, clean) > 1e-2, "the knockout changes the output"
    error = relative_error(got, expected)
    assert error <= bound and error <= effect_bound * effect, (error, effect)


@pytest.mark.parametrize("mode", MODES)
def test_knockout_routes_agree(case: Case, mode: str) -> None:
    if case.fused_reason is not None:
        with pytest.raises(ModelError, match="cannot run on this model"):
            with hs.knockout(case.model, HEADS, "zero", attention="fused"):
                pass
        return
    (start, _), *_ = case.encoded.positions("needle")
    spec = knockout_specs(case.model, case.tokens, tuple(range(start, start + 8)))[mode]
    outputs = {}
    with torch.no_grad():
        for route in ROUTES:
            with spec.applied(case.model, attention=route):
                outputs[route] = case.model(case.tokens)
        clean = case.model(case.tokens)
    bound, effect_bound = logit_tolerance(case.dtype)
    error = relative_error(outputs["fused"], outputs["eager"])
    assert error <= bound and error <= effect_bound * relative_error(outputs["eager"], clean)


# -- patching -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
def test_patching_every_head_from_the_clean_run_restores_the_clean_logits(case: Case, route: str) -> None:
    if not patch_route_or_refusal(case, route):
        return
    (start, _), *_ = case.encoded.positions("needle")
    corrupt = corrupted(case.tokens, tuple(range(start, start + 8)), case.model.cfg.d_vocab)
    same = (corrupt == case.tokens)[0]
    every = [(layer, head) for layer in range(3) for head in range(4)]
    with torch.no_grad():
        clean = case.model(case.tokens)
        broken = case.model(corrupt)
        acts = record_heads(case.model, case.tokens, attention=route)
        with patched(case.model, acts, every, attention=route):
            restored = case.model(corrupt)
    assert relative_error(broken[:, same], clean[:, same]) > 1e-2, "the corruption reaches the shared positions"
    assert relative_error(restored[:, same], clean[:, same]) <= logit_tolerance(case.dtype)[0]


@pytest.mark.parametrize("route", ROUTES)
def test_patch_heads_equals_hf_with_the_heads_output_replaced(case: Case, route: str) -> None:
    if not patch_route_or_refusal(case, route):
        return
    (start, _), *_ = case.encoded.positions("needle")
    corrupt = corrupted(case.tokens, tuple(range(start, start + 8)), case.model.cfg.d_vocab)
    heads = ((1, 0), (2, 1))
    got = patch_heads(case.model, case.model, corrupt, heads, source_tokens=case.tokens, attention=route)
    expected = reference_patch(case.reference, case.tokens, corrupt, heads)
    with torch.no_grad():
        broken = case.reference(corrupt).logits
    bound, effect_bound = logit_tolerance(case.dtype)
    effect = relative_error(expected, broken)
    error = relative_error(got, expected)
    assert effect > 1e-3 and error <= bound and error <= effect_bound * effect, (error, effect)


# -- HookedTransformer (TransformerLens 3.x) --------------------------------------------------------------

HOOKED = ["gpt2", "llama3"]  # llama3: its rotary scaling becomes HookedTransformer's NTK-by-parts


@pytest.mark.skipif("hooked" not in available_kinds(), reason="HookedTransformer was removed in TransformerLens 4")
@pytest.mark.parametrize("family", HOOKED)
def test_hooked_transformer_row_reads_equal_hf_eager(family: str) -> None:
    model = hs.load_folder(family_folder(family), kind="hooked")
    encoded = probe_sample().encode(tokenizer_of(model))
    tokens, _ = forced_tokens(encoded)
    needle = needle_of(encoded, tokens.shape[1])
    top1, margin, mass = fp32_reads(family)
    route = choose_route(model, "eager", 3)
    with torch.no_grad():
        _, reads = route.forward(tokens, torch.arange(tokens.shape[1])[None], needle[None], torch.ones_like(tokens))
    clear = margin > MARGIN[torch.float32]
    assert torch.equal(reads.top1[:, 0][clear], top1[clear])
    torch.testing.assert_close(reads.mass[:, 0], mass, rtol=0, atol=mass_tolerance(torch.float32))


# -- the families themselves ------------------------------------------------------------------------------


def test_family_folders_are_cached_and_deterministic() -> None:
    import json

    folder = family_folder("gemma2")
    assert folder == family_folder("gemma2")
    config = json.loads((folder / "config.json").read_text())
    assert config["layer_types"] == ["sliding_attention", "full_attention", "sliding_attention"]
    assert config["sliding_window"] == WINDOW and config["attn_logit_softcapping"] == 3.0
    with pytest.raises(hs.ConfigError, match="family must be one of llama3, mistral"):
        family_folder("llama-9")


def test_every_family_has_three_layers_and_four_query_heads() -> None:
    """``HEADS`` (one per layer) and the patching tests assume this shape."""
    for name, family in FAMILIES.items():
        config = family.config(1024, 0)
        assert (config.num_hidden_layers, config.num_attention_heads) == (3, 4), name


@pytest.mark.skipif("hooked" not in available_kinds(), reason="HookedTransformer was removed in TransformerLens 4")
def test_hooked_transformer_refuses_a_rotary_scaling_it_cannot_apply(tmp_path) -> None:
    """Linear rope scaling has no HookedTransformer counterpart: refused, not run as unscaled rotary."""
    import json
    import shutil

    folder = tmp_path / "linear"
    shutil.copytree(family_folder("llama3"), folder)
    config = json.loads((folder / "config.json").read_text())
    scaling = {"rope_type": "linear", "factor": 4.0}
    config.update(rope_scaling=scaling, rope_parameters={**config.get("rope_parameters", {}), **scaling})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"rope_type='linear'.*kind='bridge'"):
        hs.load_folder(folder, kind="hooked")
