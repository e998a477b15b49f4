"""Heads: the :class:`Head` value, one reader for every head form, and validated :class:`HeadSet`\\ s.

A head is a ``(layer, head)`` pair. Every function that takes heads accepts the same forms,
read by :func:`as_heads`: :class:`Head` values, plain pairs of ints (tuples, lists, NumPy
arrays, tensors), labels such as ``"L3H7"`` or Wu et al.'s ``"3-7"``, and a :class:`HeadSet`.
Signatures name these forms :data:`HeadLike` (one head) and :data:`Heads` (a collection).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from torch import Tensor

from headscope.errors import HeadIndexError, ModelMismatchError

if TYPE_CHECKING:
    from headscope.models import ModelInfo

__all__ = ["Head", "HeadLike", "HeadSet", "Heads", "as_head", "as_heads", "parse_head", "random_heads"]


class Head(NamedTuple):
    """One attention head: ``str()`` gives its label, and it equals the plain ``(layer, head)`` tuple.

    Its ``repr`` is the plain tuple's, so heads print as ``(3, 7)`` wherever a tuple would.

    >>> h = Head(3, 7)
    >>> str(h), h, h.layer, h == (3, 7), Head.parse("L3H7") == h
    ('L3H7', (3, 7), 3, True, True)
    """

    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __repr__(self) -> str:
        return f"({self.layer}, {self.head})"

    @classmethod
    def parse(cls, text: str) -> Head:
        """``"L3H7"`` or ``"3-7"`` to ``Head(3, 7)``; see :func:`parse_head`."""
        return parse_head(text)


#: One head in any form :func:`as_head` reads: a :class:`Head`, a label, or a pair of integers.
HeadLike = Head | str | Sequence[numbers.Real] | np.ndarray | Tensor
#: Heads in any form :func:`as_heads` reads: a collection of :data:`HeadLike` items, or a :class:`HeadSet`.
Heads = Iterable[HeadLike]


def parse_head(label: str) -> Head:
    """``"L3H7"`` or ``"3-7"`` (Wu et al.'s key) to ``Head(3, 7)``.

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
        raise HeadIndexError(f"cannot read a head from {label!r}; expected a label like 'L3H7' or '3-7'") from None


def as_head(head: Any) -> Head:
    """Any form headscope accepts for a head, as a :class:`Head` of non-negative ints.

    Accepted: a label (``"L3H7"``, ``"3-7"``) or any pair of integers (a :class:`Head`, tuple,
    list, NumPy array or tensor of two integral values). Every function that takes heads reads
    them through this one.

    >>> as_head("L1H0"), as_head((1, 0)), as_head([np.int64(1), 0]), as_head("1-0")
    ((1, 0), (1, 0), (1, 0), (1, 0))
    >>> type(as_head("L1H0")).__name__
    'Head'
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


def as_heads(heads: Heads) -> list[Head]:
    """:func:`as_head` of each item, in order (duplicates kept); a :class:`HeadSet` gives its sorted heads.

    >>> as_heads(["L0H1", (2, 3), Head(1, 0)])
    [(0, 1), (2, 3), (1, 0)]
    """
    if isinstance(heads, str):
        raise HeadIndexError(f"expected a collection of heads, got the single string {heads!r}; wrap it in a list")
    if isinstance(heads, HeadSet):
        return list(heads.heads)
    try:
        items = list(heads)
    except TypeError:
        raise HeadIndexError(
            f"expected a collection of heads (e.g. [(1, 0), 'L2H3']); got a {type(heads).__name__}"
        ) from None
    return [as_head(h) for h in items]


def _checked(layer: int, index: int, given: Any) -> Head:
    if layer < 0 or index < 0:
        raise HeadIndexError(f"a head's layer and index are non-negative ints; got {given!r}")
    return Head(layer, index)


@dataclass(frozen=True, eq=True)
class HeadSet:
    """A frozen, sorted set of distinct heads, checked against a model's shape once.

    Build it with :meth:`of` (heads in any accepted form, plus the model's
    :class:`~headscope.models.ModelInfo`); every function that takes heads accepts it.
    ``shape`` is the ``(n_layers, n_heads)`` it was checked against, or ``None`` for a set built
    without a model (``HeadSet(heads)``, checked only for well-formed heads). Either way
    ``heads`` holds them as a sorted tuple of distinct :class:`Head` values.

    >>> from headscope import load_model, model_info
    >>> info = model_info(load_model("tiny-llama"))
    >>> a, b = HeadSet.of(["L1H0", (0, 2)], info), HeadSet.of([(1, 0), (1, 3)], info)
    >>> a.labels, (a & b).labels, len(a | b), "L0H2" in a
    (('L0H2', 'L1H0'), ('L1H0',), 3, True)
    >>> a.recall(b), a.jaccard(b)
    (0.5, 0.3333333333333333)
    >>> HeadSet.random_like(info, 2, seed=1, exclude=a).isdisjoint(a)
    True
    """

    heads: Heads = ()
    shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        heads = tuple(sorted(set(as_heads(self.heads))))
        object.__setattr__(self, "heads", heads)
        if self.shape is None:
            return
        n_layers, n_heads = self.shape
        bad = [h for h in heads if not (h.layer < n_layers and h.head < n_heads)]
        if bad:
            raise HeadIndexError(
                f"heads must lie within a {n_layers}x{n_heads} model (layers 0-{n_layers - 1}, heads "
                f"0-{n_heads - 1}); got {', '.join(map(str, bad))}"
            )
        object.__setattr__(self, "shape", (int(n_layers), int(n_heads)))

    @classmethod
    def of(cls, heads: Heads, info: ModelInfo) -> HeadSet:
        """The heads (any accepted form), deduplicated, sorted and checked against ``info``'s model."""
        return cls(tuple(as_heads(heads)), info.shape)

    @classmethod
    def random_like(cls, info: ModelInfo, k: int, *, seed: int = 0, exclude: Heads = ()) -> HeadSet:
        """``k`` distinct heads drawn uniformly outside ``exclude``: the random baseline (see :func:`random_heads`)."""
        return cls(tuple(random_heads(info, k, exclude=exclude, seed=seed)), info.shape)

    @property
    def labels(self) -> tuple[str, ...]:
        """``("L0H2", "L1H0", ...)`` in (layer, head) order."""
        return tuple(map(str, self.heads))

    def __iter__(self) -> Iterator[Head]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    def __contains__(self, head: object) -> bool:
        try:
            return as_head(head) in self.heads
        except HeadIndexError:
            return False

    def __and__(self, other: Heads) -> HeadSet:
        that = self._other(other)
        return HeadSet(tuple(h for h in self.heads if h in that.heads), self.shape or that.shape)

    def __or__(self, other: Heads) -> HeadSet:
        that = self._other(other)
        return HeadSet(self.heads + that.heads, self.shape or that.shape)

    def isdisjoint(self, other: Heads) -> bool:
        """True when no head is in both."""
        return not (self & other)

    def recall(self, other: Heads) -> float:
        """``|self ∩ other| / |self|``: the share of these (reference) heads that ``other`` recovers."""
        if not self.heads:
            raise HeadIndexError("recall needs a non-empty reference set (it divides by its size); got no heads")
        return len(self & other) / len(self)

    def jaccard(self, other: Heads) -> float:
        """``|self ∩ other| / |self ∪ other|``, the symmetric overlap."""
        union = self | other
        if not union:
            raise HeadIndexError("jaccard of two empty head sets is undefined; give at least one head")
        return len(self & other) / len(union)

    def __repr__(self) -> str:
        return f"HeadSet([{', '.join(self.labels)}], shape={self.shape})"

    def _other(self, other: Heads) -> HeadSet:
        """``other`` as a head set checked against this set's model (sets of two models cannot mix)."""
        if isinstance(other, HeadSet) and None not in (self.shape, other.shape) and other.shape != self.shape:
            raise ModelMismatchError(
                f"cannot combine head sets of a {'x'.join(map(str, self.shape))} and a "
                f"{'x'.join(map(str, other.shape))} model; build both with HeadSet.of(heads, info) of one model"
            )
        shape = self.shape or (other.shape if isinstance(other, HeadSet) else None)
        return HeadSet(tuple(as_heads(other)), shape)


def random_heads(info: ModelInfo, k: int, *, exclude: Heads = (), seed: int = 0) -> list[Head]:
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
        Head(layer, head)
        for layer in range(info.n_layers)
        for head in range(info.n_heads)
        if (layer, head) not in banned
    ]
    if not 0 <= k <= len(pool):
        raise HeadIndexError(
            f"cannot draw {k} heads: only {len(pool)} heads remain outside the {len(banned)} excluded; "
            f"ask for 0 to {len(pool)}"
        )
    picks = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in picks)
