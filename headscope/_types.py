"""The annotation vocabulary every module shares: tensor axis names and choice types.

**Axis names.** jaxtyping shapes (``Float[Tensor, "batch head query key"]``) use only the names in
:data:`AXES`: ``batch``, ``pos`` (a token position), ``query`` and ``key`` (the two sides of an
attention pattern), ``layer``, ``head``, ``d_head``, ``d_model``, ``vocab``, and four added on
purpose: ``row`` (chosen query rows, e.g. the rows that predict the answer), ``answer`` (answer
tokens), ``sample`` (samples of a result) and ``kv_head`` (key/value heads under grouped-query
attention). A name means the same size wherever it appears in one call: the test suite runs with
jaxtyping and beartype checking switched on (``--jaxtyping-packages`` in ``pyproject.toml``).

**Choices.** A parameter that takes one of a few strings is annotated ``Choice["a", "b"]``. Type
checkers read it as ``Literal["a", "b"]``; at run time it is ``str``. headscope checks every choice
itself, and its :class:`~headscope.ConfigError` says what was expected, what was seen and what to
try; a runtime checker therefore lets any string through to that check rather than pre-empting it
with a message of its own. The same rule holds for any argument headscope validates with its own
error: the annotation states what may be passed in, and headscope's check states what is accepted.
So a ``[layer, head]`` grid that headscope checks is a :data:`Grid`, and an axis whose size headscope
compares itself is written with a leading underscore (``"batch _pos"``), which jaxtyping reads as a
name for the reader, not a size to bind.

>>> Choice["fast", "exact"] is str
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from jaxtyping import Float
from torch import Tensor

__all__ = ["AXES", "Attention", "Choice", "Grid"]

_CORE = "batch pos query key layer head d_head d_model vocab"
_ADDED = "row answer sample kv_head"  # the four added on purpose (see above)
#: Every axis name a jaxtyping annotation in headscope may use (``tests/test_types.py`` checks).
AXES: frozenset[str] = frozenset((_CORE + " " + _ADDED).split())

#: A ``[layer, head]`` grid of per-head values, as a tensor or an array. Functions taking one
#: check its shape themselves (a :class:`~headscope.ConfigError` naming the shape seen), so the
#: annotation lets any shape through, by the rule above.
Grid = Float[Tensor, "..."] | Float[np.ndarray, "..."]

if TYPE_CHECKING:
    from typing import Literal as Choice
else:

    class _Choice:
        """``Choice[...]`` at run time: ``str``, whatever the values (see the module docstring)."""

        def __getitem__(self, values: Any) -> type[str]:
            return str

        def __repr__(self) -> str:
            return "Choice"

    Choice = _Choice()

#: The attention route of detection, knockout and patching: ``"fused"`` (sdpa; only the rows an
#: analysis reads are recomputed), ``"eager"`` (TransformerLens's full patterns) or ``"auto"``
#: (fused wherever it is exact on the model).
Attention = Choice["auto", "fused", "eager"]
