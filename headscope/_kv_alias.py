"""Hand a Hugging Face KV cache to a bridge's attention components under the name they read.

transformers 5.24 renamed the cache argument of its decoder layers and attention modules from
``past_key_values`` to ``cache``. TransformerLens 4.3 / 3.9 attention bridges read only
``past_key_values`` (or ``layer_past``) in ``_update_kv_cache``, so under 5.24 every cached step
attends to its own key alone and the cache stays empty. :func:`bridge_cache_names` copies the cache
to ``past_key_values`` for the duration of a ``with`` block, which is correct on both releases:
on 5.23 and earlier the argument already has that name and nothing changes.

This module sits at the bottom of headscope, beside :mod:`headscope.errors`: :mod:`headscope.hooks`
attaches the alias whenever it attaches hooks, and imports nothing from :mod:`headscope.models`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["bridge_cache_names"]


@contextmanager
def bridge_cache_names(model: Any) -> Iterator[None]:
    """Inside the block, attention bridges of ``model`` see a ``cache=`` argument as ``past_key_values=``.

    A no-op on ``HookedTransformer``, which keeps its own cache. The pre-hooks are removed on exit.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> before = sum(len(m._forward_pre_hooks) for m in model.modules())
    >>> with bridge_cache_names(model):
    ...     during = sum(len(m._forward_pre_hooks) for m in model.modules())
    >>> during - before, sum(len(m._forward_pre_hooks) for m in model.modules()) - before  # one per attention layer
    (2, 0)
    """
    handles = []
    try:
        for module in model.modules():
            if hasattr(module, "_update_kv_cache"):
                handles.append(module.register_forward_pre_hook(_alias_cache, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _alias_cache(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if kwargs.get("cache") is None or kwargs.get("past_key_values") is not None:
        return None
    return args, {**kwargs, "past_key_values": kwargs["cache"]}
