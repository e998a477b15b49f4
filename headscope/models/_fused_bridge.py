r"""Run a bridge's attention layers through sdpa for the length of a ``with`` block, hooks and all.

Detection reads rows through a Hugging Face twin (:func:`headscope.models._fused.hf_twin`),
which fires no bridge hooks. Knockout and patching instead act *through* hooks and on whatever
forward the user's code runs (``model(tokens)``, cached decoding), so :func:`fused_bridge` keeps
the bridge and swaps only the forward of each attention component: it calls the Hugging Face
attention module the component wraps, whose projections are the bridge's own ``LinearBridge``
components, with the attention function chosen through ``AttentionInterface``. That function
(:func:`~headscope.models._fused_attention.fused_attention`, the same one the twin runs) computes
sdpa and hands the output to the layer's active
:class:`~headscope.models._fused_attention.LayerEdit`\ s, which may rewrite a few rows
(knockout) before ``o_proj``. The edits live in the model's
:class:`~headscope.models._fused_attention.FusedState`, so the twin that detection, generation
and training run honours them too, and blocks nest: a knockout entered inside another fused
block adds its edits to those already active.

**Hooks that fire:** ``hook_in``/``hook_out`` of attention and every block and residual hook;
``hook_q``, ``hook_k``, ``hook_v`` (the projections' ``hook_out``), ``hook_z`` (``o_proj``'s
``hook_in``); ``hook_rot_q`` and ``hook_rot_k`` on the post-rotary ``[batch, head, pos,
d_head]`` tensors, as on the eager bridge. **Hooks that cannot fire honestly:** no
``[query, key]`` matrix exists, so ``hook_attn_scores`` and ``hook_pattern`` (and ``hook_cos``,
``hook_sin``, ``hook_result``, the split-input hooks) never fire; ``hook_rot_k`` cannot fire on a
KV-cached step, whose new keys are already in Hugging Face's cache. A user hook on any of these
makes :func:`fused_bridge` raise :class:`ModelError` rather than skip it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from headscope.errors import ConfigError, ModelError
from headscope.models._fused import fused_unsupported
from headscope.models._fused_attention import FUSED, LAYER_KWARG, FusedState, LayerEdit, fused_state, register

__all__ = ["fused_active", "fused_bridge", "fused_sites", "unfired_hooks", "wants_fused"]


def wants_fused(model: Any, attention: str, *, eager_because: str | None = None) -> bool:
    """Whether ``attention`` (``"auto"``, ``"fused"``, ``"eager"``) runs :func:`fused_bridge` on ``model``.

    ``"auto"`` takes it wherever it can run; ``"fused"`` raises :class:`ModelError` saying why it
    cannot. ``eager_because`` names a caller's option that only the eager route honours (e.g.
    ``"route='z'"``); with it ``"auto"`` stays eager and ``"fused"`` raises :class:`ConfigError`.
    """
    if attention not in ("auto", "fused", "eager"):
        raise ConfigError(f"attention must be 'fused', 'eager' or 'auto'; got {attention!r}")
    if attention == "eager":
        return False
    if eager_because is not None:
        if attention == "fused":
            raise ConfigError(
                f"{eager_because} needs the eager attention route; it cannot combine with attention='fused'"
            )
        return False
    reason = fused_unsupported(model)
    if reason is None and unfired_hooks(model):
        reason = f"hooks are attached to {', '.join(unfired_hooks(model)[:3])}, which the fused route cannot fire"
    if reason is not None and attention == "fused":
        raise ModelError(f"attention='fused' cannot run on this model: {reason}. Use attention='eager' (or 'auto').")
    return reason is None


def fused_active(model: Any) -> bool:
    """Whether ``model``'s attention runs on the fused route right now (inside a :func:`fused_bridge` block)."""
    return any(isinstance(block.attn.__dict__.get("forward"), _Layer) for block in getattr(model, "blocks", ()))


def _fired(attn: Any) -> set[int]:
    """ids of the hook points of one attention component that the fused forward fires.

    The projections' hooks (``hook_q``/``k``/``v`` and ``hook_z``, the output projection's input)
    fire when Hugging Face's attention module calls the bridge's own projection component; models
    that project q, k and v jointly (Phi-3's ``qkv_proj``, GPT-NeoX, GPT-2's ``c_attn``) call a
    joint component instead, so their split hooks do not fire there.
    """
    points = [attn.hook_in, attn.hook_out]
    points += [getattr(attn, name) for name in ("hook_rot_q", "hook_rot_k") if hasattr(attn, name)]
    children = {id(child) for child in attn.original_component.children()}
    for sub in ("q", "k", "v", "o"):
        component = getattr(attn, sub, None)
        if component is not None and id(component) in children:
            points += [component.hook_in, component.hook_out]
    return {id(p) for p in points}


def fused_sites(model: Any) -> frozenset[str]:
    """Which of the per-head hook sites ``q``, ``k``, ``v``, ``z`` fire on ``model``'s fused route."""
    attn = model.blocks[0].attn
    fired = _fired(attn)
    return frozenset(site for site in ("q", "k", "v", "z") if id(getattr(attn, f"hook_{site}", None)) in fired)


def _has_hooks(point: Any) -> bool:
    return bool(getattr(point, "fwd_hooks", None) or getattr(point, "bwd_hooks", None) or point._forward_hooks)


def unfired_hooks(model: Any) -> list[str]:
    """Names of attention hook points that carry a hook but would not fire on the fused route."""
    fired = set().union(*(_fired(block.attn) for block in model.blocks))
    return [
        name
        for name, point in model.hook_dict.items()
        if ".attn." in name and id(point) not in fired and _has_hooks(point)
    ]


class _Layer:
    """The swapped forward of one attention component, and the hooks it fires inside attention."""

    def __init__(self, attn: Any, state: FusedState) -> None:
        self.attn, self.state = attn, state
        fired = _fired(attn)
        self.unfired = {
            name: point
            for name, point in attn.named_modules()
            if hasattr(point, "fwd_hooks") and id(point) not in fired and point is not attn
        }

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        hooked = [name for name, point in self.unfired.items() if _has_hooks(point)]
        if hooked:  # attached inside the block: fused_bridge checked the ones attached before
            raise ModelError(
                f"hooks are attached to {', '.join(hooked)} of {self.attn.name}, which the fused attention route "
                "cannot fire (it builds no [query, key] matrix); remove them or use attention='eager'. "
                "If a knockout or patch entered with attention='auto' or 'fused' is active, its attention runs on "
                "the fused route: read attention there with attention='auto' (detection), or enter it with "
                "attention='eager'"
            )
        hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        rest = args if "hidden_states" in kwargs or not args else args[1:]
        kwargs[LAYER_KWARG] = self
        out, _ = self.attn.original_component(self.attn.hook_in(hidden), *rest, **kwargs)
        return self.attn.hook_out(out), None

    def rotated(self, query: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
        """Fire ``hook_rot_q`` / ``hook_rot_k`` on the post-rotary tensors sdpa is about to read."""
        if hasattr(self.attn, "hook_rot_q"):
            query = self.attn.hook_rot_q(query)
        if hasattr(self.attn, "hook_rot_k"):
            if key.shape[-2] != query.shape[-2] and _has_hooks(self.attn.hook_rot_k):
                raise ModelError(
                    "a hook on hook_rot_k cannot see a KV-cached step's keys on the fused route (Hugging Face has "
                    "already cached them); decode without a cache, or use attention='eager'"
                )
            if key.shape[-2] == query.shape[-2]:
                key = self.attn.hook_rot_k(key)
        return query, key


@contextmanager
def fused_bridge(model: Any, edits: Mapping[int, LayerEdit] | None = None) -> Iterator[None]:
    """Inside the block, every attention layer of ``model`` runs sdpa; ``edits[layer]`` rewrites its output.

    Raises :class:`ModelError` when the model cannot take the fused route
    (:func:`~headscope.models._fused.fused_unsupported`) or when a user hook sits on a hook point
    the route cannot fire (see the module docstring). Blocks nest: an inner block adds its edits
    to the outer one's for its length. Everything is restored on exit.

    >>> import torch
    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> tokens = torch.tensor([[0, 5, 9, 11]])
    >>> with torch.no_grad(), fused_bridge(model):
    ...     fused = model(tokens)
    >>> with torch.no_grad():
    ...     eager = model(tokens)
    >>> torch.allclose(fused, eager, rtol=1e-4, atol=1e-5 * float(eager.abs().max()))
    True
    """
    reason = fused_unsupported(model)
    if reason is not None:
        raise ModelError(f"the fused attention route cannot run on this model: {reason}; use attention='eager'")
    hooked = unfired_hooks(model)
    if hooked:
        raise ModelError(
            f"hooks are attached to {', '.join(hooked[:3])}{' ...' if len(hooked) > 3 else ''}, which the fused "
            "attention route cannot fire (it builds no [query, key] matrix); remove them or use attention='eager'"
        )
    state = fused_state(model)
    with state.entered(dict(edits or {})):
        if fused_active(model):  # an outer block has swapped the forwards already
            yield
            return
        register()
        config = model.original_model.config
        before = config._attn_implementation
        attns = [block.attn for block in model.blocks]
        try:
            config._attn_implementation = FUSED
            for attn in attns:
                object.__setattr__(attn, "forward", _Layer(attn, state))  # nn.Module would intercept it
            yield
        finally:
            for attn in attns:
                attn.__dict__.pop("forward", None)
            config._attn_implementation = before
