"""A Hugging Face twin of a ``TransformerBridge``: the same parameter tensors, HF's own attention code.

The fused attention route runs attention through ``scaled_dot_product_attention`` and computes
only the few query rows an analysis reads. Two ways were open (issue 13):

1. temporarily replace the forward of the bridge's attention components, or
2. call a plain HF model that shares the bridge's parameters and pick the attention function
   through transformers' ``AttentionInterface``.

headscope takes the second. The bridge's attention forward (``PositionEmbeddingsAttentionBridge``
in TransformerLens 4.3) is a long per-architecture reimplementation (q/k norms, clamps, partial
rotary, sinks, caches) that differs between TransformerLens 3.9 and 4.3; replacing it would mean
copying it, version by version. HF's attention modules instead hand every attention function the
final post-rotary ``query [batch, head, query, d_head]`` and ``key/value [batch, kv_head, key,
d_head]``, identically for Llama, Mistral and Qwen2/3, so one small function covers them all and
HF's own cache serves generation. The twin is built on the meta device and then given the
bridge's tensors themselves (``assign``), so it costs no parameter memory and always sees the
bridge's current weights; it is built per call and dropped afterwards.

The twin runs :func:`~headscope.models._fused_attention.fused_attention`, and its attention
modules hold the bridge's :class:`~headscope.models._fused_attention.FusedState`: a knockout
active on the bridge's fused route (:func:`~headscope.models._fused_bridge.fused_bridge`) acts in
the twin too. What the twin does not do is fire the bridge's hooks, so :func:`twin_unavailable`
refuses it while any hook is attached (an eager knockout, a patch, a user's hook): callers then
run the bridge itself rather than skip those hooks silently.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch

from headscope.errors import ModelError
from headscope.models._fused_attention import FUSED, READER_KWARG, fused_state, register
from headscope.models._kinds import model_kind

__all__ = ["fused_unsupported", "hf_twin", "twin_unavailable", "user_hooks"]

_PROBED: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()


def fused_unsupported(model: Any) -> str | None:
    """Why ``model`` cannot take the fused route, or ``None`` when it can.

    The fused route runs wherever Hugging Face's attention modules hand their work to
    transformers' ``AttentionInterface``: Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3/4, OLMo 2,
    GPT-NeoX, GPT-2 and most decoders since. That is checked, not listed: on first use a twin of
    the model runs four tokens, and every layer must call the fused attention function (GPT-Neo's
    attention computes its own). Sliding windows arrive in the mask, soft-capping as an argument
    (those layers are computed a chunk of rows at a time, since sdpa cannot cap), partial rotary
    before the function; attention sinks are refused. The result is kept per model.

    >>> from headscope import load_model
    >>> fused_unsupported(load_model("tiny-llama")) is None
    True
    >>> fused_unsupported(load_model("tiny-gpt-neo"))[:65]
    'its attention modules (GPTNeoSelfAttention) compute attention the'
    """
    if model_kind(model) == "hooked":
        return (
            "HookedTransformer always computes attention eagerly in TransformerLens code; the fused route needs a "
            "TransformerBridge (headscope.load_model(name, kind='bridge'))"
        )
    if getattr(model, "compatibility_mode", False):
        return (
            "a bridge in compatibility mode runs processed (folded, centred) weights that a Hugging Face model "
            "cannot reproduce exactly; boot it without compatibility_mode for the fused route"
        )
    if model not in _PROBED:
        _PROBED[model] = _probe(model)
    return _PROBED[model]


class _Layers:
    """A stand-in row reader that only notes which layers called the fused attention function."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def read(self, layer: int, call: Any, edits: Any) -> None:
        self.seen.add(layer)


def _probe(model: Any) -> str | None:
    """Run four tokens through a twin of ``model``: every layer must call the fused attention function."""
    try:
        twin = _build_twin(model)
        seen = _Layers()
        tokens = torch.arange(1, 5, device=twin.device)[None] % twin.config.vocab_size
        with torch.no_grad():
            twin(tokens, use_cache=False, **{READER_KWARG: seen})
    except ModelError as err:
        return str(err)
    n_layers = len(model.blocks)
    if len(seen.seen) < n_layers:
        kind = type(model.blocks[min(set(range(n_layers)) - seen.seen)].attn.original_component).__name__
        return (
            f"its attention modules ({kind}) compute attention themselves instead of calling transformers' "
            "AttentionInterface"
        )
    return None


def user_hooks(model: Any) -> list[str]:
    """Names of the model's hook points that have hooks attached right now."""
    return [
        name
        for name, point in model.hook_dict.items()
        if getattr(point, "fwd_hooks", None) or getattr(point, "bwd_hooks", None) or point._forward_hooks
    ]


def twin_unavailable(model: Any) -> str | None:
    """Why a Hugging Face twin cannot stand in for ``model`` right now (``None`` when it can).

    On top of :func:`fused_unsupported`: the twin fires none of the bridge's hooks, so it is
    refused while any hook is attached.

    >>> from headscope import load_model, knockout
    >>> model = load_model("tiny-llama")
    >>> twin_unavailable(model) is None
    True
    >>> with knockout(model, [(0, 1)], attention="eager"):
    ...     print(twin_unavailable(model)[:58])
    hooks are attached to blocks.0.attn.hook_attn_scores, bloc
    """
    reason = fused_unsupported(model)
    hooked = user_hooks(model) if reason is None else []
    if hooked:
        shown = ", ".join(hooked[:3]) + (" ..." if len(hooked) > 3 else "")
        reason = f"hooks are attached to {shown}, and a twin fires none of the bridge's hooks"
    return reason


def hf_twin(model: Any) -> Any:
    """A Hugging Face ``*ForCausalLM`` that shares every parameter and buffer tensor of ``model``.

    It runs headscope's fused attention (sdpa plus the edits active on ``model``'s fused route).
    The config is copied, so the bridge's own config is left alone.

    >>> from headscope import load_model
    >>> bridge = load_model("tiny-llama")
    >>> twin = hf_twin(bridge)
    >>> twin.model.embed_tokens.weight is bridge.original_model.model.embed_tokens.weight
    True
    """
    reason = fused_unsupported(model)
    if reason is not None:
        raise ModelError(f"cannot build a Hugging Face twin of this model: {reason}")
    return _build_twin(model)


def _build_twin(model: Any) -> Any:
    original = model.original_model
    config = copy.deepcopy(original.config)
    with torch.device("meta"):
        twin = type(original)(config)
    sources = [*original.named_parameters(remove_duplicate=False), *original.named_buffers(remove_duplicate=False)]
    for name, tensor in sources:
        path, _, attr = name.replace("._original_component", "").rpartition(".")
        try:
            owner = twin.get_submodule(path)
        except AttributeError:
            continue  # a bridge alias (e.g. ``mlp.out`` for ``down_proj``) with no HF counterpart
        # Only slots the HF module really has: TransformerLens adds e.g. a zero ``lm_head`` bias buffer.
        if owner._parameters.get(attr) is not None:
            owner._parameters[attr] = tensor
        elif owner._buffers.get(attr) is not None:
            owner._buffers[attr] = tensor
    left = [n for n, t in (*twin.named_parameters(), *twin.named_buffers()) if t.is_meta]
    if left:
        raise ModelError(
            f"the bridge holds no tensor for {', '.join(left[:5])} of its {type(original).__name__}; "
            "the fused route cannot rebuild this model: use attention='eager'"
        )
    register()
    twin.set_attn_implementation(FUSED)
    state = fused_state(model)
    for module in twin.modules():
        if hasattr(module, "layer_idx"):  # what fused_attention receives as ``module``
            module.headscope_state = state
    return twin.eval()
