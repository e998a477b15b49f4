"""``stability``: how sure a detected top k is, from a bootstrap over the answered samples.

A head's retrieval score is a mean over the samples the model answered, and with a few dozen
samples the top of the ranking can owe its order to which samples were drawn (Wu et al. note that
a few samples find only the strongest heads). :func:`stability` redraws the counted samples with
replacement, recomputes every head's mean on each resample and cuts each resample's top ``k``
exactly as :func:`~headscope.compare.head_set` does. Per head it reports a percentile interval of
its score and the share of resamples that put it in the top ``k``; :meth:`Stability.stable` keeps
the heads in the top ``k`` of at least 90% of resamples.

**What is resampled:** the counted samples, whole (the rows of
:attr:`RetrievalScores.per_sample <headscope.retrieval.RetrievalScores.per_sample>`), so the
scores of every head on one sample move together. The model and the sample set are fixed; a fresh
needle set is a new detection (``headscope main --seeds``, :func:`~headscope.compare.run_overlap`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from headscope.errors import ConfigError, InputTypeError
from headscope.heads import Head, as_heads
from headscope.results import Saved
from headscope.retrieval._scores import RetrievalScores

__all__ = ["STABLE_SHARE", "Stability", "stability"]

#: :meth:`Stability.stable`'s default: a head is stable when at least 90% of resamples put it in the top k.
STABLE_SHARE = 0.9
_CHUNK = 1 << 24  # resampled values held at once (128 MiB of float64)
#: A :class:`RetrievalScores`; :func:`stability` checks the type itself (InputTypeError), so any value passes here.
Scores = Any


@dataclass(frozen=True, eq=False)
class Stability(Saved):
    """Bootstrap of a retrieval ranking over samples: per head, a score interval and P(in the top k).

    ``score`` is each head's mean over the ``n_samples`` counted samples (the detection's score);
    ``low`` and ``high`` are the percentile bootstrap interval of that mean at ``confidence``
    (the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the ``n_boot``
    resampled means, NumPy's linear interpolation); ``p_top`` is the share of resamples whose
    top ``top_k`` holds the head. A resample's top ``k`` is :func:`~headscope.compare.head_set`'s:
    heads scoring above 0, best first, ties in (layer, head) order, so it may hold fewer than ``k``
    heads and a head scoring 0 is never in it. ``top`` is the top ``k`` of the detection itself.
    ``p_top`` is a Monte Carlo estimate: its standard error is at most ``0.5 / sqrt(n_boot)``
    (0.016 at 1,000 resamples).
    """

    model: str
    top_k: int
    n_boot: int
    seed: int
    confidence: float
    n_samples: int
    score: Float[Tensor, "layer head"]
    low: Float[Tensor, "layer head"]
    high: Float[Tensor, "layer head"]
    p_top: Float[Tensor, "layer head"]
    top: tuple[Head, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "top", tuple(as_heads(self.top)))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.score.shape[0], self.score.shape[1])

    def stable(self, threshold: float = STABLE_SHARE) -> list[Head]:
        """Heads in the top ``k`` of at least ``threshold`` of the resamples, most often first (then by score)."""
        if not 0 < threshold <= 1:
            raise ConfigError(f"threshold is a share of resamples in (0, 1]; got {threshold}")
        p, score = self.p_top.flatten().tolist(), self.score.flatten().tolist()
        n_heads = self.shape[1]
        chosen = [i for i, share in enumerate(p) if share >= threshold]
        return [Head(i // n_heads, i % n_heads) for i in sorted(chosen, key=lambda i: (-p[i], -score[i], i))]

    def to_frame(self) -> Any:
        """One row per head: layer, head, label, score, low, high, p_top, and whether it is in the detection's top k."""
        import pandas as pd

        n_layers, n_heads = self.shape
        top = set(self.top)
        heads = [Head(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        return pd.DataFrame(
            {
                "layer": [h.layer for h in heads],
                "head": [h.head for h in heads],
                "label": [str(h) for h in heads],
                "score": self.score.flatten().tolist(),
                "low": self.low.flatten().tolist(),
                "high": self.high.flatten().tolist(),
                "p_top": self.p_top.flatten().tolist(),
                "top": [h in top for h in heads],
            }
        )

    def plot(self, title: str | None = None, *, threshold: float = STABLE_SHARE, shown: int = 30) -> Any:
        """:func:`~headscope.viz.stability_figure`: P(top k) and the score interval of the likeliest heads."""
        from headscope.viz import stability_figure

        return stability_figure(
            self.to_frame(),
            top_k=self.top_k,
            threshold=threshold,
            shown=shown,
            title=title
            or f"how stable the top {self.top_k} is: {self.model}, {self.n_boot} resamples of {self.n_samples} samples",
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stability):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        stable = ", ".join(map(str, self.stable())) or "none"
        return (
            f"Stability({self.model}, top {self.top_k}, {self.n_boot} resamples of {self.n_samples} samples, "
            f"stable at {STABLE_SHARE:g}: {stable})"
        )


def _same(a: Any, b: Any) -> bool:
    return torch.equal(a, b) if isinstance(a, Tensor) else a == b


def stability(
    scores: Scores, *, top_k: int = 10, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Stability:
    """Bootstrap ``scores``' per-sample values: each head's score interval and P(in the top ``top_k``).

    Draws ``n_boot`` resamples of the counted samples, with replacement and as many as there are,
    from ``numpy.random.default_rng(seed)`` (``rng.integers(0, n, size=(n_boot, n))``); see the
    module docstring for what is and is not resampled, and :class:`Stability` for the result.
    ``scores`` must hold per-sample values (:func:`~headscope.retrieval.detect_retrieval_heads`
    keeps them by default, ``keep_per_sample=True``).

    >>> per = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 0.0, 1.0]], [[1.0, 0.5, 0.0]], [[1.0, 0.0, 1.0]]])
    >>> scores = RetrievalScores(per.sum(0), 4, 4, "m", "teacher_forced", per_sample=per)
    >>> result = stability(scores, top_k=1, n_boot=200)
    >>> result.p_top.tolist(), result.stable()
    ([[1.0, 0.0, 0.0]], [(0, 0)])
    >>> result.low[0, 2].item() <= 0.5 <= result.high[0, 2].item()
    True
    """
    if not isinstance(scores, RetrievalScores):
        raise InputTypeError(
            f"stability bootstraps a RetrievalScores (from detect_retrieval_heads); got a {type(scores).__name__}"
        )
    if scores.per_sample is None:
        raise ConfigError(
            "these scores kept no per-sample values, so there is nothing to resample; "
            "detect with keep_per_sample=True (detect_retrieval_heads' default)"
        )
    if scores.n_counted == 0:
        raise ConfigError("no sample was counted (the model answered none), so there is nothing to resample")
    if top_k < 1 or n_boot < 1:
        raise ConfigError(f"top_k and n_boot must be at least 1; got {top_k} and {n_boot}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must lie in (0, 1); got {confidence}")
    n = scores.n_counted
    if n == 1:
        warnings.warn(
            "a bootstrap over 1 sample draws that sample every time: every P(top k) is 0 or 1 and every "
            "interval a point; detect on more samples",
            UserWarning,
            stacklevel=2,
        )
    per = scores.per_sample.numpy().reshape(n, -1)
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = _resampled_means(per, draws)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    observed = scores.scores.numpy().reshape(1, -1)
    n_heads = scores.shape[1]
    order, chosen = _top_k(observed, top_k)
    top = [Head(int(i) // n_heads, int(i) % n_heads) for i in order[0][chosen[0]]]

    def grid(values: np.ndarray) -> Tensor:
        return torch.tensor(values, dtype=torch.float64).reshape(scores.shape)

    return Stability(
        model=scores.model,
        top_k=top_k,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
        n_samples=n,
        score=scores.scores.clone(),
        low=grid(low),
        high=grid(high),
        p_top=grid(_in_top(means, top_k).mean(0)),
        top=tuple(top),
    )


def _resampled_means(per: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """``[resample, head]`` means of the drawn rows of ``per`` (``[sample, head]``), a chunk of resamples at a time."""
    n_boot, n = draws.shape
    means = np.empty((n_boot, per.shape[1]))
    step = max(1, _CHUNK // (n * per.shape[1]))
    for first in range(0, n_boot, step):
        means[first : first + step] = per[draws[first : first + step]].mean(axis=1)
    return means


def _top_k(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``[row, head]`` values, :func:`~headscope.compare.head_set`'s top ``k``.

    Returns the ``k`` best flat head indices of each row, best first with ties in (layer, head)
    order, and which of them score above 0 (only those are in the set).
    """
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(values, order, axis=1) > 0


def _in_top(values: np.ndarray, k: int) -> np.ndarray:
    """``[row, head]`` booleans: the head is in that row's top ``k`` (:func:`_top_k`)."""
    order, chosen = _top_k(values, k)
    picked = np.zeros(values.shape, dtype=bool)
    rows = np.broadcast_to(np.arange(len(values))[:, None], order.shape)
    picked[rows[chosen], order[chosen]] = True
    return picked
