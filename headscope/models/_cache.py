"""Where headscope keeps converted weights: a per-user cache folder, never the repository."""

from __future__ import annotations

import os
import shutil
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


def publish(staging: Path, folder: Path, *, done: str = "config.json") -> Path:
    """Move a finished ``staging`` folder to ``folder`` in one step; ``folder`` if another process got there first.

    Ranks of a sharded run on one node convert the same model at the same time: the first
    rename wins, the others find ``folder`` holding ``done`` and drop their copy. A ``folder``
    without ``done`` is a broken leftover and is replaced.
    """
    if folder.exists() and not (folder / done).is_file():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(staging, folder)
    except OSError:
        if not (folder / done).is_file():
            raise
    return folder
