"""``TaskError``: a task parameter or a data file that cannot be used."""

from __future__ import annotations

from headscope.errors import HeadscopeError

__all__ = ["TaskError"]


class TaskError(HeadscopeError, ValueError):
    """A task builder got an impossible parameter, or a data file is malformed."""


TaskError.__module__ = "headscope"
