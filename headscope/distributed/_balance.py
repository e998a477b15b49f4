"""Split work items over ranks so each rank's share costs about the same.

Needle samples of 1k and 8k tokens are not equal work: eager attention grows with the square
of the context (the n x n patterns), the fused route about linearly. Round-robin would leave
one rank with the long samples while the others wait; :func:`balance` assigns the most costly
items first, each to the rank with the least work so far (Graham's LPT rule, within 4/3 of the
best split).
"""

from __future__ import annotations

from collections.abc import Sequence

from headscope.errors import ConfigError

__all__ = ["balance", "token_cost"]


def token_cost(n_tokens: int, *, fused: bool) -> float:
    """The work of one forward over ``n_tokens``: tokens on the fused route, tokens squared on the eager one.

    >>> token_cost(1000, fused=True), token_cost(1000, fused=False)
    (1000.0, 1000000.0)
    """
    return float(n_tokens if fused else n_tokens * n_tokens)


def balance(costs: Sequence[float], n_shards: int) -> list[list[int]]:
    """Item indices per shard: most costly first to the least loaded shard; each shard in item order.

    Deterministic (ties go to the lower index and the lower shard), so every rank computes the
    same split. A shard is empty when there are fewer items than shards.

    >>> balance([8, 1, 1, 1, 1, 4, 4], 2)
    [[0, 1, 3], [2, 4, 5, 6]]
    >>> balance([1.0], 3)
    [[0], [], []]
    """
    if n_shards < 1:
        raise ConfigError(f"need at least one shard; got {n_shards}")
    bad = [c for c in costs if not c >= 0]
    if bad:
        raise ConfigError(f"item costs must be numbers >= 0; got {bad[0]}")
    loads = [0.0] * n_shards
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        shard = min(range(n_shards), key=lambda s: (loads[s], s))
        loads[shard] += costs[index]
        shards[shard].append(index)
    return [sorted(shard) for shard in shards]
