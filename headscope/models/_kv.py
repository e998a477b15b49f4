"""Hand a Hugging Face KV cache to a bridge's attention components under the name they read.

transformers 5.24 renamed the cache argument of its decoder layers and attention modules from
``past_key_values`` to ``cache``. TransformerLens 4.3 / 3.9 attention bridges read only
``past_key_values`` (or ``layer_past``) in ``_update_kv_cache``, so under 5.24 every cached step
attends to its own key alone and the cache stays empty. :func:`bridge_cache_names` copies the cache
to ``past_key_values`` for the duration of a ``with`` block, which is correct on both releases:
on 5.23 and earlier the argument already has that name and nothing changes.

:func:`check_cache_length` is the guard every cached decoder runs after each step; it names the
installed releases (:func:`versions`) when the cache did not grow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from headscope.errors import ModelError

__all__ = ["KNOWN_GOOD", "bridge_cache_names", "check_cache_length", "versions"]

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


def check_cache_length(n_seen: int, held: int) -> None:
    """Raise :class:`ModelError` unless a KV cache fed ``n_seen`` tokens holds ``held == n_seen`` positions."""
    if held != n_seen:
        raise ModelError(
            f"KV-cached decoding is broken on this install: after {n_seen} tokens the model's cache holds "
            f"{held}, so each step would attend to the wrong keys. Installed: {versions()}. "
            f"Known good: {KNOWN_GOOD}; reinstall from the lock with `make setup`."
        )


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
