"""Turn a saved Hugging Face model folder into a TransformerLens model of either kind."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from headscope.errors import ModelError
from headscope.models._kinds import Kind, available_kinds, bridge_class
from headscope.models._placement import resolve_device, resolve_dtype


def load_folder(
    path: str | Path,
    *,
    kind: Kind = "bridge",
    compatibility_mode: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
) -> Any:
    """Boot a TransformerLens model from a folder holding a saved HF model and its tokenizer.

    ``kind="bridge"`` boots a ``TransformerBridge`` (TransformerLens 3.9 and 4.x), optionally in
    compatibility mode. ``kind="hooked"`` builds a ``HookedTransformer`` (3.x only) with
    TransformerLens's own weight conversion and *unprocessed* weights (no layer-norm folding or
    centring), so its attention patterns equal the HF model's. ``device`` and ``dtype`` take what
    :func:`~headscope.load_model` takes; Hugging Face reads the weights in ``dtype`` directly.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} holds no config.json: expected a folder written by save_pretrained")
    if kind not in available_kinds():
        raise ModelError(
            f"model kind {kind!r} is not available with this TransformerLens; choose one of {available_kinds()} "
            "(HookedTransformer was removed in TransformerLens 4.0)"
        )
    if kind == "bridge":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = bridge_class().boot_transformers(str(path), device=device, dtype=dtype)
        if compatibility_mode:
            model.enable_compatibility_mode()
        return model.eval()
    if compatibility_mode:
        raise ModelError("compatibility_mode applies to kind='bridge' only; a HookedTransformer needs none")
    return _hooked_from_folder(path, device=device, dtype=dtype)


def _hooked_from_folder(path: Path, *, device: str | torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    cfg = _hooked_config(hf_model.config, dtype=dtype, device=device)
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained import weight_conversions

    convert = {
        "LlamaForCausalLM": weight_conversions.convert_llama_weights,
        "GPT2LMHeadModel": weight_conversions.convert_gpt2_weights,
    }[cfg.original_architecture]
    model = HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")
    state = convert(hf_model, cfg)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    return model.to(device).eval()


def _hooked_rope_scaling(hf_config: Any, rope: dict[str, Any]) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Llama config's rotary scaling: Llama 3's NTK-by-parts, else none.

    Other scalings (linear, dynamic, yarn, ...) have no HookedTransformer counterpart, so they are
    refused rather than silently run as unscaled rotary.
    """
    scaling = dict(getattr(hf_config, "rope_scaling", None) or {}) | rope
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return {}
    if kind != "llama3":
        raise ModelError(
            f"kind='hooked' cannot apply this model's rotary scaling rope_type={kind!r} (HookedTransformer "
            "knows only Llama 3's); use kind='bridge', which runs Hugging Face's rotary"
        )
    return dict(
        use_NTK_by_parts_rope=True,
        NTK_by_parts_factor=float(scaling["factor"]),
        NTK_by_parts_low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        NTK_by_parts_high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        NTK_original_ctx_len=int(scaling.get("original_max_position_embeddings", hf_config.max_position_embeddings)),
    )


def _hooked_config(hf_config: Any, *, dtype: torch.dtype, device: str | torch.device) -> Any:
    from transformer_lens import HookedTransformerConfig

    arch = (hf_config.architectures or [""])[0]
    if arch == "LlamaForCausalLM":
        d_head = hf_config.hidden_size // hf_config.num_attention_heads
        rope = getattr(hf_config, "rope_parameters", None) or {}
        return HookedTransformerConfig(
            d_model=hf_config.hidden_size,
            d_head=d_head,
            n_heads=hf_config.num_attention_heads,
            n_key_value_heads=hf_config.num_key_value_heads,
            d_mlp=hf_config.intermediate_size,
            n_layers=hf_config.num_hidden_layers,
            n_ctx=hf_config.max_position_embeddings,
            d_vocab=hf_config.vocab_size,
            act_fn="silu",
            normalization_type="RMS",
            eps=hf_config.rms_norm_eps,
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            rotary_base=rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)),
            rotary_adjacent_pairs=False,
            gated_mlp=True,
            final_rms=True,
            original_architecture=arch,
            dtype=dtype,
            device=str(device),
            **_hooked_rope_scaling(hf_config, rope),
        )
    if arch == "GPT2LMHeadModel":
        return HookedTransformerConfig(
            d_model=hf_config.n_embd,
            d_head=hf_config.n_embd // hf_config.n_head,
            n_heads=hf_config.n_head,
            d_mlp=hf_config.n_inner or 4 * hf_config.n_embd,
            n_layers=hf_config.n_layer,
            n_ctx=hf_config.n_positions,
            d_vocab=hf_config.vocab_size,
            act_fn="gelu_new",
            normalization_type="LN",
            eps=hf_config.layer_norm_epsilon,
            positional_embedding_type="standard",
            original_architecture=arch,
            dtype=dtype,
            device=str(device),
        )
    raise ModelError(
        f"kind='hooked' supports Llama and GPT-2 architectures; this folder holds {arch or 'an unknown one'}. "
        "Use kind='bridge', which supports every architecture TransformerLens does."
    )
