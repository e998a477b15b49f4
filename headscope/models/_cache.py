"""Where headscope keeps converted weights: a per-user cache folder, never the repository."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The headscope cache folder, created on first use.

    ``$HEADSCOPE_CACHE`` if set, else ``$XDG_CACHE_HOME/headscope``, else ``~/.cache/headscope``.
    """
    explicit = os.environ.get("HEADSCOPE_CACHE")
    if explicit:
        root = Path(explicit).expanduser()
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "headscope"
    root.mkdir(parents=True, exist_ok=True)
    return root
