"""Tiny random-weight models of the decoder families researchers use, built from their real configs.

Each :class:`Family` is a Hugging Face config class with the family's real structural options
(rotary scaling, sliding windows, soft-capping, q/k norms, fused projections, partial rotary,
parallel residuals, local attention), shrunk to a few layers of width 64: 4 query heads (2
key/value heads where the family uses grouped-query attention) of 16 dimensions, the vocabulary
of :func:`~headscope.models.tiny_tokenizer`. Windows are 16 tokens, so a prompt of 40 or more
tokens crosses them. Sizes that only make sense for a big model are shrunk with them, and said so
in :attr:`Family.what` (Llama 3's rotary scaling acts beyond 32 positions, not 8192; Gemma 2's
attention soft-cap binds at 3, not 50, because a tiny random model's scores never reach 50).

Weights are drawn from a seeded ``torch.Generator`` alone (:func:`_draw`), with a spread that makes
attention peaked, so top-1 keys have clear margins; norm scales and biases are drawn too, so a
route that skips one is caught. :func:`family_folder` saves each model with the tokenizer in the
headscope cache, keyed by family, :data:`VERSION` and seed.

>>> family_names()[:4]
('llama3', 'mistral', 'qwen2', 'qwen3')
>>> FAMILIES["gemma2"].label
'Gemma 2'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headscope.errors import ConfigError
from headscope.models._tiny import _cached_folder, tiny_tokenizer

__all__ = ["FAMILIES", "VERSION", "WINDOW", "Family", "family_folder", "family_names"]

#: Bump when a family's config or the weight draw changes: the cache key includes it.
VERSION = 1
#: Sliding / local attention window of every windowed family, in tokens.
WINDOW = 16
_WIDTH, _HEADS, _KV_HEADS, _D_HEAD, _LAYERS, _N_CTX = 64, 4, 2, 16, 3, 256
_SLIDING, _FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class Family:
    """One decoder family: its name, label, HF config class and what its tiny config exercises."""

    name: str
    label: str
    config_class: str
    what: str
    options: Callable[[], dict[str, Any]]

    def config(self, vocab_size: int, bos: int) -> Any:
        """The family's HF config at tiny size, for a vocabulary of ``vocab_size`` with BOS/EOS ``bos``."""
        import transformers

        cls = getattr(transformers, self.config_class)
        return cls(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=bos, pad_token_id=bos, **self.options())


def _llama_like(**extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=_WIDTH,
        intermediate_size=2 * _WIDTH,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        head_dim=_D_HEAD,
        max_position_embeddings=_N_CTX,
        **extra,
    )


def _llama3() -> dict[str, Any]:
    rope = dict(
        rope_type="llama3",
        rope_theta=500000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=32,
    )
    return _llama_like(rope_parameters=rope, tie_word_embeddings=True)


def _mistral() -> dict[str, Any]:
    return _llama_like(sliding_window=WINDOW)


def _qwen2() -> dict[str, Any]:
    return _llama_like(rope_parameters=dict(rope_type="default", rope_theta=1000000.0), use_sliding_window=False)


def _qwen3() -> dict[str, Any]:
    return _llama_like(rope_parameters=dict(rope_type="default", rope_theta=1000000.0), use_sliding_window=False)


def _gemma2() -> dict[str, Any]:
    return _llama_like(
        layer_types=[_SLIDING, _FULL, _SLIDING],
        sliding_window=WINDOW,
        query_pre_attn_scalar=32,
        attn_logit_softcapping=3.0,
        final_logit_softcapping=5.0,
    )


def _gemma3() -> dict[str, Any]:
    rope = {
        _SLIDING: dict(rope_type="default", rope_theta=10000.0),
        _FULL: dict(rope_type="linear", rope_theta=1000000.0, factor=8.0),
    }
    return _llama_like(
        layer_types=[_SLIDING, _SLIDING, _FULL], sliding_window=WINDOW, query_pre_attn_scalar=32, rope_parameters=rope
    )


def _phi3() -> dict[str, Any]:
    opts = _llama_like(sliding_window=WINDOW)
    del opts["head_dim"]  # Phi-3 derives it from the width
    return opts


def _phi4_mini() -> dict[str, Any]:
    opts = _llama_like(
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.75),
        tie_word_embeddings=True,
    )
    del opts["head_dim"]
    return opts


def _olmo2() -> dict[str, Any]:
    opts = _llama_like(rope_parameters=dict(rope_type="default", rope_theta=500000.0))
    del opts["head_dim"]
    return opts


def _gpt_neox() -> dict[str, Any]:
    return dict(
        hidden_size=_WIDTH,
        intermediate_size=4 * _WIDTH,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        max_position_embeddings=_N_CTX,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, partial_rotary_factor=0.25),
        use_parallel_residual=True,
    )


def _gpt2() -> dict[str, Any]:
    return dict(n_embd=_WIDTH, n_layer=_LAYERS, n_head=_HEADS, n_positions=_N_CTX)


def _gpt_neo() -> dict[str, Any]:
    return dict(
        hidden_size=_WIDTH,
        num_layers=_LAYERS,
        num_heads=_HEADS,
        attention_types=[[["local", "global"], 1], [["local"], 1]],
        window_size=WINDOW,
        max_position_embeddings=_N_CTX,
    )


_ALL = (
    Family("llama3", "Llama 3", "LlamaConfig", "rope_type llama3 (scaling beyond 32 positions), GQA", _llama3),
    Family("mistral", "Mistral", "MistralConfig", f"sliding window of {WINDOW} tokens on every layer, GQA", _mistral),
    Family("qwen2", "Qwen2", "Qwen2Config", "biased q/k/v projections, GQA", _qwen2),
    Family("qwen3", "Qwen3", "Qwen3Config", "per-head q/k RMS norms, GQA", _qwen3),
    Family(
        "gemma2",
        "Gemma 2",
        "Gemma2Config",
        f"attention soft-cap 3 and final soft-cap 5, sliding ({WINDOW}) / full / sliding layers, "
        "query_pre_attn_scalar 32 (not d_head), GQA",
        _gemma2,
    ),
    Family(
        "gemma3",
        "Gemma 3",
        "Gemma3TextConfig",
        f"sliding ({WINDOW}) / sliding / full layers with local rope base 1e4 and global base 1e6 (linear x8), "
        "q/k norms, query_pre_attn_scalar 32, GQA",
        _gemma3,
    ),
    Family("phi3", "Phi-3", "Phi3Config", f"fused qkv and gate/up projections, sliding window {WINDOW}, GQA", _phi3),
    Family("phi4-mini", "Phi-4-mini", "Phi3Config", "partial rotary (0.75 of d_head), fused qkv, GQA", _phi4_mini),
    Family("olmo2", "OLMo 2", "Olmo2Config", "q/k norms over the whole projection, norms after each sublayer", _olmo2),
    Family(
        "gpt-neox",
        "GPT-NeoX",
        "GPTNeoXConfig",
        "partial rotary (0.25 of d_head), parallel residual, fused qkv",
        _gpt_neox,
    ),
    Family("gpt2", "GPT-2", "GPT2Config", "learned positions, fused qkv (Conv1D)", _gpt2),
    Family(
        "gpt-neo", "GPT-Neo", "GPTNeoConfig", f"local ({WINDOW}) / global / local layers, unscaled scores", _gpt_neo
    ),
)
#: Every family by name, in the order of the README table.
FAMILIES: dict[str, Family] = {family.name: family for family in _ALL}


def family_names() -> tuple[str, ...]:
    """The families :func:`family_folder` builds, in table order."""
    return tuple(FAMILIES)


def family_folder(name: str, *, seed: int = 0) -> Path:
    """Cached HF folder of the tiny ``name`` model (see the module docstring) with :func:`tiny_tokenizer`.

    >>> import json
    >>> config = json.loads((family_folder("mistral") / "config.json").read_text())
    >>> config["model_type"], config["sliding_window"], config["num_key_value_heads"]
    ('mistral', 16, 2)
    """
    if name not in FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}; got {name!r}")
    family = FAMILIES[name]

    def build() -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM

        tokenizer = tiny_tokenizer()
        config = family.config(len(tokenizer), tokenizer.bos_token_id)
        with torch.random.fork_rng(devices=[]):  # HF's init draws from the global RNG: leave the caller's as it was
            model = AutoModelForCausalLM.from_config(config).eval()
        _draw(model, torch.Generator().manual_seed(seed))
        return model, tokenizer

    return _cached_folder(f"family-{name}", dict(family=name, version=VERSION, seed=seed), build)


#: Spread of every weight matrix: wide enough that attention is peaked in a 64-wide model.
_STD = 0.22
_QK_NORMS = ("q_norm", "k_norm")


def _draw(model: Any, generator: Any) -> None:
    """Every weight from ``generator``: matrices ~ N(0, _STD); biases ~ N(0, 0.02); norm scales near their init.

    A norm's scale is its HF initial value (1, or 0 where the family stores ``1 + w``) plus N(0, 0.1);
    q/k norms add 1 to it, so their queries and keys have twice unit RMS.
    """
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim >= 2:
                param.copy_(noise * _STD)
            elif name.endswith("bias"):
                param.copy_(noise * 0.02)
            else:  # q/k norms scaled x2: unit-RMS queries and keys alone would give flat attention
                param.copy_(param + noise * 0.1 + (1.0 if name.rsplit(".", 2)[-2] in _QK_NORMS else 0.0))
