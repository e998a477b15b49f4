"""Hook names and hook context managers that always clean up.

headscope speaks TransformerLens's hook vocabulary (``blocks.{l}.attn.hook_pattern``,
``hook_z``, ``hook_resid_pre``...), which is the same on ``HookedTransformer`` and on every
``TransformerBridge``. Hooks are attached only inside :func:`attached`, which removes exactly
the hooks it added when the block ends, even when it raises, and leaves the user's own hooks
alone (unlike ``model.hooks()``, which resets every hook on exit).

Hook functions follow TransformerLens: ``fn(activation, hook) -> new activation or None``.
On a bridge ``hook.name`` may differ from the name you registered, so capture the name in a
closure if the function needs it.

This is the bottom layer: it imports nothing from :mod:`headscope.models` (``tests/test_hooks_imports.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from headscope._kv_alias import bridge_cache_names
from headscope.errors import ModelError

HookFn = Callable[[Tensor, Any], "Tensor | None"]

__all__ = ["HookFn", "attached", "attn_hook", "block_hook", "capture"]


def attn_hook(layer: int, site: str) -> str:
    """Name of an attention hook: ``attn_hook(3, "pattern") == "blocks.3.attn.hook_pattern"``."""
    return f"blocks.{layer}.attn.hook_{site}"


def block_hook(layer: int, site: str) -> str:
    """Name of a residual-stream hook: ``block_hook(0, "resid_pre") == "blocks.0.hook_resid_pre"``."""
    return f"blocks.{layer}.hook_{site}"


def _hook_points(model: Any, names: Iterable[str]) -> dict[str, Any]:
    points = getattr(model, "hook_dict", None)
    if points is None:
        raise ModelError(
            "expected a TransformerLens model (HookedTransformer or TransformerBridge), which has hook points; "
            f"got {type(model).__module__}.{type(model).__name__}. Load one with headscope.load_model(name_or_path)"
        )
    names = list(names)
    missing = sorted({n for n in names if n not in points})
    if missing:
        raise ModelError(f"the model has no hook point named {', '.join(missing)}")
    return {n: points[n] for n in names}


@contextmanager
def attached(
    model: Any,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    bwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> Iterator[None]:
    """Attach forward (and backward) hooks for the duration of a ``with`` block.

    Every name is checked before anything is attached; the hooks are removed in ``finally``. While
    they are attached, a bridge's attention also finds a KV cache that transformers 5.24+ passes as
    ``cache=`` (see :func:`headscope._kv_alias.bridge_cache_names`), so cached generation inside
    a knockout or patching block works on every supported release.

    >>> import torch
    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> seen = []
    >>> with attached(model, [("blocks.0.attn.hook_pattern", lambda p, hook: seen.append(p.shape))]):
    ...     _ = model(torch.tensor([[0, 5, 9]]))
    >>> seen
    [torch.Size([1, 4, 3, 3])]
    """
    points = _hook_points(model, [n for n, _ in (*fwd_hooks, *bwd_hooks)])
    added: list[tuple[Any, list[Any], Any]] = []
    try:
        for direction, hooks in (("fwd", fwd_hooks), ("bwd", bwd_hooks)):
            for name, fn in hooks:
                point = points[name]
                # HookPoint.add_hook applies the bridge's shape conversions (e.g. hook_k as
                # [batch, pos, kv_head, d_head]); its handle is the entry it appends.
                wrapper = _Hook(fn)
                point.add_hook(wrapper, dir=direction)
                registry = point.fwd_hooks if direction == "fwd" else point.bwd_hooks
                added.append((point, registry, next(h for h in reversed(registry) if h.user_hook is wrapper)))
        with bridge_cache_names(model):
            yield
    finally:
        for _point, registry, handle in added:
            handle.hook.remove()
            if handle in registry:
                registry.remove(handle)


class _Hook:
    """A distinct object per attachment, so its TransformerLens handle can be found and removed."""

    def __init__(self, fn: HookFn) -> None:
        self.fn = fn

    def __call__(self, activation: Tensor, hook: Any) -> Tensor | None:
        return self.fn(activation, hook)

    def __repr__(self) -> str:
        return f"headscope hook {getattr(self.fn, '__qualname__', self.fn)!r}"


@contextmanager
def capture(model: Any, names: Iterable[str], *, detach: bool = True) -> Iterator[dict[str, Tensor]]:
    """Record activations by hook name into the dictionary the block receives.

    >>> import torch
    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> with capture(model, ["blocks.1.attn.hook_k"]) as acts:
    ...     _ = model(torch.tensor([[0, 5, 9]]))
    >>> tuple(acts["blocks.1.attn.hook_k"].shape)  # grouped-query attention: 2 key/value heads
    (1, 3, 2, 16)
    """
    store: dict[str, Tensor] = {}

    def recorder(name: str) -> HookFn:
        def record(activation: Tensor, hook: Any) -> None:
            store[name] = activation.detach() if detach else activation

        return record

    with attached(model, [(name, recorder(name)) for name in names]):
        yield store
