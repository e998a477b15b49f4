"""``KVPolicy``: which key/value heads keep the whole cache, and which keep only a sink and a window.

DuoAttention (Xiao et al. 2024) keeps a full KV cache for its retrieval heads and, for every other
KV head, only the first ``sink`` tokens (the attention sinks of StreamingLLM) and the most recent
``window`` tokens. The decision is per KV head: under grouped-query attention one KV head serves
``kv_group`` query heads, so per-query-head scores are pooled over each group with
:func:`~headscope.compare._loaded.pool_kv`, by ``max`` by default (a KV head must keep its keys
whenever any query head reading it retrieves; a mean or a sum would let a group of several weak
heads outrank one strong retrieval head).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.compare._loaded import LoadedHeads, Pool, cut, expand_kv, pool_kv
from headscope.errors import ConfigError, HeadIndexError
from headscope.heads import Head, HeadSet, as_heads
from headscope.results import Saved
from headscope.retrieval._scores import RetrievalScores

__all__ = ["CacheBytes", "KVPolicy", "kv_order", "kv_policy"]

#: StreamingLLM's four attention-sink tokens, and a recent window that holds a chat question.
SINK, WINDOW = 4, 256


class CacheBytes(NamedTuple):
    """Bytes of keys and values a cache holds: ``compressed`` under a policy, ``full`` without one."""

    compressed: int
    full: int

    @property
    def ratio(self) -> float:
        """``full / compressed``: how many times less memory the compressed cache takes."""
        return self.full / self.compressed if self.compressed else float("inf")


@dataclass(frozen=True, eq=False)
class KVPolicy(Saved):
    """Which KV heads of each layer keep the full cache (``full[layer, kv_head]``); the rest keep ``sink`` + ``window``.

    A streaming KV head stores the keys and values of the first ``sink`` positions and of the
    last ``window`` positions (the current one included), and its query heads attend to exactly
    those, in the prefill too. ``kv_scores`` are the pooled scores the policy was cut from
    (``None`` when it came from a head set); ``n_heads`` query heads share the ``full.shape[1]``
    KV heads of a layer, ``d_head`` wide. :func:`kv_policy` builds one.

    >>> policy = KVPolicy(torch.tensor([[True, False], [False, False]]), 4, 16, sink=4, window=8)
    >>> policy.n_full, policy.fraction, policy.query_heads().labels
    (1, 0.25, ('L0H0', 'L0H1'))
    >>> policy.bytes(100, torch.float32)   # 1 full KV head of 100 tokens, 3 of 4 + 8 tokens; K and V, 16 wide
    CacheBytes(compressed=17408, full=51200)
    """

    full: Bool[Tensor, "layer kv_head"]
    n_heads: int
    d_head: int
    sink: int = SINK
    window: int = WINDOW
    kv_scores: Float[Tensor, "layer kv_head"] | None = None
    pool: str = "max"
    source: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        full = torch.as_tensor(self.full).detach().cpu()
        if full.dtype != torch.bool or full.ndim != 2:
            raise ConfigError(f"full must be a boolean [layer, kv_head] grid; got {full.dtype} {tuple(full.shape)}")
        object.__setattr__(self, "full", full)
        if self.n_heads % full.shape[1]:
            raise ConfigError(f"{self.n_heads} query heads do not split over {full.shape[1]} KV heads")
        _check_window(self.sink, self.window)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_kv_heads)``."""
        return (self.full.shape[0], self.full.shape[1])

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.full.shape[1]

    @property
    def n_full(self) -> int:
        """How many KV heads keep the full cache."""
        return int(self.full.sum())

    @property
    def fraction(self) -> float:
        """The share of KV heads that keep the full cache."""
        return self.n_full / self.full.numel()

    def full_kv_heads(self) -> list[tuple[int, int]]:
        """``(layer, kv_head)`` of every full KV head, in layer order."""
        return [(int(layer), int(kv)) for layer, kv in self.full.nonzero().tolist()]

    def query_heads(self) -> HeadSet:
        """The query heads that read a full KV head (all ``group`` heads of each)."""
        heads = [Head(layer, kv * self.group + i) for layer, kv in self.full_kv_heads() for i in range(self.group)]
        return HeadSet(tuple(heads), (self.shape[0], self.n_heads))

    def bytes(self, n_tokens: int, dtype: torch.dtype = torch.float32, *, batch: int = 1) -> CacheBytes:
        """Bytes of keys and values held after ``n_tokens`` positions, with this policy and without it.

        A full KV head holds ``n_tokens`` positions, a streaming one ``min(n_tokens, sink + window)``;
        each position costs a key and a value of ``d_head`` numbers of ``dtype``.
        """
        if n_tokens < 0:
            raise ConfigError(f"n_tokens must be >= 0; got {n_tokens}")
        per_position = 2 * batch * self.d_head * torch.empty((), dtype=dtype).element_size()
        kept = min(n_tokens, self.sink + self.window)
        n_stream = self.full.numel() - self.n_full
        return CacheBytes(
            per_position * (self.n_full * n_tokens + n_stream * kept), per_position * self.full.numel() * n_tokens
        )

    def to_frame(self) -> Any:
        """One row per KV head: layer, kv_head, label (``L3K1``), score (NaN without scores), full."""
        import pandas as pd

        scores = self.kv_scores if self.kv_scores is not None else torch.full(self.shape, float("nan"))
        return pd.DataFrame(
            [
                {
                    "layer": layer,
                    "kv_head": kv,
                    "label": f"L{layer}K{kv}",
                    "score": float(scores[layer, kv]),
                    "full": bool(self.full[layer, kv]),
                }
                for layer in range(self.shape[0])
                for kv in range(self.shape[1])
            ]
        )

    def plot(self, title: str = "") -> Any:
        """A layer x query-head map: 1 where the head reads a KV head with the full cache, 0 where it streams."""
        from headscope.viz import head_map

        return head_map(
            expand_kv(self.full.double().numpy(), self.group),
            title=title
            or f"{self.n_full} of {self.full.numel()} KV heads full (sink {self.sink}, window {self.window})",
            value_name="full cache",
        )

    def __repr__(self) -> str:
        return (
            f"KVPolicy({self.n_full} of {self.full.numel()} KV heads full, sink={self.sink}, window={self.window}"
            f"{f', from {self.source}' if self.source else ''})"
        )


def kv_policy(
    source: Any,
    model: Any,
    *,
    full_fraction: float | None = None,
    sink: int = SINK,
    window: int = WINDOW,
    pool: Pool = "max",
) -> KVPolicy:
    """The KV heads that keep the full cache, chosen from scores or from a head set.

    ``source`` is scores (:class:`~headscope.retrieval.RetrievalScores`, a
    :class:`~headscope.compare.LoadedHeads` with scores, or a ``[layer, head]`` grid; a
    ``[layer, kv_head]`` grid such as DuoAttention's is taken as it is) or heads (a head set, a
    list of heads, a :class:`~headscope.compare.LoadedHeads` without scores). Query-head scores
    are pooled per KV head by ``pool`` (``"max"``, the default, see the module docstring; or
    ``"mean"``, ``"sum"``); the best ``round(full_fraction * n_kv_heads)`` KV heads over all
    layers keep the full cache (ties in layer order). Heads make their KV heads full: all of
    them, or with ``full_fraction`` the first that many in the order given. ``model`` is a model
    or its :class:`~headscope.models.ModelInfo`. Every other KV head keeps ``sink`` + ``window``.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")                      # 2 layers, 4 query heads on 2 KV heads
    >>> scores = torch.tensor([[0.0, 0.9, 0.1, 0.2], [0.3, 0.3, 0.0, 0.0]])
    >>> kv_policy(scores, model, full_fraction=0.5).full_kv_heads()   # max-pooled: 0.9, 0.2 / 0.3, 0.0
    [(0, 0), (1, 0)]
    >>> kv_policy(["L1H3"], model, window=8)
    KVPolicy(1 of 4 KV heads full, sink=4, window=8, from heads)
    """
    from headscope.models import ModelInfo, model_info

    info = model if isinstance(model, ModelInfo) else model_info(model)
    _check_window(sink, window)
    if full_fraction is not None and not (isinstance(full_fraction, (int, float)) and 0 <= full_fraction <= 1):
        raise ConfigError(f"full_fraction must lie in [0, 1]; got {full_fraction!r}")
    if pool not in ("max", "mean", "sum"):
        raise ConfigError(f"pool must be 'max', 'mean' or 'sum'; got {pool!r}")
    n_kv = info.n_layers * info.n_kv_heads
    kv_grid, order, what = kv_order(source, info, pool)
    if full_fraction is None:
        if kv_grid is not None:
            raise ConfigError("scores need full_fraction= (the share of KV heads that keep the full cache, e.g. 0.5)")
        n_full = len(order)
    else:
        n_full = round(full_fraction * n_kv)
        if n_full > len(order):
            given = "scored (not NaN)" if kv_grid is not None else "read by these heads"
            raise ConfigError(
                f"full_fraction={full_fraction} asks for {n_full} of {n_kv} KV heads, but only {len(order)} are "
                f"{given}: give a smaller fraction{'' if kv_grid is not None else ' or scores to rank every KV head'}"
            )
    full = torch.zeros((info.n_layers, info.n_kv_heads), dtype=torch.bool)
    for layer, kv in order[:n_full]:
        full[layer, kv] = True
    return KVPolicy(
        full,
        info.n_heads,
        info.d_head,
        sink,
        window,
        None if kv_grid is None else torch.from_numpy(kv_grid),
        pool,
        what,
        info.name,
    )


def kv_order(source: Any, info: Any, pool: str = "max") -> tuple[np.ndarray | None, list[tuple[int, int]], str]:
    """``(pooled [layer, kv_head] scores or None, KV heads best first, what the source was)``.

    Scores rank every KV head they score (NaN never); heads give their KV heads in the order listed.
    """
    shape, kv_shape, group = (info.n_layers, info.n_heads), (info.n_layers, info.n_kv_heads), info.kv_group
    grid, what = _grid(source)
    if grid is None:
        listed = as_heads(source.ranked if isinstance(source, LoadedHeads) else source)
        HeadSet(tuple(listed), shape)  # every head inside the model
        return None, list(dict.fromkeys((h.layer, h.head // group) for h in listed)), what
    if grid.shape == kv_shape and kv_shape != shape:
        kv = grid
    elif grid.shape == shape:
        kv = pool_kv(grid, group, pool)  # type: ignore[arg-type]
    else:
        raise HeadIndexError(
            f"scores must be a [layer, head] grid of this {shape[0]}x{shape[1]} model (or [layer, kv_head], "
            f"{kv_shape[0]}x{kv_shape[1]}); got {grid.shape[0]}x{grid.shape[1]}"
        )
    return kv, cut(kv, top_k=kv.size), what


def _grid(source: Any) -> tuple[np.ndarray | None, str]:
    """The score grid of ``source`` and a word for it, or ``(None, "heads")`` for a head set."""
    if isinstance(source, RetrievalScores):
        if source.n_counted == 0:
            raise ConfigError(
                "these RetrievalScores counted no sample (the model answered none), so no head has a score"
            )
        return source.scores.numpy(), f"{source.score} scores"
    if isinstance(source, LoadedHeads):
        if source.scores is None and source.kv_scores is None:
            return None, "heads"
        grid = source.kv_scores if source.kv_scores is not None else source.scores  # DuoAttention's own values
        return grid.double().numpy(), f"{source.format} scores"  # type: ignore[union-attr]
    if isinstance(source, (torch.Tensor, np.ndarray)):
        grid = source.detach().cpu().double().numpy() if isinstance(source, torch.Tensor) else source.astype(float)
        if grid.ndim != 2:
            raise ConfigError(f"scores must be a 2-d grid; got shape {grid.shape}")
        return grid, "scores"
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise ConfigError(
            f"give scores (RetrievalScores, LoadedHeads, a [layer, head] grid) or heads; got {type(source).__name__}"
        )
    return None, "heads"


def _check_window(sink: Any, window: Any) -> None:
    if not isinstance(sink, int) or isinstance(sink, bool) or sink < 0:
        raise ConfigError(f"sink must be an int >= 0 (attention-sink tokens kept); got {sink!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ConfigError(f"window must be an int >= 1 (recent tokens kept, the current one included); got {window!r}")
