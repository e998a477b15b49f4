"""Run a list of headscope commands in one process: alone, or as one rank under ``torchrun``.

``python tests/_sharded_driver.py SPEC.json`` (one process) and ``torchrun --nproc-per-node 2
tests/_sharded_driver.py SPEC.json`` (two ranks) run the same commands, so tests/test_sharded.py
compares their files. One launch runs every command, so the interpreter and torch start once.

SPEC: ``{"commands": [[arg, ...], ...], "paper_preset": {PipelineConfig fields, "n_variants": n} | null,
"fail_rank": int | null}``. ``paper_preset`` replaces ``headscope paper --smoke``'s SmolLM2 preset
with a small scratch model; ``fail_rank`` makes that rank's decoding raise, to test how a failure
on one rank stops the others.
"""

from __future__ import annotations

import json
import os
import sys


def _small_preset(fields: dict) -> None:
    from headscope.pipeline import SYNTHETIC, PipelineConfig

    def preset(data: str, seed: int = 0, **changes: object) -> PipelineConfig:
        given = {k: v for k, v in fields.items() if k != "n_variants"}
        return PipelineConfig(**{**given, "variants": SYNTHETIC[: fields["n_variants"]], "seed": seed, **changes})

    PipelineConfig.smollm2_smoke = staticmethod(preset)  # type: ignore[method-assign]


def _fail_here(rank: int) -> None:
    from headscope.retrieval import _detect

    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError(f"injected failure on rank {rank}")

    _detect._generation = broken  # type: ignore[assignment]


def main() -> int:
    spec = json.loads(open(sys.argv[1]).read())
    import torch

    torch.set_num_threads(1)
    from headscope.cli import main as headscope

    if spec.get("paper_preset"):
        _small_preset(spec["paper_preset"])
    rank = int(os.environ.get("RANK", "0"))
    if spec.get("fail_rank") == rank:
        _fail_here(rank)
    return max(headscope(args) for args in spec["commands"])


if __name__ == "__main__":
    sys.exit(main())
