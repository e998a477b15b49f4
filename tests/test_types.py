"""One annotation vocabulary: jaxtyping axis names from ``headscope._types.AXES``, choices as ``Choice``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from headscope import ConfigError, correlate, knockout, load_model
from headscope._types import AXES, Choice

PACKAGE = Path(__file__).resolve().parents[1] / "headscope"
ARRAY_TYPES = {"Float", "Int", "Bool", "Shaped", "Num", "Real", "Integer", "Inexact", "Float32", "Float64", "Int64"}


def _axes(path: Path) -> list[tuple[int, str]]:
    """``(line, axis name)`` of every named axis in a jaxtyping annotation ``Float[Tensor, "..."]`` of a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ARRAY_TYPES):
            continue
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else []
        if len(parts) == 2 and isinstance(parts[1], ast.Constant) and isinstance(parts[1].value, str):
            for token in parts[1].value.split():
                name = token.lstrip("*#_").rstrip("?")
                if name and name != "..." and not name.isdigit():
                    found.append((node.lineno, name))
    return found


def _literals(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "Literal"]


def test_every_shape_annotation_uses_the_axis_vocabulary():
    files = sorted(PACKAGE.rglob("*.py"))
    seen = {(f.relative_to(PACKAGE).as_posix(), line, name) for f in files for line, name in _axes(f)}
    assert len(seen) > 50  # the scan sees the annotations
    assert not [x for x in seen if x[2] not in AXES]


def test_the_axis_scan_sees_an_unknown_name(tmp_path):
    path = tmp_path / "m.py"
    path.write_text('def f(x: Float[Tensor, "batch seq"], y: Int[Tensor, "*batch 1 #head"]) -> None: ...\n')
    assert [name for _, name in _axes(path)] == ["batch", "seq", "batch", "head"]


def test_choices_are_choice_not_literal():
    """A Literal would let a runtime type checker pre-empt headscope's own ConfigError."""
    offending = {
        f.relative_to(PACKAGE).as_posix(): _literals(f) for f in PACKAGE.rglob("*.py") if f.name != "_types.py"
    }
    assert not {f: lines for f, lines in offending.items() if lines}
    assert Choice["a", "b"] is str


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: knockout(load_model("tiny-llama"), [(0, 0)], mode="bogus").__enter__(), "mode must be one of"),
        (lambda: correlate([1, 2, 3], [1, 2, 4], method="kendall"), "'spearman' or 'pearson'"),
    ],
)
def test_a_bad_choice_is_headscopes_config_error_under_the_runtime_checker(call, words):
    """The suite runs with jaxtyping + beartype on (pyproject's addopts); the user still sees ConfigError."""
    with pytest.raises(ConfigError, match=words):
        call()


def test_the_suite_checks_shapes_at_run_time():
    """pyproject's addopts switch jaxtyping + beartype on for headscope; a wrong rank fails at the call."""
    from jaxtyping import TypeCheckError

    from headscope.retrieval._top1 import read_rows

    with pytest.raises(TypeCheckError, match="weights"):
        read_rows(torch.zeros(2, 3), None)  # weights are [batch, head, row, key]
