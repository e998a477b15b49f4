"""hooks is the bottom layer: it and the module it builds on import nothing from headscope but errors and types."""

from __future__ import annotations

from pathlib import Path

from _layers import imported_modules, under

PACKAGE = Path(__file__).resolve().parents[1] / "headscope"
BOTTOM = ("hooks.py", "_kv_alias.py")
ALLOWED = ("headscope.errors", "headscope._types", "headscope._kv_alias")


def _outside(path: Path) -> set[str]:
    """The headscope modules a file imports beyond :data:`ALLOWED` (the package itself, ``headscope``, aside)."""
    return {name for name in imported_modules(path) if name.startswith("headscope.") and not under(name, ALLOWED)}


def test_hooks_imports_nothing_from_models():
    bad = {f"{name}: {module}" for name in BOTTOM for module in _outside(PACKAGE / name)}
    assert not bad, f"the bottom layer may import only {ALLOWED}; it imports {sorted(bad)}"


def test_the_check_sees_every_way_of_importing_models(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from headscope.models._kv import bridge_cache_names\n    import headscope.models\n")
    assert {"headscope.models._kv", "headscope.models"} <= _outside(path)
    path.write_text("from headscope import models, errors\nfrom headscope.errors import ModelError\nimport torch\n")
    assert _outside(path) == {"headscope.models"}
