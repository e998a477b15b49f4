"""Every sharded command under ``torchrun`` with 2 gloo processes equals one process, file for file.

One launch of tests/_sharded_driver.py runs detect, main, knockout, patch and paper (a small
scratch preset) as one process, another runs them as two ranks; the tests compare what each
command wrote. Both use one thread per process, so the float arithmetic is the same and scores
must be bit-equal. Also here: a failure on one rank stops both with that rank's message, and a
run killed midway resumes from its per-item files.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from headscope.ablation import KnockoutCurve
from headscope.patching import PatchingComparison
from headscope.retrieval import RetrievalScores

#: Sharding sits above the model layer (one code path for every TransformerLens version), and the
#: launches cost about 80 s: the TransformerLens 4 suite runs them, so each suite stays under 12 minutes.
TL4 = int(importlib.metadata.version("transformer-lens").split(".")[0]) >= 4
pytestmark = [
    pytest.mark.smollm2,
    pytest.mark.skipif(not TL4, reason="torchrun launches run once per CI, in the TransformerLens 4 suite"),
]

DRIVER = Path(__file__).with_name("_sharded_driver.py")
NEEDLES = ["--needle", "templated", "--lengths", "250", "--depths", "0", "33", "67", "100", "--n-samples", "1"]
DETECT = ["detect", *NEEDLES, "--mode", "generation", "--max-new-tokens", "16", "--top", "5"]
PAPER = dict(
    n_variants=3, n_layers=2, n_heads=4, n_kv_heads=2, n_ctx=160, length=64, n_train=24, n_eval=12,
    pretrain_steps=4, finetune_steps=30, lr=1e-2, batch_size=4, top_k=3, require_prediction=False,
    knockout_ks=[1, 2], knockout_seeds=[0], n_random=1, n_boot=50,
)  # fmt: skip


def _commands(out: Path, tiny: tuple[Path, Path], scores: tuple[Path, Path], data: Path) -> list[list[str]]:
    patch = ["patch", "--source", str(tiny[0]), "--target", str(tiny[1]), "--source-scores", str(scores[0])]
    patch += ["--target-scores", str(scores[1]), "--top-k", "3", "--n-random", "2", "--no-chat"]
    patch += ["--needle", "symbolic", "--haystack", "symbolic", "--lengths", "60", "90", "--depths", "0", "50", "100"]
    return [
        [*DETECT, "--out", str(out / "detect")],
        ["main", "--lengths", "250", "--depths", "0", "100", "--max-new-tokens", "24", "--out", str(out / "main")],
        ["knockout", *NEEDLES[:4], "--depths", "0", "100", "--scores", str(out / "detect" / "scores.json"),
         "--n-samples", "1", "--ks", "2", "--seeds", "0", "1", "--out", str(out / "knockout")],
        [*patch, "--out", str(out / "patch")],
        ["paper", "--smoke", "--data", str(data), "--out", str(out / "paper")],
    ]  # fmt: skip


def launch(spec: dict, folder: Path, ranks: int | None, *, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run the driver on ``spec``: one process (``ranks=None``) or ``torchrun`` with ``ranks`` ranks, 1 thread each."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    path.write_text(json.dumps(spec))
    head = [sys.executable]
    if ranks is not None:
        head += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*head, str(DRIVER), str(path)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, smollm2) -> dict[str, Path]:
    from headscope.models import tiny_folder

    root = tmp_path_factory.mktemp("sharded")
    tiny = (tiny_folder("llama", seed=0), tiny_folder("llama", seed=1))
    scores = (root / "a.json", root / "b.json")
    grids = ([[0.9, 0.0, 0.5, 0.0], [0.0, 0.7, 0.0, 0.2]], [[0.8, 0.6, 0.0, 0.0], [0.0, 0.9, 0.0, 0.0]])
    for path, grid in zip(scores, grids, strict=True):
        RetrievalScores(torch.tensor(grid, dtype=torch.float64), 1, 1, "tiny-llama", "teacher_forced").save(path)
    data = root / "rows.jsonl.gz"
    data.write_bytes(b"")
    outs = {}
    for name, ranks in (("one", None), ("two", 2)):
        spec = {"commands": _commands(root / name, tiny, scores, data), "paper_preset": PAPER}
        done = launch(spec, root / name, ranks)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (root / name / "log.txt").write_text(done.stdout + done.stderr)
        outs[name] = root / name
    return outs


def test_detect_scores_are_bit_equal_and_rank_0_alone_writes(runs) -> None:
    one, two = (RetrievalScores.load(runs[k] / "detect" / "scores.json") for k in ("one", "two"))
    assert one.n_counted == 4 and one.scores.max() > 0
    assert one == two  # hit sums, per-sample scores, counts and settings, bit for bit
    for name in ("outcomes.csv", "head_score.json", "stability.json"):
        assert (runs["one"] / "detect" / name).read_bytes() == (runs["two"] / "detect" / name).read_bytes(), name
    assert not (runs["two"] / "detect" / ".partial").exists()  # a finished run leaves no partial files
    log = (runs["two"] / "log.txt").read_text()
    assert log.count("samples counted (answered correctly)") == 2  # detect and main: printed by rank 0 only
    assert "(rank 0 of 2)" in log


def test_main_equals_one_process(runs) -> None:
    one, two = (RetrievalScores.load(runs[k] / "main" / "scores.json") for k in ("one", "two"))
    assert one.n_counted >= 1 and one == two
    assert (runs["one"] / "main" / "outcomes.csv").read_text() == (runs["two"] / "main" / "outcomes.csv").read_text()


def test_knockout_curve_over_samples_ks_and_seeds_equals_one_process(runs) -> None:
    one, two = (KnockoutCurve.load(runs[k] / "knockout" / "knockout.json") for k in ("one", "two"))
    assert one.to_dict() == two.to_dict()
    assert one.baseline > 0 and len(one.random) == 2 and one.ks == (2,) and one.n_samples == 2


def test_patching_comparison_equals_one_process(runs) -> None:
    one, two = (PatchingComparison.load(runs[k] / "patch" / "patching.json") for k in ("one", "two"))
    assert one.values == two.values and one.sets == two.sets
    assert len({round(v, 6) for v in one.values.values()}) > 2  # real, distinct numbers, not a constant


def test_paper_equals_one_process_but_for_the_timings(runs) -> None:
    folders = [runs[k] / "paper" / "result" for k in ("one", "two")]
    files = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*.json"))
    assert Path("knockout.json") in files and len(files) >= 6
    assert files == sorted(p.relative_to(folders[1]) for p in folders[1].rglob("*.json"))
    for name in files:
        one, two = (json.loads((folder / name).read_text()) for folder in folders)
        if name == Path("pipeline.json"):
            one.pop("seconds"), two.pop("seconds")
        assert one == two, name
    frames = [pd.read_csv(runs[k] / "paper" / "variants.csv") for k in ("one", "two")]
    pd.testing.assert_frame_equal(*frames, check_exact=True)


def test_a_failure_on_one_rank_stops_every_rank_with_its_message(tmp_path: Path) -> None:
    spec = {"commands": [[*DETECT, "--model", "tiny-llama", "--out", str(tmp_path / "detect")]], "fail_rank": 1}
    start = time.perf_counter()
    done = launch(spec, tmp_path, 2, timeout=300)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr
    assert time.perf_counter() - start < 120  # no rank waits for the dead one until a collective times out
    assert not (tmp_path / "detect" / "scores.json").exists()


def test_a_run_killed_midway_resumes_from_its_partial_files(runs, tmp_path: Path) -> None:
    out = tmp_path / "detect"
    spec = {"commands": [[*DETECT, "--out", str(out)]]}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(
        [*command, str(DRIVER), str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((out / ".partial").glob("*.json")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    launcher = psutil.Process(run.pid)
    for process in [launcher, *launcher.children(recursive=True)]:  # preempted: the launcher and every rank die
        process.kill()
    run.wait()
    kept = len(list((out / ".partial").glob("*.json")))
    assert 1 <= kept < 4, f"{kept} of 4 samples finished before the kill"
    assert not (out / "scores.json").exists()
    done = launch(spec, tmp_path, 2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{kept} of 4 samples read back" in done.stdout + done.stderr
    assert RetrievalScores.load(out / "scores.json") == RetrievalScores.load(runs["one"] / "detect" / "scores.json")
    assert (out / "outcomes.csv").read_text() == (runs["one"] / "detect" / "outcomes.csv").read_text()
