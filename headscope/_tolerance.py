"""How far apart two honest computations of one quantity may land, by dtype: the run-time checks' tolerances.

headscope checks its own work at run time in a few places: that a recomputed attention pattern is
the model's (the eager ``z`` knockout route), that a probe found the model's score scale, that a
replayed forward reproduces the recorded logits (patching's key/value reuse). Two routes through
the same numbers round differently, and by how much depends on the dtype: float32 keeps about 7
significant digits, bfloat16 about 2 to 3. A fixed float32 tolerance therefore fails every such
check in bfloat16, and a bfloat16 one would hide real float32 bugs. :func:`relative` gives the
relative tolerance for results that passed through a whole model (many roundings deep).

>>> import torch
>>> relative(torch.float32), relative(torch.bfloat16)
(0.0001, 0.0625)
"""

from __future__ import annotations

import torch

__all__ = ["relative"]

_FLOAT32_RELATIVE = 1e-4  # what float32 checks have always used: about 1000 roundings of 1.2e-7
_ULPS = 8  # below float32, a deep result agrees to a few units in the last place


def relative(dtype: torch.dtype) -> float:
    """Relative tolerance between two computations of one model output in ``dtype``."""
    if dtype in (torch.float32, torch.float64):
        return _FLOAT32_RELATIVE
    return _ULPS * torch.finfo(dtype).eps
