"""User errors are HeadscopeErrors that still satisfy the built-in ``except`` a caller would write."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

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


BUILTINS = {"ValueError", "TypeError", "KeyError", "IndexError"}


def _bare_raises(source: str) -> list[str]:
    """``raise ValueError(...)`` (or ``raise TypeError``, ``KeyError``, ``IndexError``) statements, by line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = exc.id if isinstance(exc, ast.Name) else exc.attr if isinstance(exc, ast.Attribute) else None
            if name in BUILTINS:
                found.append(f"line {node.lineno}: raise {name}")
    return found


def test_headscope_raises_no_bare_builtin_errors() -> None:
    """Every error headscope raises is a HeadscopeError that names the problem, not a bare built-in."""
    package = Path(hs.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert len(files) > 40
    bad = [f"{path.relative_to(package)} {hit}" for path in files for hit in _bare_raises(path.read_text("utf-8"))]
    assert not bad, "raise a headscope.errors class instead: " + "; ".join(bad)


def test_the_raise_check_sees_every_form() -> None:
    source = "raise ValueError('x')\nraise TypeError\nraise builtins.KeyError(1)\nraise IndexError from None\n"
    assert len(_bare_raises(source)) == 4
    assert _bare_raises("raise ConfigError('x')\ntry:\n    pass\nexcept ValueError as e:\n    raise\n") == []


def _scores() -> hs.RetrievalScores:
    return hs.RetrievalScores(torch.zeros(2, 2), 1, 1, "m", "teacher_forced")


@pytest.mark.parametrize(
    ("call", "error", "builtin"),
    [
        (lambda: hs.head_set(np.zeros((2, 2))), hs.ConfigError, ValueError),
        (
            lambda: hs.RetrievalScores(torch.zeros(2, 2), 1, 1, "m", "teacher_forced").top(-1),
            hs.ConfigError,
            ValueError,
        ),
        (lambda: hs.answer_loss(hs.load_model("tiny-llama"), ["not a sample"]), hs.InputTypeError, TypeError),
    ],
)
def test_former_builtin_errors_keep_their_builtin_base(call, error, builtin) -> None:
    with pytest.raises(error) as caught:
        call()
    assert isinstance(caught.value, builtin)
