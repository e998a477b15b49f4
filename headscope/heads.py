"""Head sets: one way to read a head, validated collections of heads, and random baselines of equal size."""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope.errors import HeadIndexError

if TYPE_CHECKING:
    from headscope.models import ModelInfo

Head = tuple[int, int]

__all__ = ["Head", "as_head", "as_heads", "parse_head", "random_heads"]


def parse_head(label: str) -> Head:
    """``"L3H7"`` or ``"3-7"`` (Wu et al.'s key) to ``(3, 7)``.

    >>> parse_head("L3H7"), parse_head("12-4")
    ((3, 7), (12, 4))
    """
    text = label.strip()
    try:
        if text.upper().startswith("L") and "H" in text.upper():
            layer, head = text[1:].upper().split("H")
        else:
            layer, head = text.split("-")
        return _checked(int(layer), int(head), label)
    except ValueError:
        raise HeadIndexError(f"cannot read a head from {label!r}; expected 'L3H7' or '3-7'") from None


def as_head(head: Any) -> Head:
    """Any form headscope accepts for a head, as a ``(layer, head)`` pair of non-negative ints.

    Accepted: a label (``"L3H7"``, ``"3-7"``) or any pair of integers (a tuple, list, NumPy
    array or tensor of two integral values, such as a :data:`Head` from a result). Every
    function that takes heads reads them through this one.

    >>> as_head("L1H0"), as_head((1, 0)), as_head([np.int64(1), 0]), as_head("1-0")
    ((1, 0), (1, 0), (1, 0), (1, 0))
    """
    if isinstance(head, str):
        return parse_head(head)
    try:
        layer, index = (x.item() if hasattr(x, "item") else x for x in head)
    except (TypeError, ValueError):
        raise HeadIndexError(f"heads are (layer, head) pairs of ints or labels like 'L3H7'; got {head!r}") from None
    if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (layer, index)):
        if not all(isinstance(x, float) and x.is_integer() for x in (layer, index)):
            raise HeadIndexError(f"heads are (layer, head) pairs of ints or labels like 'L3H7'; got {head!r}")
    return _checked(int(layer), int(index), head)


def as_heads(heads: Iterable[Any]) -> list[Head]:
    """:func:`as_head` of each item, in order (duplicates kept).

    >>> as_heads(["L0H1", (2, 3)])
    [(0, 1), (2, 3)]
    """
    if isinstance(heads, str):
        raise HeadIndexError(f"expected a collection of heads, got the single string {heads!r}; wrap it in a list")
    return [as_head(h) for h in heads]


def _checked(layer: int, index: int, given: Any) -> Head:
    if layer < 0 or index < 0:
        raise HeadIndexError(f"a head's layer and index are non-negative ints; got {given!r}")
    return layer, index


def random_heads(info: ModelInfo, k: int, *, exclude: Iterable[Any] = (), seed: int = 0) -> list[Head]:
    """``k`` distinct heads drawn uniformly from those not in ``exclude``, sorted.

    The random-head baseline of knockout and patching experiments (Wu et al. draw outside the
    top 100 heads).

    >>> from headscope import load_model, model_info
    >>> heads = random_heads(model_info(load_model("tiny-llama")), 7, exclude=[(0, 0)], seed=1)
    >>> len(heads), (0, 0) in heads
    (7, False)
    """
    banned = set(info.check_heads(exclude))
    pool = [
        (layer, head) for layer in range(info.n_layers) for head in range(info.n_heads) if (layer, head) not in banned
    ]
    if not 0 <= k <= len(pool):
        raise HeadIndexError(f"cannot draw {k} heads: only {len(pool)} heads remain outside the {len(banned)} excluded")
    picks = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in picks)
