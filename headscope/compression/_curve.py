"""Compression curves: answer accuracy against the share of KV heads that keep the full cache."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from headscope.compare._loaded import Pool
from headscope.compare._permutation import sign_flip_test
from headscope.compression._decode import check_model, generate_compressed
from headscope.compression._policy import SINK, WINDOW, KVPolicy, _check_window, kv_order
from headscope.errors import ConfigError
from headscope.models import model_info
from headscope.results import Saved
from headscope.tasks import Sample

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["CompressionCurve", "compression_curve"]

Success = Callable[[Sample, str], bool]
FULL = "full attention"


@dataclass(frozen=True)
class CompressionCurve(Saved):
    """Answer success with ``round(f * n_kv_heads)`` KV heads full, for each ``f`` in ``fractions``, run by run.

    ``runs`` names each KV-head order: the rankings given, then ``"random"`` once per seed
    (``seeds[i]``; ``None`` for a ranking). ``orders[r]`` holds run ``r``'s KV heads best first,
    so at fraction ``f`` the full heads are ``orders[r][:n_full[f]]``. ``success[r][f][s]`` is 1
    when sample ``s`` was answered (``rule``), ``full_success[s]`` the same under full attention.
    ``cache_bytes[r][f][s]`` are the bytes the compressed cache held after the prompt (measured:
    :meth:`~headscope.compression.CompressedCache.nbytes`), ``full_bytes[s]`` the full cache's.
    """

    fractions: tuple[float, ...]
    n_full: tuple[int, ...]
    n_kv_heads: int
    runs: tuple[str, ...]
    seeds: tuple[int | None, ...]
    orders: tuple[tuple[tuple[int, int], ...], ...]
    success: tuple[tuple[tuple[float, ...], ...], ...]
    cache_bytes: tuple[tuple[tuple[int, ...], ...], ...]
    full_success: tuple[float, ...]
    full_bytes: tuple[int, ...]
    sink: int
    window: int
    pool: str
    rule: str
    n_samples: int
    model: str = ""

    def accuracy(self, run: int) -> np.ndarray:
        """Share of samples answered at each fraction by run ``run`` (an index into :attr:`runs`)."""
        return np.asarray(self.success[run], dtype=float).mean(axis=1)

    def versus_random(self, run: int = 0) -> pd.DataFrame:
        """Run ``run`` against the random KV-head sets, sample by sample, with an exact sign-flip p-value.

        One row per fraction: ``accuracy`` of the run, ``random`` (mean over seeds), their
        ``difference``, ``p_value`` and ``p_min``. Each sample gives a paired difference (its
        success under the run minus its mean success over the random seeds); under the null
        hypothesis that the run's KV heads are no better than random ones each difference is as
        likely to have either sign, so the two-sided p-value is the share of the ``2**n`` sign
        flips of the ``n`` non-zero differences whose sum is at least as far from 0 (all flips up
        to 16, else 20,000 seeded draws). ``p_min`` is the smallest p-value these samples can give.
        """
        import pandas as pd

        randoms = [r for r, seed in enumerate(self.seeds) if seed is not None]
        if not randoms:
            raise ConfigError("this curve has no random KV-head sets to compare with (seeds=())")
        rows = []
        for f, fraction in enumerate(self.fractions):
            mine = np.asarray(self.success[run][f], dtype=float)
            random = np.asarray([self.success[r][f] for r in randoms], dtype=float).mean(axis=0)
            p_value, p_min = sign_flip_test(mine - random)
            rows.append(
                {
                    "fraction": fraction,
                    "accuracy": mine.mean(),
                    "random": random.mean(),
                    "difference": mine.mean() - random.mean(),
                    "p_value": p_value,
                    "p_min": p_min,
                }
            )
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """One row per run and fraction, then one for full attention.

        Columns: ``run``, ``kind`` (``"ranking"``, ``"random"``, ``"full"``), ``seed`` (NaN but for
        random runs), ``fraction``, ``n_full`` (KV heads full), ``accuracy`` (share answered),
        ``cache_bytes`` (mean over samples, after the prompt), ``full_bytes`` and
        ``memory_ratio`` (``full_bytes / cache_bytes``).
        """
        import pandas as pd

        full_bytes = float(np.mean(self.full_bytes))
        rows = []
        for r, (run, seed) in enumerate(zip(self.runs, self.seeds, strict=True)):
            for f, fraction in enumerate(self.fractions):
                held = float(np.mean(self.cache_bytes[r][f]))
                rows.append(
                    {
                        "run": run,
                        "kind": "random" if seed is not None else "ranking",
                        "seed": np.nan if seed is None else seed,
                        "fraction": fraction,
                        "n_full": self.n_full[f],
                        "accuracy": float(np.mean(self.success[r][f])),
                        "cache_bytes": held,
                        "full_bytes": full_bytes,
                        "memory_ratio": full_bytes / held,
                    }
                )
        rows.append(
            {
                "run": FULL,
                "kind": "full",
                "seed": np.nan,
                "fraction": 1.0,
                "n_full": self.n_kv_heads,
                "accuracy": float(np.mean(self.full_success)),
                "cache_bytes": full_bytes,
                "full_bytes": full_bytes,
                "memory_ratio": 1.0,
            }
        )
        return pd.DataFrame(rows)

    def plot(self, title: str = "") -> Any:
        """Accuracy against the share of KV heads full (:func:`~headscope.viz.compression_figure`)."""
        from headscope.viz import compression_figure

        on = f" on {self.model}" if self.model else ""
        default = f"KV cache compression (sink {self.sink}, window {self.window}){on} ({self.n_samples} samples)"
        return compression_figure(self.to_frame(), title=title or default)


def compression_curve(
    model: Any,
    samples: Sequence[Sample],
    *,
    fractions: Sequence[float],
    rankings: Mapping[str, Any],
    seeds: Sequence[int] = (0, 1, 2),
    sink: int = SINK,
    window: int = WINDOW,
    pool: Pool = "max",
    success: Success | None = None,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> CompressionCurve:
    """Answer ``samples`` by greedy decoding with a share of KV heads full, the rest streaming; and without compression.

    ``rankings`` maps a name to scores or heads (anything :func:`~headscope.kv_policy` takes:
    e.g. ``{"retrieval": copy_scores, "mass": mass_scores}`` from
    :func:`~headscope.detect_retrieval_heads` with ``score="copy"`` and ``score="mass"``); each
    ranks the KV heads (scores pooled by ``pool``). At each fraction ``f`` the first
    ``round(f * n_kv_heads)`` KV heads of each ranking keep the full cache, and of a random
    order per seed in ``seeds`` (so a seed's sets are nested, like a ranking's). Every other KV
    head keeps ``sink`` + ``window`` positions (:class:`~headscope.compression.KVPolicy`).
    A sample is answered when ``success(sample, answer)`` holds (default
    :data:`~headscope.retrieval.DEFAULT_SUCCESS`: Wu et al.'s ROUGE-1 recall above 0.5 plus the
    value check). Runs that keep the same KV heads full are decoded once. Detect the rankings on
    other samples than these: the samples that choose heads must not test them.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> samples = [Sample("The code is 41. Say the code: the code is", " 41")]
    >>> curve = compression_curve(model, samples, fractions=[0.5], rankings={"mine": ["L1H2", "L0H0"]}, seeds=[0],
    ...                           window=4, max_new_tokens=2, progress=False)
    >>> curve.to_frame()[["run", "fraction", "n_full"]].values.tolist()
    [['mine', 0.5, 2], ['random', 0.5, 2], ['full attention', 1.0, 4]]
    """
    from headscope.models._fused import hf_twin
    from headscope.retrieval import DEFAULT_SUCCESS

    info = model_info(model)
    samples = list(samples)
    fractions = tuple(float(f) for f in fractions)
    if not samples:
        raise ConfigError("compression_curve needs at least one sample; got an empty list")
    if not fractions or any(not 0 <= f <= 1 for f in fractions):
        raise ConfigError(f"fractions must be shares of KV heads in [0, 1]; got {list(fractions)}")
    if not rankings and not seeds:
        raise ConfigError("give rankings= (name: scores or heads) or seeds= for random KV-head sets; got neither")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    _check_window(sink, window)
    if pool not in ("max", "mean", "sum"):
        raise ConfigError(f"pool must be 'max', 'mean' or 'sum'; got {pool!r}")
    n_kv = info.n_layers * info.n_kv_heads
    cells = [(layer, kv) for layer in range(info.n_layers) for kv in range(info.n_kv_heads)]

    def policy(full: frozenset[tuple[int, int]]) -> KVPolicy:
        grid = torch.zeros((info.n_layers, info.n_kv_heads), dtype=torch.bool)
        for cell in full:
            grid[cell] = True
        return KVPolicy(grid, info.n_heads, info.d_head, sink, window, pool=pool, model=info.name)

    every = frozenset(cells)
    check_model(model, policy(every))
    n_full = tuple(round(f * n_kv) for f in fractions)
    orders = []
    for name, source in rankings.items():
        _, order, _ = kv_order(source, info, pool)
        if len(order) < max(n_full):
            raise ConfigError(
                f"ranking {name!r} orders {len(order)} of {n_kv} KV heads, but fraction {max(fractions)} needs "
                f"{max(n_full)}: give scores for every head, or smaller fractions"
            )
        orders.append(tuple(order))
    for seed in seeds:
        permutation = np.random.default_rng(int(seed)).permutation(n_kv)
        orders.append(tuple(cells[i] for i in permutation))
    twin = hf_twin(model)
    rule = success or DEFAULT_SUCCESS
    wanted = {every} | {frozenset(order[:n]) for order in orders for n in n_full}
    done: dict[frozenset[tuple[int, int]], tuple[tuple[float, ...], tuple[int, ...]]] = {}
    with tqdm(total=len(wanted) * len(samples), desc="compression curve", disable=not progress) as bar:
        for full in sorted(wanted, key=len, reverse=True):
            outcomes, held = [], []
            for sample in samples:
                answer = generate_compressed(model, sample, policy(full), max_new_tokens=max_new_tokens, twin=twin)
                outcomes.append(float(bool(rule(sample, answer.text))))
                held.append(answer.prompt_bytes)
                bar.update()
            done[full] = (tuple(outcomes), tuple(held))
    if not any(done[every][0]):
        warnings.warn(
            f"compression_curve: full attention answers none of the {len(samples)} samples, so compressing the "
            "cache cannot lower accuracy and the curve says nothing: use samples the model answers (shorter "
            "contexts, the chat template, more max_new_tokens)",
            UserWarning,
            stacklevel=2,
        )
    runs = tuple(rankings) + ("random",) * len(seeds)
    return CompressionCurve(
        fractions=fractions,
        n_full=n_full,
        n_kv_heads=n_kv,
        runs=runs,
        seeds=(None,) * len(rankings) + tuple(int(s) for s in seeds),
        orders=tuple(orders),
        success=tuple(tuple(done[frozenset(order[:n])][0] for n in n_full) for order in orders),
        cache_bytes=tuple(tuple(done[frozenset(order[:n])][1] for n in n_full) for order in orders),
        full_success=done[every][0],
        full_bytes=done[every][1],
        sink=sink,
        window=window,
        pool=pool,
        rule=getattr(rule, "__name__", None) or repr(rule),
        n_samples=len(samples),
        model=info.name,
    )
