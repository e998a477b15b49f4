"""Numerical comparisons for the tests: tolerances that scale with the values compared and with their dtype.

Two runs of one computation differ in the last bits between machines, kernels and summation orders, and the
size of that difference follows the magnitude of the whole tensor, not of each entry: a logit near 0 is a dot
product with the same residual stream as a logit of 30 and carries the same rounding error. So ``assert_close``
allows, entry by entry,

    |actual - expected| <= atol + rtol * |expected|,    atol = rtol * scale,    scale = max |expected|,

with ``rtol`` from ``RTOL``, by the dtype the values were computed in and by the length of the computation
that separates the two sides: ``short=True`` where they differ by a few operations (a hand-written softmax or
mean of captured activations, a hook that replaces a value), the default (long) where they run different
kernels through a whole model (the fused and the eager route, a KV cache and a full forward, TransformerLens
and Hugging Face).

``assert_differs`` is the other half of such a test. A tolerance is only worth having if the bug the comparison
guards against (a knockout that did not act, a patch at the wrong head, a missing mask) moves the values by far
more than it: ``assert_differs(what_the_bug_gives, expected)`` checks that some entry lies at least ``by``
tolerances away, with the tolerance ``assert_close`` used.
"""

from __future__ import annotations

import numpy as np
import torch

# dtype -> (rtol of a short computation, rtol of a long one). float32's machine epsilon is 1.2e-7, so 1e-5 is
# about 80 units in the last place and 1e-4 about 800; bfloat16 and float16 keep 8 and 11 significant bits.
RTOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def _tensor(x) -> torch.Tensor:
    """A tensor of ``x``: tensors and arrays keep their dtype; Python numbers, lists and tuples are float64."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return torch.tensor(x, dtype=torch.float64)


def tolerance(
    expected, *, dtype: torch.dtype | None = None, short: bool = False, scale: float | None = None
) -> tuple[float, float]:
    """``(rtol, atol)`` for values like ``expected`` computed in ``dtype`` (by default ``expected``'s dtype).

    >>> rtol, atol = tolerance(torch.tensor([0.5, -30.0]))  # float32, long: atol = 1e-4 x 30
    >>> rtol, round(atol, 9)
    (0.0001, 0.003)
    >>> tolerance(torch.tensor([0.5, -30.0], dtype=torch.bfloat16), scale=1.0)
    (0.016, 0.016)
    """
    e = _tensor(expected)
    dtype = dtype or (e.dtype if e.is_floating_point() else torch.float64)
    if dtype not in RTOL:
        raise ValueError(f"no tolerance for dtype {dtype}; expected one of {', '.join(map(str, RTOL))}")
    rtol = RTOL[dtype][0 if short else 1]
    if scale is None:
        finite = e[torch.isfinite(e)].double().abs()
        scale = float(finite.max()) if finite.numel() else 0.0
    return rtol, rtol * scale


def _prepare(actual, expected, dtype, short, scale) -> tuple[torch.Tensor, torch.Tensor, float, float, str]:
    """Both sides as float64 tensors of one shape, the tolerance, and a line that says how it was chosen."""
    a, e = _tensor(actual), _tensor(expected)
    if isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor) and actual.dtype != expected.dtype:
        raise AssertionError(f"dtypes differ: actual {actual.dtype}, expected {expected.dtype}")
    if a.shape != e.shape:
        raise AssertionError(f"shapes differ: actual {tuple(a.shape)}, expected {tuple(e.shape)}")
    if dtype is None:  # the less precise of the two; Python numbers count as float64
        dtype = max((x.dtype for x in (a, e) if x.is_floating_point()), key=lambda d: torch.finfo(d).eps, default=None)
    rtol, atol = tolerance(e, dtype=dtype or torch.float64, short=short, scale=scale)
    how = (
        f"{dtype or torch.float64}, {'short' if short else 'long'} computation: "
        f"|actual - expected| <= {atol:.3g} + {rtol:.1g} * |expected|  (atol = rtol x scale {atol / rtol:.4g})"
    )
    return a.double(), e.double(), rtol, atol, how


def worst(a: torch.Tensor, e: torch.Tensor, rtol: float, atol: float) -> tuple[float, tuple[int, ...], float]:
    """The largest ``|a - e| / (atol + rtol |e|)`` over finite entries, its index, and ``|a - e|`` there."""
    if not a.numel():
        return 0.0, (), 0.0
    diff = (a - e).abs()
    ratio = diff / (atol + rtol * e.abs()).clamp_min(torch.finfo(torch.float64).tiny)
    ratio = torch.where(torch.isfinite(a) & torch.isfinite(e), ratio, 0.0)
    flat = int(ratio.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), ratio.shape))
    return float(ratio.flatten()[flat]), index, float(diff.flatten()[flat])


def assert_close(
    actual,
    expected,
    *,
    dtype: torch.dtype | None = None,
    short: bool = False,
    scale: float | None = None,
    msg: str = "",
) -> None:
    """Assert ``actual`` equals ``expected`` up to the rounding of ``dtype`` (see the module docstring).

    ``dtype``: the precision the values were computed in; by default the less precise of the two inputs
    (Python numbers count as float64: pass ``dtype=torch.float32`` for the ``.item()`` of a float32 result).
    ``scale`` replaces ``max |expected|`` where the rounding error follows a larger magnitude than the values
    compared, e.g. a small difference of two large logits. Tensors must agree in dtype and shape. The message
    on failure gives the tolerance, how many entries lie outside it, and the largest absolute and relative
    differences with their indices.
    """
    a, e, rtol, atol, how = _prepare(actual, expected, dtype, short, scale)
    head = f"{msg}: " if msg else ""
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{head}not close as {how}\n{m}")


def assert_differs(
    actual,
    expected,
    *,
    by: float = 10.0,
    dtype: torch.dtype | None = None,
    short: bool = False,
    scale: float | None = None,
    msg: str = "",
) -> None:
    """Assert some entry of ``actual`` lies at least ``by`` tolerances of ``assert_close`` from ``expected``.

    Pass what the bug would give as ``actual``, the right values as ``expected``, and the ``dtype``, ``short``
    and ``scale`` of the ``assert_close`` this backs: it shows that comparison tells the two apart.
    """
    a, e, rtol, atol, how = _prepare(actual, expected, dtype, short, scale)
    ratio, index, diff = worst(a, e, rtol, atol)
    if ratio < by:
        raise AssertionError(
            f"{msg + ': ' if msg else ''}expected a difference of at least {by:g} tolerances as {how}; "
            f"the largest is {ratio:.3g} tolerances (|difference| {diff:.3g} at index {index})"
        )
