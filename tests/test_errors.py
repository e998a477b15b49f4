"""User errors are HeadscopeErrors that still satisfy the built-in ``except`` a caller would write."""

from __future__ import annotations

import pytest

import headscope as hs
from headscope import errors


def test_every_error_is_exported_and_a_headscope_error() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, hs.HeadscopeError), name
        assert getattr(hs, name) is cls, f"headscope.{name} is not exported"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: hs.correlate([1, 2, 3], [1, 2, 4], method="kendall"), "'spearman' or 'pearson'"),
        (lambda: hs.correlate([1, 2], [1, 2]), "at least 3 points"),
        (lambda: hs.correlate([1, 1, 1], [1, 2, 3]), "constant"),
        (lambda: hs.pipeline.Variant.of("shiny", "diverse"), "needle must be one of"),
    ],
)
def test_bad_arguments_raise_config_error_caught_as_value_error(call, words: str) -> None:
    with pytest.raises(hs.ConfigError, match=words) as caught:
        call()
    assert isinstance(caught.value, ValueError)
