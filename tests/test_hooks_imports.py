"""hooks is the bottom layer: it and the module it builds on import nothing from headscope but errors and types."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "headscope"
BOTTOM = ("hooks.py", "_kv_alias.py")
ALLOWED = ("headscope.errors", "headscope._types", "headscope._kv_alias")


def _imports(path: Path) -> list[str]:
    """Every headscope module a file imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from headscope import models` imports headscope.models; `from headscope.errors import X` does not
            if node.module == "headscope":
                names += [f"headscope.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return [name for name in names if name == "headscope" or name.startswith("headscope.")]


def test_hooks_imports_nothing_from_models():
    bad = {f"{name}: {module}" for name in BOTTOM for module in _imports(PACKAGE / name) if module not in ALLOWED}
    assert not bad, f"the bottom layer may import only {ALLOWED}; it imports {sorted(bad)}"


def test_the_check_sees_every_way_of_importing_models(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from headscope.models._kv import bridge_cache_names\n    import headscope.models\n")
    assert _imports(path) == ["headscope.models._kv", "headscope.models"]
    path.write_text("from headscope import models, errors\nfrom headscope.errors import ModelError\nimport torch\n")
    assert _imports(path) == ["headscope.models", "headscope.errors", "headscope.errors"]
