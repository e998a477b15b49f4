"""``RetrievalScores``: per-head retrieval scores kept as sums and counts, so runs merge exactly.

A head's retrieval score is the mean, over the samples the model answered, of that sample's
copy hits divided by its needle length (Wu et al. 2024). Storing the float hit sums and the
count of answered samples (not the means) makes results from separate runs, shards or machines
combine by plain addition: ``a + b`` or ``RetrievalScores.merge([...])``.

``score`` names what the sums hold: ``"copy"`` (the copy-paste hits above) or ``"mass"`` (each
sample's mean attention mass on the needle at the scored rows); only equal scores merge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from headscope._types import Choice
from headscope.errors import ConfigError, ModelMismatchError
from headscope.heads import Head, parse_head
from headscope.results import Saved, read_json, rebuild

__all__ = ["RETRIEVAL_THRESHOLD", "RetrievalScores", "Score"]

#: ``"copy"``: Wu et al.'s copy-paste hits per needle token; ``"mass"``: attention mass on the needle.
Score = Choice["copy", "mass"]

#: Wu et al.'s cut: heads scoring above 0.1 are retrieval heads.
RETRIEVAL_THRESHOLD = 0.1
_FORMAT = "headscope.RetrievalScores"  # how files were marked before every result saved through Saved


@dataclass(frozen=True, eq=False)
class RetrievalScores(Saved):
    """Retrieval scores of every head of one model, from one detection run or several merged.

    ``hit_sums[l, h]`` adds up, over counted samples, hits / needle length (``score="copy"``) or
    the mean needle mass at the scored rows (``score="mass"``); ``n_counted`` is the
    number of samples the model answered (the others are seen, ``n_samples``, but not scored);
    ``per_sample`` (optional) holds each counted sample's scores in order. ``mode`` and
    ``settings`` record how the scores were computed; only results with equal ones merge.

    >>> a = RetrievalScores(torch.tensor([[1.0, 0.0]], dtype=torch.float64), 2, 3, "m", "teacher_forced")
    >>> b = RetrievalScores(torch.tensor([[0.5, 0.5]], dtype=torch.float64), 1, 1, "m", "teacher_forced")
    >>> (a + b).scores
    tensor([[0.5000, 0.1667]], dtype=torch.float64)
    >>> (a + b).top(1)
    [((0, 0), 0.5)]
    """

    hit_sums: Float[Tensor, "..."]  # a [layer, head] grid: __post_init__ checks the shape (ConfigError)
    n_counted: int
    n_samples: int
    model: str
    mode: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    per_sample: Float[Tensor, "sample layer head"] | None = None
    score: Score = "copy"

    def __post_init__(self) -> None:
        if self.score not in ("copy", "mass"):
            raise ConfigError(f"score must be 'copy' or 'mass'; got {self.score!r}")
        sums = torch.as_tensor(self.hit_sums, dtype=torch.float64).detach().cpu()
        if sums.ndim != 2:
            raise ConfigError(f"hit_sums must be a [layer, head] grid; got shape {tuple(sums.shape)}")
        if not 0 <= self.n_counted <= self.n_samples:
            raise ConfigError(f"need 0 <= n_counted <= n_samples; got {self.n_counted} and {self.n_samples}")
        object.__setattr__(self, "hit_sums", sums)
        object.__setattr__(self, "settings", dict(self.settings))
        if self.per_sample is not None:
            per = torch.as_tensor(self.per_sample, dtype=torch.float64).detach().cpu()
            if per.shape != (self.n_counted, *sums.shape):
                raise ConfigError(
                    f"per_sample must be [n_counted, layer, head] = {[self.n_counted, *sums.shape]}; "
                    f"got {list(per.shape)}"
                )
            object.__setattr__(self, "per_sample", per)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hit_sums.shape[0], self.hit_sums.shape[1])

    @property
    def scores(self) -> Float[Tensor, "layer head"]:
        """Mean score per head over counted samples (NaN everywhere when no sample counted)."""
        if self.n_counted == 0:
            return torch.full_like(self.hit_sums, float("nan"))
        return self.hit_sums / self.n_counted

    def top(self, k: int) -> list[tuple[Head, float]]:
        """The ``k`` best heads with their scores, best first (ties in layer-major order)."""
        if k < 0:
            raise ConfigError(f"k must be >= 0; got {k}")
        ranked = self._ranked()
        return ranked[:k]

    def above(self, threshold: float = RETRIEVAL_THRESHOLD) -> list[tuple[Head, float]]:
        """Heads scoring strictly above ``threshold`` (Wu et al.'s retrieval heads at 0.1), best first."""
        return [(head, score) for head, score in self._ranked() if score > threshold]

    def _ranked(self) -> list[tuple[Head, float]]:
        if self.n_counted == 0:
            return []
        n_heads = self.shape[1]
        flat = self.scores.flatten().tolist()
        order = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
        return [(Head(i // n_heads, i % n_heads), flat[i]) for i in order]

    def __add__(self, other: RetrievalScores) -> RetrievalScores:
        if not isinstance(other, RetrievalScores):
            return NotImplemented
        mine = (self.model, self.mode, self.score, self.shape, self.settings)
        theirs = (other.model, other.mode, other.score, other.shape, other.settings)
        if mine != theirs:
            raise ModelMismatchError(
                f"only scores of the same model, mode, score, shape and settings merge; got {mine} and {theirs}"
            )
        per = None
        if self.per_sample is not None and other.per_sample is not None:
            per = torch.cat([self.per_sample, other.per_sample])
        return RetrievalScores(
            self.hit_sums + other.hit_sums,
            self.n_counted + other.n_counted,
            self.n_samples + other.n_samples,
            self.model,
            self.mode,
            self.settings,
            per,
            self.score,
        )

    @classmethod
    def merge(cls, parts: Iterable[RetrievalScores]) -> RetrievalScores:
        """Combine shards in order (per-sample scores are kept only if every shard has them)."""
        parts = list(parts)
        if not parts:
            raise ConfigError("merge needs at least one RetrievalScores; got none")
        return reduce(lambda a, b: a + b, parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetrievalScores):
            return NotImplemented
        same_per = (self.per_sample is None and other.per_sample is None) or (
            self.per_sample is not None
            and other.per_sample is not None
            and torch.equal(self.per_sample, other.per_sample)
        )
        return (
            torch.equal(self.hit_sums, other.hit_sums)
            and (self.n_counted, self.n_samples, self.model, self.mode, self.score, self.settings)
            == (other.n_counted, other.n_samples, other.model, other.mode, other.score, other.settings)
            and same_per
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        best = ", ".join(f"{head}={score:.3f}" for head, score in self.top(3))
        return (
            f"RetrievalScores({self.model}, {self.mode}, {self.score}, {self.shape[0]}x{self.shape[1]} heads, "
            f"{self.n_counted}/{self.n_samples} samples counted, top: {best or 'none'})"
        )

    def to_frame(self) -> Any:
        """Long frame: one row per head with layer, head, label, value (the score), hit_sum, n_counted."""
        import pandas as pd

        n_layers, n_heads = self.shape
        layers = [layer for layer in range(n_layers) for _ in range(n_heads)]
        heads = [head for _ in range(n_layers) for head in range(n_heads)]
        return pd.DataFrame(
            {
                "layer": layers,
                "head": heads,
                "label": [str(Head(layer, head)) for layer, head in zip(layers, heads, strict=True)],
                "value": self.scores.flatten().tolist(),
                "hit_sum": self.hit_sums.flatten().tolist(),
                "n_counted": self.n_counted,
            }
        )

    def plot(self, title: str | None = None, *, threshold: float | None = RETRIEVAL_THRESHOLD) -> Any:
        """:func:`~headscope.viz.head_map` of the scores (above ``threshold`` outlined); hover shows the samples."""
        from headscope.viz import head_map

        counts = torch.full(self.shape, self.n_counted).numpy()
        return head_map(
            self.scores,
            title=title or f"retrieval scores: {self.model} ({self.mode}, {self.score}, {self.n_counted} samples)",
            value_name="retrieval score" if self.score == "copy" else "needle attention mass",
            extra={"n samples": counts},
            threshold=threshold,
        )

    @classmethod
    def load(cls, path: str | Path) -> RetrievalScores:
        """Read a file written by :meth:`save`, including files from before results shared one format."""
        data = read_json(path, "the JSON file that RetrievalScores.save writes")
        if isinstance(data, dict) and data.get("format") == _FORMAT:
            return rebuild(path, cls, lambda: _from_v1(data))
        if not isinstance(data, dict) or "headscope" not in data:
            raise ConfigError(
                f"{path} is not a saved RetrievalScores (no 'headscope' key); for Wu et al.'s files use from_wu_json"
            )
        return super().load(path)

    def to_wu_json(self, path: str | Path) -> Path:
        """Write Wu et al.'s ``{"layer-head": [score of each counted sample]}`` file."""
        if self.per_sample is None:
            raise ConfigError(
                "these scores kept no per-sample values; detect with keep_per_sample=True to write Wu's format"
            )
        n_layers, n_heads = self.shape
        data = {
            f"{layer}-{head}": self.per_sample[:, layer, head].tolist()
            for layer in range(n_layers)
            for head in range(n_heads)
        }
        path = Path(path)
        path.write_text(json.dumps(data))
        return path

    @classmethod
    def from_wu_json(
        cls, path: str | Path, *, model: str = "unknown", settings: Mapping[str, Any] | None = None
    ) -> RetrievalScores:
        """Read a Wu et al. score file (their ``head_score/*.json``); every list is one counted sample each.

        The grid size comes from the largest layer and head keys; ``mode`` is ``"wu"``.
        """
        expected = "a Wu et al. score file: a non-empty {'layer-head': [score per sample]} JSON object"
        data = read_json(path, expected)
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{path} is not {expected}")
        bad = [key for key, values in data.items() if not _numbers(values)]
        if bad:
            raise ConfigError(f"{path} is not {expected}: the values of {bad[:5]} are not lists of numbers")
        heads = {rebuild(path, cls, lambda key=key: parse_head(key)): values for key, values in data.items()}
        lengths = {len(v) for v in heads.values()}
        if len(lengths) != 1:
            raise ConfigError(f"{path}: heads have different numbers of per-sample scores {sorted(lengths)}")
        n_layers = 1 + max(layer for layer, _ in heads)
        n_heads = 1 + max(head for _, head in heads)
        if len(heads) != n_layers * n_heads:
            raise ConfigError(f"{path}: holds {len(heads)} heads, expected all {n_layers}x{n_heads}")
        (n,) = lengths
        per = torch.zeros(n, n_layers, n_heads, dtype=torch.float64)
        for (layer, head), values in heads.items():
            per[:, layer, head] = torch.tensor(values, dtype=torch.float64)
        return cls(per.sum(0), n, n, model, "wu", settings or {}, per)


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _from_v1(data: Mapping[str, Any]) -> RetrievalScores:
    """Scores from a file in the first format (``"format": "headscope.RetrievalScores"``, plain lists)."""
    shape = (len(data["hit_sums"]), len(data["hit_sums"][0]) if data["hit_sums"] else 0)
    per = data["per_sample"]
    return RetrievalScores(
        torch.tensor(data["hit_sums"], dtype=torch.float64),
        int(data["n_counted"]),
        int(data["n_samples"]),
        data["model"],
        data["mode"],
        data["settings"],
        None if per is None else torch.tensor(per, dtype=torch.float64).reshape(len(per), *shape),
        data.get("score", "copy"),  # files written before scores had names hold copy scores
    )
