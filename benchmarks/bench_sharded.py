"""``headscope main`` as one process with N threads against N ``torchrun`` processes with one thread each.

Both runs detect on the same needle grid (SmolLM2-135M-Instruct, generation on the fused route)
into their own folders; the script times each whole command (interpreter start and model load
included, as a user sees it), checks that both wrote equal scores, and prints the ratio.

    python benchmarks/bench_sharded.py                       # 2 threads vs 2 x 1 thread
    python benchmarks/bench_sharded.py --ranks 4 --lengths 1000 2000 4000

The grid's samples differ in length, so the ranks get cost-balanced shares (tokens on the fused
route), not equal counts; the sharded time includes each rank loading its own copy of the model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="processes (and the one process's threads)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--depths", type=int, nargs="+", default=[0, 25, 50, 75, 100])
    args = parser.parse_args()
    grid = ["--lengths", *map(str, args.lengths), "--depths", *map(str, args.depths)]
    from headscope.retrieval import RetrievalScores

    with tempfile.TemporaryDirectory() as root:
        one, many = Path(root, "one"), Path(root, "many")
        main = ["-m", "headscope", "main", *grid]
        t_one = _run([sys.executable, *main, "--out", str(one)], args.ranks)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.ranks)]
        t_many = _run([sys.executable, *launcher, *main, "--out", str(many)], 1)
        same = RetrievalScores.load(one / "scores.json") == RetrievalScores.load(many / "scores.json")
        n = RetrievalScores.load(one / "scores.json").n_samples
    print(f"headscope main, {n} samples (lengths {args.lengths}, depths {args.depths}), SmolLM2 on the fused route")
    print(f"1 process x {args.ranks} threads: {t_one:7.1f} s")
    print(f"{args.ranks} processes x 1 thread: {t_many:7.1f} s")
    print(f"sharded / one process: time {t_many / t_one:.2f}x; scores equal: {same}")


if __name__ == "__main__":
    main()
