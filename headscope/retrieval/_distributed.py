"""Shards by hand: split samples yourself, score each shard in its own process, merge the sums.

Scores are sums and counts, so shards merge exactly by addition. Either save each shard's
:class:`RetrievalScores` and ``RetrievalScores.merge`` the loaded files, or, inside a
``torch.distributed`` job (gloo on CPU works), call :func:`all_gather_scores` on every rank.
``detect_retrieval_heads(..., distributed=True)`` does all of it (cost-balanced shards, resume
files, merge in sample order; :mod:`headscope.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from headscope.errors import ConfigError
from headscope.retrieval._scores import RetrievalScores

__all__ = ["all_gather_scores", "shard_samples"]

T = TypeVar("T")


def shard_samples(samples: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Contiguous block ``rank`` of ``world_size`` near-equal blocks, so merging in rank order keeps sample order.

    >>> shard_samples(list(range(5)), 0, 2), shard_samples(list(range(5)), 1, 2)
    ([0, 1], [2, 3, 4])
    """
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, world_size={world_size}); got {rank}")
    if world_size > len(samples):
        raise ConfigError(f"cannot split {len(samples)} samples into {world_size} non-empty shards")
    n = len(samples)
    return list(samples[n * rank // world_size : n * (rank + 1) // world_size])


def all_gather_scores(scores: RetrievalScores, group: Any = None) -> RetrievalScores:
    """Merge every rank's scores (in rank order) on every rank of an initialised process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("all_gather_scores needs torch.distributed.init_process_group(...) first")
    parts: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, scores.to_dict(), group=group)
    return RetrievalScores.merge(RetrievalScores.from_dict(p) for p in parts)
