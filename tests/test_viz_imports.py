"""viz draws; it runs nothing: no module of headscope.viz imports the model or hook layers."""

from __future__ import annotations

from pathlib import Path

from _layers import imported_modules, under

VIZ = Path(__file__).resolve().parents[1] / "headscope" / "viz"
FORBIDDEN = ("headscope.models", "headscope.hooks")


def test_viz_imports_nothing_from_models_or_hooks():
    files = sorted(VIZ.glob("*.py"))
    assert len(files) >= 5
    bad = {f"{path.name}: {name}" for path in files for name in imported_modules(path) if under(name, FORBIDDEN)}
    assert not bad, f"viz must not run models; it imports {sorted(bad)}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from headscope.hooks import attached\n    import headscope.models as m\n")
    assert "headscope.hooks" in imported_modules(path) and "headscope.models" in imported_modules(path)
    path.write_text("from headscope import hooks\n")
    assert "headscope.hooks" in imported_modules(path)
