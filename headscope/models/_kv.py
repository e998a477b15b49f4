"""KV-cached decoding on every supported release: the cache-name alias and the guard that checks it.

transformers 5.24 renamed the attention modules' cache argument from ``past_key_values`` to
``cache``, which TransformerLens 4.3 / 3.9 bridges do not read; :func:`bridge_cache_names` (defined
in the bottom-layer :mod:`headscope._kv_alias`, so that :mod:`headscope.hooks` can use it without
importing this package) hands the cache over under the old name for the duration of a ``with`` block.

:func:`check_cache_length` is the guard every cached decoder runs after each step; it names the
installed releases (:func:`versions`) when the cache did not grow.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from headscope._kv_alias import bridge_cache_names as bridge_cache_names
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
