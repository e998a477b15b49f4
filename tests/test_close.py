"""The tests' comparison helper: it passes on last-bit noise at any magnitude and dtype, and fails on a real
mismatch with a message that says where and by how much."""

from __future__ import annotations

import re

import pytest
import torch
from _close import assert_close, assert_differs, tolerance, worst


def logits_like(scale: float = 38.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A [pos, vocab] tensor whose largest entry is ``scale``, most entries far smaller."""
    x = torch.randn(30, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return (x * scale / x.abs().max()).to(dtype)


def test_the_fresh_clone_failure_passes_but_would_have_failed_the_old_absolute_tolerance() -> None:
    """SmolLM2 fused vs eager on another machine: 2 of 14.7M logits (scale 38) off by 1.07e-4, relative 9e-6."""
    expected = logits_like(38.0)
    actual = expected.clone()
    actual[3, 7] = 12.0 + 1.07e-4
    expected[3, 7] = 12.0
    actual[4, 9] = expected[4, 9] + 1.07e-4  # rounding follows the tensor's scale, not the entry's
    with pytest.raises(AssertionError):
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)
    assert_close(actual, expected)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_last_bit_noise_passes_at_every_magnitude(scale: float) -> None:
    expected = logits_like(scale)
    noise = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    actual = (expected.double() + noise * 1e-6 * scale).float()  # ~8 units in the last place of the largest
    assert_close(actual, expected)
    assert_close(actual, expected, short=True)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_one_wrong_entry_fails_at_every_magnitude_with_where_and_how_much(scale: float) -> None:
    """A bug that moves one entry by 1% of the tensor's scale (a wrong head, a missing mask at one position)."""
    expected = logits_like(scale)
    actual = expected.clone()
    actual[17, 123] += 0.01 * scale
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, msg="fused vs eager")
    text = str(info.value)
    assert text.startswith("fused vs eager: not close as torch.float32, long computation")
    assert "Mismatched elements: 1 / 15000" in text and "at index (17, 123)" in text
    assert "Greatest absolute difference" in text and "Greatest relative difference" in text


def test_an_absolute_error_that_passes_at_a_large_scale_fails_at_a_small_one() -> None:
    """No fixed atol: 1e-4 is rounding noise on logits of 38 and a 10% error on values of 1e-3."""
    big, small = logits_like(38.0), logits_like(1e-3)
    assert_close(big + 1e-4, big)
    with pytest.raises(AssertionError, match="not close"):
        assert_close(small + 1e-4, small)


def test_a_short_computation_gets_a_tolerance_ten_times_tighter() -> None:
    expected = logits_like(1.0)
    actual = expected + 5e-5
    assert_close(actual, expected)
    with pytest.raises(AssertionError, match="short computation"):
        assert_close(actual, expected, short=True)


@pytest.mark.parametrize(("dtype", "noise", "bug"), [(torch.bfloat16, 0.008, 0.1), (torch.float16, 5e-4, 0.01)])
def test_half_precision_tolerances_allow_their_rounding_and_no_more(dtype, noise, bug) -> None:
    """One ulp of bfloat16 (2^-7 relative) or float16 (2^-10) passes; an error of several ulps does not."""
    expected = logits_like(4.0, dtype)
    assert_close((expected.double() * (1 + noise)).to(dtype), expected)
    with pytest.raises(AssertionError, match=re.escape(str(dtype))):
        assert_close((expected.double() * (1 + bug)).to(dtype), expected)


def test_python_floats_of_a_float32_result_take_the_float32_tolerance() -> None:
    value = torch.tensor(7.123456, dtype=torch.float32)
    by_hand = float(value.double()) * (1 + 2e-6)  # a float64 sum of float32 terms, a few ulps away
    with pytest.raises(AssertionError, match=r"torch\.float64"):
        assert_close(value.item(), by_hand)
    assert_close(value.item(), by_hand, dtype=torch.float32, short=True)


def test_scale_names_the_magnitude_the_error_follows() -> None:
    """A logit difference of 0.1 computed from logits of 30 carries their rounding, not its own."""
    assert_close(0.1 + 3e-5, 0.1, dtype=torch.float32, short=True, scale=30.0)
    with pytest.raises(AssertionError):
        assert_close(0.1 + 3e-5, 0.1, dtype=torch.float32, short=True)


def test_dtypes_and_shapes_must_agree() -> None:
    x = logits_like()
    with pytest.raises(AssertionError, match=r"dtypes differ: actual torch\.float64, expected torch\.float32"):
        assert_close(x.double(), x)
    with pytest.raises(AssertionError, match=r"shapes differ: actual \(30, 499\), expected \(30, 500\)"):
        assert_close(x[:, 1:], x)


def test_assert_differs_needs_the_bug_to_move_some_entry_by_many_tolerances() -> None:
    expected = logits_like(1.0)
    knocked = expected.clone()
    knocked[2, 3] += 0.05  # 0.05 / (1e-4 + 1e-4 |e|) >= 250 tolerances
    assert_differs(knocked, expected)
    assert_differs(knocked, expected, by=200)
    with pytest.raises(AssertionError, match=r"at least 10 tolerances .* the largest is \d.* at index \(\d+, \d+\)"):
        assert_differs(expected + 3e-4, expected)  # under 3 tolerances: rounding-sized, not a bug


def test_worst_reports_the_entry_furthest_outside_the_tolerance() -> None:
    expected = torch.tensor([[10.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    actual = expected + torch.tensor([[1e-3, 1e-3], [0.0, 0.0]], dtype=torch.float64)
    rtol, atol = tolerance(expected)
    assert (rtol, atol) == (1e-10, 1e-9)
    ratio, index, diff = worst(actual, expected, rtol, atol)
    assert index == (0, 1) and diff == pytest.approx(1e-3) and ratio == pytest.approx(1e-3 / 1e-9)


def test_lists_and_tuples_of_python_floats_compare_as_float64() -> None:
    assert_close((7.0, 6.5), [7.0, 6.5 + 1e-13])
    with pytest.raises(AssertionError, match=r"torch\.float64"):
        assert_close((7.0, 6.5), [7.0, 6.5 + 1e-6])
    assert_close((7.0, 6.5), [7.0, 6.5 + 1e-6], dtype=torch.float32, short=True)
