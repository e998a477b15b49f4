"""The exceptions headscope raises.

Every error a user can cause is a :class:`HeadscopeError`, so one ``except``
clause catches them all; the subclasses say which kind of input was wrong.
Each also subclasses the built-in exception a caller would expect
(``ValueError``, ``TypeError``, ``LookupError``), so generic handlers work too.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ContextLengthError",
    "HeadIndexError",
    "HeadscopeError",
    "InputTypeError",
    "MissingDependencyError",
    "ModelError",
    "ModelMismatchError",
    "ShardError",
    "SpanError",
    "TaskError",
]


class HeadscopeError(Exception):
    """Base class of every error headscope raises on bad input."""


class ConfigError(HeadscopeError, ValueError):
    """An argument or option has a value headscope cannot use; the message says which values it accepts."""


class InputTypeError(HeadscopeError, TypeError):
    """An argument, or a value a callback returned, has a type headscope cannot use; the message names the types."""


class ModelError(HeadscopeError, TypeError):
    """The object is not a model headscope can work with, or lacks a needed part."""


class ModelMismatchError(HeadscopeError, ValueError):
    """Two models (or a model and a result) that must share an architecture do not."""


class HeadIndexError(HeadscopeError, IndexError):
    """A (layer, head) pair, or a layer, is out of range for the model."""


class SpanError(HeadscopeError, ValueError):
    """A labelled span (needle, answer, document) cannot be found or aligned to tokens."""


class ContextLengthError(HeadscopeError, ValueError):
    """An input is longer than the model's context window."""


class MissingDependencyError(HeadscopeError, ImportError):
    """An optional package is needed; the message gives the exact install command."""


class TaskError(HeadscopeError, ValueError):
    """A task builder got an impossible parameter, or a data file is malformed."""


for _cls in (
    HeadscopeError,
    ConfigError,
    InputTypeError,
    ModelError,
    ModelMismatchError,
    HeadIndexError,
    SpanError,
    ContextLengthError,
    MissingDependencyError,
    TaskError,
):
    _cls.__module__ = "headscope"


class ShardError(HeadscopeError, RuntimeError):
    """Another rank of a sharded run failed; the message names that rank and its error."""
