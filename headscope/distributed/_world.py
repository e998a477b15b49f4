"""The process group a sharded job runs in: who am I, how many are we, which backend.

``torchrun`` (and Slurm's ``srun`` through it) starts one process per GPU or CPU slot and tells
each its place through environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``...). :func:`init_world` joins that group once, with gloo on CPU and nccl on CUDA;
:func:`current_world` reads it back anywhere. Without a launcher both give a world of one process,
so every sharded code path is also the one-process path.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from headscope.errors import ConfigError

__all__ = ["World", "current_world", "init_world", "rank_device"]

#: How long a collective may wait for a rank before torch gives up. Ranks only meet once every
#: rank has finished its share (:func:`~headscope.distributed.sharded_map` waits on the store
#: before it gathers), so this bounds a rank that died without a word, not a slow shard.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` processes (``local_rank`` on its node), and the backend.

    >>> World().main, World(rank=1, size=2).main
    (True, False)
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0, the one that writes files, prints reports and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """The initialised ``torch.distributed`` group as a :class:`World`; one process when there is none."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return World(dist.get_rank(), dist.get_world_size(), local, str(dist.get_backend()))


def init_world(device: str | torch.device = "cpu") -> World:
    """Join the process group a launcher describes, or stay one process.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) this initialises
    ``torch.distributed`` with gloo for a CPU ``device`` and nccl for CUDA (each rank on
    ``cuda:LOCAL_RANK``), and leaves it when the process exits. An already initialised group is
    kept as it is, whatever its backend, so a process joins once and may run several commands.

    >>> init_world("cpu")  # no launcher: one process
    World(rank=0, size=1, local_rank=0, backend=None)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return current_world()
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={size} asks for {size} processes, but this torch has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local} has no GPU: this node has {torch.cuda.device_count()}; "
                f"start at most that many processes per node (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    atexit.register(_leave)  # once, at exit: a group torn down and joined again would wait on stale store keys
    return current_world()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: str | torch.device, world: World) -> str:
    """This rank's device: a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK`` in a sharded run.

    >>> rank_device("cuda", World(rank=3, size=4, local_rank=1)), rank_device("cpu", World(1, 2, 1))
    ('cuda:1', 'cpu')
    """
    text = str(device)
    if text == "cuda" and world.distributed:
        return f"cuda:{world.local_rank}"
    return text
