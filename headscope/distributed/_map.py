"""``sharded_map``: one function over many work items, split over the ranks, merged in item order.

Every sharded headscope job (detection, knockout curves, patching comparisons, the paper's
variants) is a list of independent items whose results merge in item order. ``sharded_map``:

1. skips items whose result a previous, interrupted run already wrote (``partial=`` folder, one
   JSON file per item, written atomically as each item finishes);
2. splits the rest over the ranks by cost (:func:`~headscope.distributed.balance`);
3. runs this rank's items, showing a progress bar on rank 0 only;
4. waits on the process group's store until every rank has finished or one has failed, so a
   failure never leaves the others blocked in a collective: every rank raises
   :class:`~headscope.errors.ShardError` with the failing rank's message;
5. gathers every result onto every rank and returns them in item order.

Results travel and persist as JSON (``encode`` / ``decode``), so a resumed run and a fresh one
hand the caller the same values, bit for bit (floats round-trip exactly through ``repr``).
With one process (no launcher) it is a plain loop, with the same partial files.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

from headscope.distributed._balance import balance
from headscope.distributed._world import World, current_world
from headscope.errors import ConfigError, ShardError

__all__ = ["abort", "finish", "item_key", "sharded_map"]

T = TypeVar("T")
R = TypeVar("R")

_calls = itertools.count()  # every rank makes the same calls in the same order, so this names a call on all of them
_PREFIX = "headscope/sharded"
_POLL_S = 0.05


def item_key(*parts: Any) -> str:
    """A short, stable file name for one work item from what determines its result.

    >>> item_key("detect", {"mode": "generation"}, "prompt text")
    'de0ec5f97c21104c0795'
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def sharded_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    keys: Sequence[str] | None = None,
    costs: Sequence[float] | None = None,
    partial: str | Path | None = None,
    encode: Callable[[R], Any] = lambda r: r,
    decode: Callable[[Any], R] = lambda r: r,
    context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    desc: str = "",
    unit: str = "item",
    progress: bool = True,
    world: World | None = None,
) -> list[R]:
    """``[fn(item) for item in items]``, split over the ranks of the current process group.

    - ``keys``: one file name per item (:func:`item_key` of what determines its result); needed
      with ``partial``. Two items with one key share one result.
    - ``costs``: relative work per item (:func:`~headscope.distributed.token_cost`); default 1 each.
    - ``partial``: a folder for one result file per finished item; items whose file exists are
      read, not recomputed. Every rank must see the folder (a shared file system across nodes).
    - ``encode`` / ``decode``: a result to JSON-ready values and back; every result goes through
      both, resumed or not, so all ranks and all runs hold the same values.
    - ``context``: entered once around this rank's items (say, the fused-attention session).
    - ``world``: the ranks to split over; default the current group. ``World()`` runs every item
      here, inside a group whose sharding the caller does itself.

    Every rank must call ``sharded_map`` with the same items, in the same order as its other
    sharded calls. Returns every item's result, in item order, on every rank.

    >>> sharded_map(lambda x: x * x, [1, 2, 3], progress=False)
    [1, 4, 9]
    """
    world = current_world() if world is None else world
    call = next(_calls) if world.distributed else -1  # a map one rank runs alone must not shift the others' ids
    if partial is not None and keys is None:
        raise ConfigError("sharded_map(partial=...) needs keys=, one file name per item")
    if keys is not None and len(keys) != len(items):
        raise ConfigError(f"keys has {len(keys)} entries for {len(items)} items")
    if costs is not None and len(costs) != len(items):
        raise ConfigError(f"costs has {len(costs)} entries for {len(items)} items")
    folder = Path(partial) if partial is not None else None
    done: dict[int, Any] = {}
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        found = _agree(
            world, call, lambda: [i for i, key in enumerate(keys or ()) if (folder / f"{key}.json").is_file()]
        )
        done = {i: json.loads((folder / f"{keys[i]}.json").read_text()) for i in found}  # type: ignore[index]
    if done and progress and world.main:
        tqdm.write(f"{desc}: {len(done)} of {len(items)} {unit}s read back from {folder} (an earlier run's)")
    todo = [i for i in range(len(items)) if i not in done]
    weights = [1.0 if costs is None else float(costs[i]) for i in todo]
    mine = [todo[j] for j in balance(weights, world.size)[world.rank]]
    label = f"{desc} (rank 0 of {world.size})" if world.distributed else desc
    bar = tqdm(total=len(mine), desc=label, unit=unit, disable=not (progress and world.main))
    computed: dict[int, Any] = {}
    try:
        with bar, context():
            for i in mine:
                computed[i] = json.loads(json.dumps(encode(fn(items[i]))))  # as a resumed run reads it back
                if folder is not None:
                    _write(folder / f"{keys[i]}.json", computed[i])  # type: ignore[index]
                bar.update()
                _check_peers(world, call)
    except ShardError:
        raise
    except BaseException as error:
        if world.distributed:
            abort(error, call=call)
        raise
    _wait_for_peers(world, call)
    for part in _gather(world, computed):
        done.update(part)
    return [decode(done[i]) for i in range(len(items))]


def finish(world: World | None = None) -> None:
    """Wait until every rank gets here, or raise :class:`ShardError` if one failed on the way.

    The end of a sharded command: rank 0 may still be writing files after the last gather, and
    a failure there must reach the other ranks instead of leaving them in a barrier.
    """
    world = current_world() if world is None else world
    if world.distributed:
        _wait_for_peers(world, next(_calls))


def _write(path: Path, value: Any) -> None:
    """Write JSON atomically: a preempted rank leaves either no file or a whole one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def _store(world: World) -> Any:
    if not world.distributed:
        return None
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


def abort(error: BaseException, *, call: int | None = None) -> None:
    """Tell the other ranks this one failed, so they raise its message instead of waiting for it.

    Called by :func:`sharded_map` on any exception in this rank's items, and by the command
    line on any error; a no-op in one process. ``call`` names the sharded call that failed
    (default: every later one).
    """
    world = current_world()
    store = _store(world)
    if store is None:
        return
    message = f"{type(error).__name__}: {' '.join(str(error).split())}" if str(error) else type(error).__name__
    payload = pickle.dumps((world.rank, message, traceback.format_exc()))
    store.set(f"{_PREFIX}/error", payload)
    if call is not None:
        store.set(f"{_PREFIX}/{call}/error", payload)


def _failure(store: Any, call: int) -> ShardError | None:
    for key in (f"{_PREFIX}/{call}/error", f"{_PREFIX}/error"):
        if store.check([key]):
            rank, message, _ = pickle.loads(store.get(key))
            return ShardError(f"rank {rank} failed: {message}")
    return None


def _agree(world: World, call: int, decide: Callable[[], Any]) -> Any:
    """Rank 0's ``decide()``, on every rank; the others wait for it on the store (or for a failure).

    Which items an earlier run finished must be read once: a rank that listed the folder after
    another rank had written its first new file would split the rest differently.
    """
    store = _store(world)
    if store is None:
        return decide()
    key = f"{_PREFIX}/{call}/agreed"
    if world.main:
        try:
            value = decide()
        except BaseException as error:
            abort(error, call=call)
            raise
        store.set(key, pickle.dumps(value))
        return value
    while not store.check([key]):
        if (failure := _failure(store, call)) is not None:
            raise failure
        time.sleep(_POLL_S)
    return pickle.loads(store.get(key))


def _check_peers(world: World, call: int) -> None:
    """Between items: stop at once if another rank has failed."""
    store = _store(world)
    if store is not None and (failure := _failure(store, call)) is not None:
        raise failure


def _wait_for_peers(world: World, call: int) -> None:
    """Block until every rank has finished its share of ``call`` (then gather) or one has failed (then raise)."""
    store = _store(world)
    if store is None:
        return
    store.set(f"{_PREFIX}/{call}/done/{world.rank}", b"1")
    keys = [f"{_PREFIX}/{call}/done/{rank}" for rank in range(world.size)]
    while not store.check(keys):
        if (failure := _failure(store, call)) is not None:
            raise failure
        time.sleep(_POLL_S)
    if (failure := _failure(store, call)) is not None:
        raise failure


def _gather(world: World, computed: dict[int, Any]) -> list[dict[int, Any]]:
    if not world.distributed:
        return [computed]
    import torch.distributed as dist

    parts: list[Any] = [None] * world.size
    dist.all_gather_object(parts, computed)
    return parts
