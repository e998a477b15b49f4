"""The import-layer checks' one reader: every module a source file imports, wherever in the file."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_modules(path: Path) -> list[str]:
    """Every module a file imports, in functions and ``TYPE_CHECKING`` blocks too.

    ``from a import b`` names ``a`` and ``a.b``, since ``b`` may be a module (``from headscope import models``).
    """
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def under(name: str, modules: tuple[str, ...]) -> bool:
    """Whether ``name`` is one of ``modules`` or inside one of them."""
    return any(name == m or name.startswith(m + ".") for m in modules)
