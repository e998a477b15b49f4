"""Hand a Hugging Face KV cache to a bridge's attention components under the name they read.

transformers 5.24 renamed the cache argument of its decoder layers and attention modules from
``past_key_values`` to ``cache``. TransformerLens 4.3 / 3.9 attention bridges read only
``past_key_values`` (or ``layer_past``) in ``_update_kv_cache``, so under 5.24 every cached step
attends to its own key alone and the cache stays empty. :func:`bridge_cache_names` copies the cache
to ``past_key_values`` for the duration of a ``with`` block, which is correct on both releases:
on 5.23 and earlier the argument already has that name and nothing changes.

:func:`versions` names the installed releases for errors about such breaks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["KNOWN_GOOD", "bridge_cache_names", "versions"]

KNOWN_GOOD = "transformers 5.23.0 or 5.24.0 with TransformerLens 4.3.0 or 3.9.0 (the locks in requirements/)"


def versions() -> str:
    """``"transformers X, TransformerLens Y"`` as installed."""
    found = []
    for package, label in (("transformers", "transformers"), ("transformer-lens", "TransformerLens")):
        try:
            found.append(f"{label} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{label} (not installed)")
    return ", ".join(found)


@contextmanager
def bridge_cache_names(model: Any) -> Iterator[None]:
    """Inside the block, attention bridges of ``model`` see a ``cache=`` argument as ``past_key_values=``.

    A no-op on ``HookedTransformer``, which keeps its own cache. The pre-hooks are removed on exit.
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
