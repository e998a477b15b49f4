"""``supported()``: which decoder families work with which capability on which attention route.

Each family of :mod:`headscope.models._families` is booted as a ``TransformerBridge`` (float32, on
the CPU) and checked against its Hugging Face eager twin by :mod:`headscope.support._checks`. The
fused route is tried wherever :func:`~headscope.models._fused.fused_unsupported` allows it, so a
family the fused route learns shows up here without a change to this module.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from headscope.errors import ConfigError
from headscope.models import load_folder
from headscope.models._families import FAMILIES, family_folder
from headscope.models._fused import fused_unsupported
from headscope.models._kv import versions
from headscope.results import Saved
from headscope.support._checks import check_detection, check_knockout, check_patching
from headscope.support._reference import load_reference

__all__ = ["CAPABILITIES", "ROUTES", "Cell", "Support", "supported"]

CAPABILITIES = ("detection", "knockout", "patching")
ROUTES = ("fused", "eager")
_CHECKS = {"detection": check_detection, "knockout": check_knockout, "patching": check_patching}


class Cell(NamedTuple):
    """One entry of the matrix: ``status`` is ``"yes"``, ``"no: <why>"`` or ``"not booted: <why>"``."""

    family: str
    capability: str
    route: str
    status: str


@dataclass(frozen=True)
class Support(Saved):
    """The matrix of :func:`supported`: family x capability x route -> status.

    ``families`` maps each family's name to its label and what its tiny config exercises;
    ``versions`` names the transformers and TransformerLens releases it was computed with.
    """

    cells: tuple[Cell, ...]
    families: dict[str, tuple[str, str]]
    versions: str

    def status(self, family: str, capability: str, route: str) -> str:
        """The cell for ``family``, ``capability`` and ``route``."""
        for cell in self.cells:
            if (cell.family, cell.capability, cell.route) == (family, capability, route):
                return cell.status
        raise ConfigError(
            f"no cell for {family!r}, {capability!r}, {route!r}: families are {', '.join(self.families)}, "
            f"capabilities {', '.join(CAPABILITIES)} and routes {', '.join(ROUTES)}"
        )

    def to_frame(self) -> Any:
        """Long frame, one row per cell: family, label, capability, route, status, ok (status is ``"yes"``)."""
        import pandas as pd

        rows = [
            (c.family, self.families[c.family][0], c.capability, c.route, c.status, c.status == "yes")
            for c in self.cells
        ]
        return pd.DataFrame(rows, columns=["family", "label", "capability", "route", "status", "ok"])

    def to_markdown(self) -> str:
        """The README table: one row per family, one column per capability and route, reasons as notes."""
        notes: list[str] = []
        head = ["family", *(f"{c} ({r})" for c in CAPABILITIES for r in ROUTES)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, (label, _what) in self.families.items():
            cells = []
            for capability in CAPABILITIES:
                for route in ROUTES:
                    status = self.status(name, capability, route)
                    word, _, why = status.partition(": ")
                    if why and why not in notes:
                        notes.append(why)
                    cells.append(f"{word} ({notes.index(why) + 1})" if why else word)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"{i}. {why}" for i, why in enumerate(notes, 1)]
        lines.append("")
        lines += [f"- {label}: {what}" for label, what in self.families.values()]
        return "\n".join(lines) + "\n"

    def plot(self) -> Any:
        """A plotly table of the matrix, green where supported (returned, not shown)."""
        import plotly.graph_objects as go

        frame = self.to_frame()
        wide = frame.pivot(index="label", columns=["capability", "route"], values="status")
        wide = wide.reindex([label for label, _ in self.families.values()])
        columns = [(c, r) for c in CAPABILITIES for r in ROUTES]
        values = [list(wide.index)] + [[s.partition(":")[0] for s in wide[col]] for col in columns]
        colours = [["white"] * len(wide)] + [
            ["#c7e9c0" if s == "yes" else "#fcbba1" for s in wide[col]] for col in columns
        ]
        header = ["family", *(f"{c}<br>{r}" for c, r in columns)]
        return go.Figure(go.Table(header=dict(values=header), cells=dict(values=values, fill_color=colours)))


def supported() -> Support:
    """Run the architecture matrix on the tiny family models (cached for the process; some seconds).

    >>> table = supported()
    >>> table.status("llama3", "knockout", "eager")
    'yes'
    """
    return _supported()


@functools.lru_cache(maxsize=1)
def _supported() -> Support:
    cells: list[Cell] = []
    for name in FAMILIES:
        cells += _family_cells(name)
    families = {name: (family.label, family.what) for name, family in FAMILIES.items()}
    return Support(tuple(cells), families, versions())


def _family_cells(name: str) -> list[Cell]:
    folder = family_folder(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_folder(folder, kind="bridge")
    except Exception as error:  # what the table reports: the bridge cannot boot this family
        why = f"not booted: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return [Cell(name, c, r, why) for c in CAPABILITIES for r in ROUTES]
    reference = load_reference(folder, torch.float32)
    fused_reason = fused_unsupported(model)
    cells = []
    for capability in CAPABILITIES:
        for route in ROUTES:
            if route == "fused" and fused_reason is not None:
                status = f"no: {fused_reason}"
            else:
                status = _CHECKS[capability](model, reference, route)
            cells.append(Cell(name, capability, route, status))
    return cells
