"""One way to save and load every result object: JSON, read back equal.

A result is a frozen dataclass that mixes in :class:`Saved`. ``save`` writes its fields as JSON
with the class name under ``"headscope"`` and returns the path; ``load`` checks the name and
rebuilds each field from its declared type, so tuples come back as tuples, heads as
:class:`~headscope.heads.Head` values and tensors with their dtype.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Hits(Saved):
...     heads: tuple[tuple[int, int], ...]
...     rate: float
>>> import tempfile, pathlib
>>> path = Hits(((1, 0), (2, 3)), 0.5).save(pathlib.Path(tempfile.mkdtemp()) / "hits.json")
>>> Hits.load(path)
Hits(heads=((1, 0), (2, 3)), rate=0.5)
"""

from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from headscope.errors import ConfigError, HeadscopeError

__all__ = ["Saved", "read_json"]

S = TypeVar("S", bound="Saved")


class Saved:
    """Mixin for frozen dataclass results: ``to_dict``/``from_dict`` and ``save``/``load`` as JSON."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (tensors as ``{"dtype", "shape", "data"}``)."""
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """Rebuild from :meth:`to_dict`'s output, converting each field back to its declared type."""
        hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"{cls.__name__} has no fields {sorted(unknown)}; it has {sorted(names)}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]  # type: ignore[arg-type]
        missing = [name for name in required if name not in data]
        if missing:
            raise ConfigError(f"{cls.__name__} needs the fields {missing}; got {sorted(data)}")
        return cls(**{name: _decode(value, hints[name]) for name, value in data.items()})

    def save(self, path: str | Path) -> Path:
        """Write JSON that :meth:`load` reads back equal; returns ``path``."""
        path = Path(path)
        path.write_text(json.dumps({"headscope": type(self).__name__, **self.to_dict()}))
        return path

    @classmethod
    def load(cls: type[S], path: str | Path) -> S:
        """Read a file written by :meth:`save` of this class.

        A file that is not such JSON is a :class:`~headscope.ConfigError` naming the file and what
        it should hold; a missing file is a ``FileNotFoundError``.
        """
        expected = f"the JSON file that {cls.__name__}.save writes"
        data = read_json(path, expected)
        if not isinstance(data, dict):
            raise ConfigError(f"{path} holds a JSON {type(data).__name__}, not {expected}")
        kind = data.pop("headscope", None)
        if kind != cls.__name__:
            raise ConfigError(f"{path} holds a {kind or 'file not written by headscope'}, not a {cls.__name__}")
        return rebuild(path, cls, lambda: cls.from_dict(data))


def read_json(path: str | Path, expected: str) -> Any:
    """The JSON value in ``path``; a :class:`~headscope.ConfigError` naming the file and ``expected`` if it is no JSON.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = path.write_text("L1H2 and L3H4")
    >>> read_json(path, "a score file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    headscope.ConfigError: ...notes.txt is not a score file: it is not JSON text (Expecting value: ...)
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not {expected}: it is not JSON text ({error})") from None


R = TypeVar("R")


def rebuild(path: str | Path, cls: type, build: Callable[[], R]) -> R:
    """``build()``; an error in the file's fields is raised as a :class:`~headscope.ConfigError` naming ``path``."""
    try:
        return build()
    except (HeadscopeError, TypeError, KeyError, ValueError, AttributeError, IndexError) as error:
        raise ConfigError(f"{path} holds a {cls.__name__} that does not load: {error}") from error


def _encode(value: Any) -> Any:
    if isinstance(value, Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return {"dtype": dtype, "shape": list(value.shape), "data": value.detach().cpu().tolist()}
    if isinstance(value, Saved):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any, hint: Any) -> Any:
    if value is None:
        return None
    if getattr(hint, "array_type", None) is Tensor or hint is Tensor:  # jaxtyping Float[Tensor, ...] or Tensor
        tensor = torch.tensor(value["data"], dtype=getattr(torch, value["dtype"]))
        return tensor.reshape(value["shape"]) if "shape" in value else tensor  # an empty tensor keeps its shape
    if isinstance(hint, type) and issubclass(hint, Saved):
        return hint.from_dict(value)
    if isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields"):  # a NamedTuple, e.g. Head
        return hint(*value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        concrete = [a for a in args if a is not type(None)]
        return _decode(value, concrete[0]) if len(concrete) == 1 else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(v, args[0]) for v in value)
        return tuple(_decode(v, a) for v, a in zip(value, args or [Any] * len(value), strict=True))
    if origin is list:
        return [_decode(v, args[0] if args else Any) for v in value]
    if origin is dict:
        return {k: _decode(v, args[1] if args else Any) for k, v in value.items()}
    return value
