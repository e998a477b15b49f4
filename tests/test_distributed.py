"""headscope.distributed without a launcher: cost-balanced shards, resumable maps, failures across ranks."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from headscope.cli import main
from headscope.distributed import World, balance, item_key, sharded_map, token_cost
from headscope.errors import ConfigError, ShardError


def _best_makespan(costs: list[float], n: int) -> float:
    return min(
        max(sum(c for c, s in zip(costs, shards, strict=True) if s == k) for k in range(n))
        for shards in itertools.product(range(n), repeat=len(costs))
    )


def test_balance_gives_each_item_to_one_shard_within_four_thirds_of_the_best_split() -> None:
    rng = random.Random(0)
    for _ in range(40):
        n = rng.choice([2, 3])
        costs = [float(rng.choice([1, 4, 9, 16, 64])) for _ in range(rng.randint(1, 7))]
        shards = balance(costs, n)
        assert sorted(i for shard in shards for i in shard) == list(range(len(costs)))
        assert all(shard == sorted(shard) for shard in shards)
        worst = max(sum(costs[i] for i in shard) for shard in shards)
        assert worst <= 4 / 3 * _best_makespan(costs, n) + 1e-9
        assert balance(costs, n) == shards  # every rank computes the same split


def test_balance_beats_round_robin_on_a_grid_of_lengths() -> None:
    """Needle grids list lengths in order; round-robin gives one rank all the long contexts' extra work."""
    costs = [token_cost(n, fused=False) for n in (1000, 2000, 4000, 8000) for _ in range(5)]
    worst = max(sum(costs[i] for i in shard) for shard in balance(costs, 2))
    robin = max(sum(costs[i::2]) for i in range(2))
    assert worst < robin and worst <= 1.01 * sum(costs) / 2


def test_a_resumed_map_reads_finished_items_back_and_computes_only_the_rest(tmp_path: Path) -> None:
    calls: list[int] = []

    def square(x: int) -> float:
        calls.append(x)
        if x == 3 and len(calls) < 5:
            raise RuntimeError("preempted")
        return x * x / 7

    keys = [item_key("square", x) for x in range(5)]
    with pytest.raises(RuntimeError, match="preempted"):
        sharded_map(square, range(5), keys=keys, partial=tmp_path, progress=False)
    assert calls == [0, 1, 2, 3] and len(list(tmp_path.glob("*.json"))) == 3
    again = sharded_map(square, range(5), keys=keys, partial=tmp_path, progress=False)
    assert calls[4:] == [3, 4]  # items 0-2 were read back, not recomputed
    assert again == [x * x / 7 for x in range(5)]  # floats round-trip exactly through the files
    assert json.loads((tmp_path / f"{keys[1]}.json").read_text()) == 1 / 7


def test_partial_files_need_keys_and_keys_must_match_the_items(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs keys="):
        sharded_map(abs, [1], partial=tmp_path)
    with pytest.raises(ConfigError, match="keys has 1 entries for 2 items"):
        sharded_map(abs, [1, 2], keys=["a"], partial=tmp_path)
    with pytest.raises(ConfigError, match="at least one shard"):
        balance([1.0], 0)


def _failing_rank(rank: int, store: str, out: str) -> None:
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def work(x: int) -> int:
        if rank == 1:
            raise ValueError("bad item on rank 1")
        time.sleep(0.2)  # rank 0 is still busy when rank 1 fails
        return x

    try:
        sharded_map(work, list(range(8)), progress=False)
        message = "finished"
    except (ShardError, ValueError) as error:
        message = f"{type(error).__name__}: {error}"
    Path(out, f"rank-{rank}.txt").write_text(message)


def test_a_failure_on_one_rank_raises_its_message_on_the_other_without_a_hang(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_failing_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank-1.txt").read_text() == "ValueError: bad item on rank 1"
    assert (tmp_path / "rank-0.txt").read_text() == "ShardError: rank 1 failed: ValueError: bad item on rank 1"


def test_a_one_process_world_runs_every_item_here() -> None:
    assert sharded_map(str, [1, 2], world=World(), progress=False) == ["1", "2"]


@pytest.mark.parametrize("command", [["compress", "--scores", "s.json"], ["compare", "a.json", "b.json"]])
def test_unsharded_commands_refuse_a_torchrun_launch(command, monkeypatch, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"headscope {command[0]} runs in one process, but WORLD_SIZE=2" in err and "sharded commands: main" in err
