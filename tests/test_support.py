"""``hs.supported()``: the architecture matrix as a result object, its checks, and the README table made from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import headscope as hs
from headscope.models import load_folder
from headscope.models._families import FAMILIES, family_folder
from headscope.models._fused import fused_unsupported
from headscope.support import CAPABILITIES, ROUTES, Support, _matrix
from headscope.support._checks import check_detection, check_knockout, check_patching
from headscope.support._reference import load_reference

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("supported_table", ROOT / "scripts" / "supported_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table() -> Support:
    return hs.supported()


def test_readme_carries_the_table_supported_generates(table: Support) -> None:
    script = _script()
    readme = script.readme_table((ROOT / "README.md").read_text())
    assert readme == table.to_markdown(), (
        "README.md's architecture table is stale: run `python scripts/supported_table.py --write`"
    )


def test_the_script_prints_the_table_and_writes_it_between_the_markers(table: Support, capsys) -> None:
    script = _script()
    assert script.main([]) == 0
    assert capsys.readouterr().out == table.to_markdown()
    text = f"intro\n{script.START}\nold table\n{script.END}\nafter\n"
    assert script.with_table(text, "new\n") == f"intro\n{script.START}\nnew\n{script.END}\nafter\n"
    with pytest.raises(SystemExit, match="no <!-- supported:start -->"):
        script.readme_table("no markers here")


def test_every_family_capability_and_route_has_one_cell(table: Support) -> None:
    keys = [(c.family, c.capability, c.route) for c in table.cells]
    assert sorted(keys) == sorted((f, c, r) for f in FAMILIES for c in CAPABILITIES for r in ROUTES)
    assert all(c.status == "yes" or c.status.startswith(("no: ", "not booted: ")) for c in table.cells)


def test_fused_cells_follow_fused_unsupported_so_new_fused_families_appear(table: Support) -> None:
    for name in FAMILIES:
        reason = fused_unsupported(load_folder(family_folder(name)))
        for capability in CAPABILITIES:
            status = table.status(name, capability, "fused")
            assert (status == f"no: {reason}") if reason is not None else not status.startswith("no: the fused")


def test_the_eager_route_works_on_every_family(table: Support) -> None:
    eager = {(c.family, c.capability): c.status for c in table.cells if c.route == "eager"}
    assert eager == {key: "yes" for key in eager}


def test_support_round_trips_through_save_and_load(table: Support, tmp_path) -> None:
    loaded = Support.load(table.save(tmp_path / "support.json"))
    assert loaded == table
    assert loaded.to_markdown() == table.to_markdown()


def test_to_frame_has_one_row_per_cell_and_plot_draws_a_table(table: Support) -> None:
    frame = table.to_frame()
    assert list(frame.columns) == ["family", "label", "capability", "route", "status", "ok"]
    assert len(frame) == len(FAMILIES) * 6 and frame["ok"].sum() == sum(c.status == "yes" for c in table.cells)
    assert frame.set_index(["family", "capability", "route"]).loc[("gemma2", "knockout", "eager"), "label"] == "Gemma 2"
    figure = table.plot()
    assert len(figure.data) == 1 and figure.data[0].type == "table"
    with pytest.raises(hs.ConfigError, match=r"no cell for 'llama-9'.*families are llama3, mistral"):
        table.status("llama-9", "detection", "eager")


def test_checks_say_no_against_a_model_with_other_weights() -> None:
    """Not vacuous: the same family drawn from another seed is not the reference, and every check notices."""
    model = load_folder(family_folder("llama3"))
    other = load_reference(family_folder("llama3", seed=1))
    assert check_detection(model, other, "eager").startswith("no: top-1 keys differ from HF eager")
    assert check_knockout(model, other, "eager").startswith("no: mode 'edge' differs from HF eager")
    assert check_patching(model, other, "eager").startswith("no: patch_heads differs from HF eager")
    assert check_knockout(model, load_reference(family_folder("llama3")), "eager") == "yes"


def test_a_family_the_bridge_cannot_boot_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(folder, kind):
        raise ValueError("no adapter for this architecture\nsecond line")

    monkeypatch.setattr(_matrix, "load_folder", refuse)
    cells = _matrix._family_cells("gpt2")
    assert {c.status for c in cells} == {"not booted: ValueError: no adapter for this architecture"}
    assert len(cells) == len(CAPABILITIES) * len(ROUTES)
