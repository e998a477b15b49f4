"""Which parameters a fine-tuning run trains, by preset, regular expressions or a predicate.

Names are *parameter names*: ``model.named_parameters()`` names with the bridges'
``._original_component`` segments removed. On a ``HookedTransformer`` they are TransformerLens
names (``blocks.0.attn.W_Q``); on a ``TransformerBridge`` they are the Hugging Face names
(``model.layers.0.self_attn.q_proj.weight``, or ``transformer.h.0.attn.q.weight`` for GPT-2,
whose bridge splits the fused ``c_attn`` into ``q``, ``k`` and ``v``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from headscope._types import Choice
from headscope.errors import ConfigError, ModelError
from headscope.models import model_kind

Preset = Choice["attention", "attention_weights", "all"]
Train = Preset | Sequence[str] | Callable[[str], bool]
PRESETS: tuple[str, ...] = ("attention", "attention_weights", "all")

_KEY_BIASES = ("b_K", "_b_K", "k.bias", "k_proj.bias")


def parameter_name(raw: str) -> str:
    """``named_parameters()`` name without the bridges' ``._original_component`` segments."""
    return raw.replace("._original_component", "")


def named_parameters(model: Any) -> dict[str, nn.Parameter]:
    """Every parameter of ``model`` by parameter name (shared parameters once)."""
    model_kind(model)
    named: dict[str, nn.Parameter] = {}
    for raw, param in model.named_parameters():
        name = parameter_name(raw)
        if name in named:
            raise ModelError(f"two parameters share the name {name!r} once '._original_component' is removed")
        named[name] = param
    return named


def select_parameters(model: Any, train: Train = "attention") -> dict[str, nn.Parameter]:
    """The parameters a fine-tuning run trains, by parameter name, in model order.

    ``train`` is a preset, a list of regular expressions (``re.search`` on parameter names), or
    a predicate on parameter names. Presets:

    - ``"attention"``: every parameter of the attention layers that the forward pass uses: the
      query, key, value and output projections and their biases. Left out: the fused ``qkv``
      copy of GPT-2 bridges, which compute with their split ``q``/``k``/``v`` copies and give the
      fused one no gradient; and key biases of non-rotary models, whose gradient is zero because
      softmax ignores a score added to every key alike. A ``HookedTransformer`` built from Llama
      has (zero) attention biases its Hugging Face model lacks; they are included.
    - ``"attention_weights"``: the same without biases, the attention weights the seed paper
      trains (Llama and Mistral have no attention biases), and the same set on every model kind.
    - ``"all"``: everything but the fused ``qkv`` copies and, on a bridge, what the Hugging Face
      model has no slot for (TransformerLens 3.9 adds a zero ``lm_head.bias``); for training
      from scratch.

    >>> from headscope import load_model
    >>> list(select_parameters(load_model("tiny-llama"), "attention"))[:2]
    ['model.layers.0.self_attn.q_proj.weight', 'model.layers.0.self_attn.k_proj.weight']
    >>> list(select_parameters(load_model("tiny-llama"), [r"layers\\.1\\..*o_proj"]))
    ['model.layers.1.self_attn.o_proj.weight']
    """
    named = named_parameters(model)
    unused = _fused_copies(model)
    if isinstance(train, str):
        if train not in PRESETS:
            raise ConfigError(
                f"train must be one of the presets {', '.join(map(repr, PRESETS))}, a list of regular "
                f"expressions or a predicate on parameter names; got the string {train!r} "
                f"(for a regular expression, pass [{train!r}])"
            )
        if train == "all":
            extra = _no_slot(model, named)
            chosen = {n: p for n, p in named.items() if id(p) not in unused and n not in extra}
        else:
            attention = _attention_parameters(model) - unused
            chosen = {n: p for n, p in named.items() if id(p) in attention}
            if train == "attention_weights":
                chosen = {n: p for n, p in chosen.items() if not _is_bias(n)}
    elif callable(train):
        chosen = {n: p for n, p in named.items() if train(n)}
    else:
        chosen = _by_patterns(named, list(train))
    if not chosen:
        raise ModelError(f"train={train!r} selects no parameter of this model; its parameters are {_some(named)}")
    return chosen


def _by_patterns(named: dict[str, nn.Parameter], patterns: list[str]) -> dict[str, nn.Parameter]:
    if not patterns or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"train as a list must hold regular expressions (strings); got {patterns!r}")
    compiled = [re.compile(p) for p in patterns]
    missed = [p.pattern for p in compiled if not any(p.search(n) for n in named)]
    if missed:
        raise ModelError(f"the patterns {missed} match no parameter of this model; its parameters are {_some(named)}")
    return {n: p for n, p in named.items() if any(c.search(n) for c in compiled)}


def _is_bias(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.startswith(("b_", "_b_"))


def _some(named: dict[str, nn.Parameter], k: int = 12) -> str:
    names = list(named)
    shown = ", ".join(names[:k])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > k else shown


def _attention_modules(model: Any) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    modules = [getattr(block, "attn", None) for block in blocks] if blocks is not None else []
    if not modules or any(m is None for m in modules):
        raise ModelError("cannot find the attention layers: expected model.blocks[i].attn as in TransformerLens models")
    return modules


def _attention_parameters(model: Any) -> set[int]:
    rotary = getattr(model.cfg, "positional_embedding_type", None) == "rotary"
    ids = set()
    for module in _attention_modules(model):
        for raw, param in module.named_parameters():
            if not rotary and parameter_name(raw).endswith(_KEY_BIASES):
                continue
            ids.add(id(param))
    return ids


def _no_slot(model: Any, named: dict[str, nn.Parameter]) -> set[str]:
    """Names of bridge parameters added to a Hugging Face module that its class gives no such slot.

    TransformerLens 3.9 adds a zero ``bias`` to a bias-free ``lm_head``; the module exists in the
    Hugging Face class, the parameter does not. Parameters of modules the bridge itself adds (GPT-2's
    split ``q``/``k``/``v``) are not counted: they are what its forward computes with.
    """
    import torch

    if model_kind(model) != "bridge":
        return set()
    original = model.original_model
    with torch.device("meta"):
        fresh = type(original)(original.config)
    modules = dict(fresh.named_modules())
    left = set()
    for name in named:
        path, _, attr = name.rpartition(".")
        if path in modules and attr not in dict(modules[path].named_parameters(recurse=False)):
            left.add(name)
    return left


def _fused_copies(model: Any) -> set[int]:
    """Parameters of fused ``qkv`` layers that sit beside split ``q``/``k``/``v`` copies (GPT-2 bridges)."""
    blocks = getattr(model, "blocks", None) or []
    ids = set()
    for block in blocks:
        attn = getattr(block, "attn", None)
        if attn is not None and all(hasattr(attn, n) for n in ("q", "k", "v", "qkv")):
            fused = attn.qkv
            if isinstance(fused, nn.Module):
                ids.update(id(p) for p in fused.parameters())
    return ids
