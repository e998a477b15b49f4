"""viz draws; it runs nothing: no module of headscope.viz imports the model or hook layers."""

from __future__ import annotations

import ast
from pathlib import Path

VIZ = Path(__file__).resolve().parents[1] / "headscope" / "viz"
FORBIDDEN = ("headscope.models", "headscope.hooks")


def _imports(path: Path) -> list[str]:
    """Every module a file imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_viz_imports_nothing_from_models_or_hooks():
    files = sorted(VIZ.glob("*.py"))
    assert len(files) >= 5
    bad = {
        f"{path.name}: {name}"
        for path in files
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"viz must not run models; it imports {sorted(bad)}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from headscope.hooks import attached\n    import headscope.models as m\n")
    assert "headscope.hooks" in _imports(path) and "headscope.models" in _imports(path)
    path.write_text("from headscope import hooks\n")
    assert "headscope.hooks" in _imports(path)
