"""Knockout curves: task score against the number of knocked-out heads, top-ranked versus random."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headscope._types import Choice
from headscope.ablation._apply import Attention, uses_fused
from headscope.ablation._inputs import encoded
from headscope.ablation._means import head_means
from headscope.ablation._spec import Knockout, Route
from headscope.distributed import World, item_key, model_fingerprint, sharded_map, token_cost
from headscope.errors import ConfigError, HeadIndexError
from headscope.heads import Head, Heads, random_heads
from headscope.models import model_info
from headscope.models._fused_bridge import fused_bridge
from headscope.results import Saved
from headscope.tasks import Sample

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["KnockoutCurve", "knockout_curve"]

ScoreFn = Callable[[Any, Sample], float]
Positions = Choice["answer", "all"]
POSITIONS: tuple[str, ...] = ("answer", "all")
_FLAT = (
    "knockout_curve: the score is 0 on every sample with no head knocked out (k = 0), so knocking heads out "
    "cannot lower it and the curve says nothing. With a teacher-forced score (answer_accuracy) the usual cause "
    "is that the gold answer is not the model's next token: a chat model restates the question before the value. "
    "Give the samples an answer prefix (the lead-in up to the value, e.g. 'The favorite spice of Ada is') or "
    "score by generation (retrieval_success)."
)


@dataclass(frozen=True)
class KnockoutCurve(Saved):
    """Mean task score after knocking out the top ``k`` heads of a ranking, and ``k`` random heads.

    ``top[i]`` is the score with ``ranking[:ks[i]]`` knocked out; ``random[s][i]`` the score with
    ``random_sets[s][i]`` (``ks[i]`` heads drawn with ``seeds[s]`` outside ``ranking[:exclude_top]``);
    ``baseline`` the score with nothing knocked out. ``positions`` says which query rows were
    knocked out (see :func:`knockout_curve`).
    """

    ks: tuple[int, ...]
    top: tuple[float, ...]
    random: tuple[tuple[float, ...], ...]
    baseline: float
    seeds: tuple[int, ...]
    ranking: tuple[Head, ...]
    random_sets: tuple[tuple[tuple[Head, ...], ...], ...]
    exclude_top: int
    mode: str
    n_samples: int
    model: str = ""
    positions: str = "all"  # curves saved before the choice existed knocked out every row
    attention: str = "eager"  # the attention route the knockouts ran on; "eager" before the fused one existed

    def random_mean(self) -> np.ndarray:
        """Mean random-head score at each ``k``."""
        return np.asarray(self.random, dtype=float).mean(axis=0)

    def random_std(self) -> np.ndarray:
        """Population standard deviation (ddof=0) of the random-head score at each ``k``."""
        return np.asarray(self.random, dtype=float).std(axis=0)

    def to_frame(self) -> pd.DataFrame:
        """Long frame, one row per run: ``k``, ``kind`` ("top" / "random"), ``seed`` (NaN for top), ``value``.

        ``value`` is the mean of ``score_fn`` over the samples (whatever it measures). ``k=0`` rows
        hold the intact model's score, once for "top" and once per seed for "random", so each curve
        starts at the baseline (the frame :func:`headscope.viz.knockout_curve_figure` draws).
        """
        import pandas as pd

        rows = [{"k": 0, "kind": "top", "seed": np.nan, "value": self.baseline}]
        rows += [{"k": k, "kind": "top", "seed": np.nan, "value": s} for k, s in zip(self.ks, self.top, strict=True)]
        for seed, scores in zip(self.seeds, self.random, strict=True):
            rows.append({"k": 0, "kind": "random", "seed": seed, "value": self.baseline})
            rows += [{"k": k, "kind": "random", "seed": seed, "value": s} for k, s in zip(self.ks, scores, strict=True)]
        return pd.DataFrame(rows)

    def plot(self, title: str = "") -> Any:
        """Score against ``k``: top-ranked against random heads, by :func:`~headscope.viz.knockout_curve_figure`."""
        from headscope.viz import knockout_curve_figure

        return knockout_curve_figure(
            self.to_frame(),
            title=title
            or f"{self.mode} knockout at {self.positions} positions{f' on {self.model}' if self.model else ''} "
            f"({self.n_samples} samples)",
            value_name="score",
        )


def knockout_curve(
    model: Any,
    samples: Sequence[Sample],
    ranking: Heads,
    score_fn: ScoreFn,
    *,
    ks: Sequence[int],
    mode: str = "uniform",
    span: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    exclude_top: int | None = None,
    route: Route = "auto",
    attention: Attention = "auto",
    positions: Positions = "answer",
    mean_exclude: Sequence[str] = (),
    progress: bool = True,
    distributed: bool = False,
    resume: str | Path | None = None,
) -> KnockoutCurve:
    """Score ``samples`` with the top ``k`` heads of ``ranking`` knocked out, and with ``k`` random heads.

    ``ranking`` is any list of heads, best first (pairs or ``"L3H7"`` labels). ``score_fn(model,
    sample) -> float`` is called inside the knockout block (it may generate); the curve holds the
    mean over samples. Random heads are drawn with :func:`~headscope.heads.random_heads` outside
    ``ranking[:exclude_top]`` (default: ``max(ks)``), one draw per seed and ``k``. ``mode="edge"``
    needs ``span`` (e.g. ``"needle"``), resolved per sample; ``mode="mean"`` takes its means
    from the samples themselves, over every position unless ``mean_exclude`` leaves some out
    (``("bos", "needle")``: the attention-sink position and the needle; see
    :func:`~headscope.ablation.head_means`). ``attention`` (``"auto"``, ``"fused"``, ``"eager"``)
    and ``route`` pick how the knockouts run (:func:`~headscope.ablation.knockout`); the route is
    settled once, before the first sample.

    ``positions`` picks the query rows the heads are knocked out at:

    - ``"answer"`` (default; Wu et al.'s procedure): only the rows that produce the answer, every
      position from the last prompt token on. With a teacher-forced ``score_fn`` (prompt + answer
      in one forward) these are the rows that predict answer tokens; with generation they are the
      last prompt row and every generated row. The prompt is read unablated, so every row before
      the last prompt token, and every later layer's view of the context, is exactly the intact
      model's: the curve measures what the heads do while answering.
    - ``"all"``: every row, prompt included; later layers then also read context representations
      the knockout rewrote.

    ``distributed=True`` splits the ``score_fn`` calls (samples x k x seeds) over the ranks of the
    initialised ``torch.distributed`` group (:mod:`headscope.distributed`) and returns the
    one-process curve on every rank; ``resume`` names a folder of per-call results a rerun reads
    back (keyed by the model's weights, the settings, the heads and the sample).

    Calls ``score_fn`` ``len(samples) * (1 + len(ks) * (1 + len(seeds)))``
    times. Warns when the score with nothing knocked out is 0 on every sample (a flat, meaningless curve).

    >>> import torch
    >>> from headscope import load_model
    >>> from headscope.tasks import Sample
    >>> model = load_model("tiny-llama")
    >>> def score(model, sample):  # log-probability of the answer's first token
    ...     enc = sample.encode(model.tokenizer)
    ...     return model(enc.input_ids[None])[0, -1].log_softmax(-1)[enc.answer_ids[0]].item()
    >>> curve = knockout_curve(model, [Sample("The key is 4712. The key is", " 4712")], ["L1H0", "L0H2"],
    ...                        score, ks=[1, 2], seeds=[0, 1], progress=False)
    >>> curve.to_frame().shape
    (9, 4)
    """
    info = model_info(model)
    samples = list(samples)
    ranking_ = tuple(info.check_heads(ranking))
    ks = tuple(int(k) for k in ks)
    if not samples:
        raise ConfigError("knockout_curve needs at least one sample; got an empty list")
    if not ks or min(ks) < 1:
        raise HeadIndexError(f"ks must be head counts >= 1; got {list(ks)}")
    if max(ks) > len(ranking_):
        raise HeadIndexError(f"ks go up to {max(ks)} but the ranking holds only {len(ranking_)} heads")
    if not seeds:
        raise ConfigError("give at least one seed for the random-head baseline (e.g. seeds=(0, 1, 2)); got none")
    if positions not in POSITIONS:
        raise ConfigError(f"positions must be 'answer' or 'all'; got {positions!r}")
    if mode == "edge" and span is None:
        raise ConfigError("mode='edge' needs span= (e.g. 'needle'), the span each sample's queries cannot see")
    attention = "fused" if uses_fused(model, attention, route) else "eager"
    exclude = max(ks) if exclude_top is None else int(exclude_top)
    random_sets = tuple(
        tuple(tuple(random_heads(info, k, exclude=ranking_[:exclude], seed=seed)) for k in ks) for seed in seeds
    )
    means = head_means(model, samples, exclude=mean_exclude) if mode == "mean" else None
    runs = [(), *(ranking_[:k] for k in ks), *(heads for per_seed in random_sets for heads in per_seed)]
    items = [(r, i) for r in range(len(runs)) for i in range(len(samples))]

    def score(item: tuple[int, int]) -> float:
        heads, sample = runs[item[0]], samples[item[1]]
        if not heads:  # the baseline runs on the knockouts' attention route, so untouched rows agree bit for bit
            with fused_bridge(model) if attention == "fused" else nullcontext():
                return float(score_fn(model, sample))
        spec = Knockout(
            tuple(heads),
            mode,  # type: ignore[arg-type]
            span=span if mode == "edge" else None,
            means=None if means is None else means[[h[0] for h in heads], [h[1] for h in heads]],
        )
        with _for_sample(spec, model, sample, positions).applied(model, route=route, attention=attention):
            return float(score_fn(model, sample))

    tokens = [len(e.input_ids) + len(e.answer_ids) for e in (encoded(model, s) for s in samples)]
    keys = None
    if resume is not None:
        run = [info.name, model_fingerprint(model), mode, span, positions, attention, route, _name(score_fn)]
        if mode == "mean":
            run += [list(mean_exclude), [_text(s) for s in samples]]
        keys = [item_key("knockout", run, [list(h) for h in runs[r]], _text(samples[i])) for r, i in items]
    values = sharded_map(
        score,
        items,
        keys=keys,
        costs=[token_cost(tokens[i], fused=attention == "fused") for _, i in items],
        partial=resume,
        desc="knockout curve",
        progress=progress,
        world=None if distributed else World(),
    )
    per_run = [values[r * len(samples) : (r + 1) * len(samples)] for r in range(len(runs))]
    intact = per_run[0]
    if not any(intact):
        warnings.warn(_FLAT, UserWarning, stacklevel=2)
    top = tuple(float(np.mean(v)) for v in per_run[1 : 1 + len(ks)])
    flat = [float(np.mean(v)) for v in per_run[1 + len(ks) :]]
    random = tuple(tuple(flat[s * len(ks) : (s + 1) * len(ks)]) for s in range(len(seeds)))
    baseline = float(np.mean(intact))
    return KnockoutCurve(
        ks=ks,
        top=top,
        random=random,
        baseline=baseline,
        seeds=tuple(int(s) for s in seeds),
        ranking=ranking_[: max(ks)],
        random_sets=random_sets,
        exclude_top=exclude,
        mode=mode,
        n_samples=len(samples),
        model=info.name,
        positions=positions,
        attention=attention,
    )


def _for_sample(spec: Knockout, model: Any, sample: Sample, positions: str) -> Knockout:
    """``spec`` for one sample: its ``span`` resolved and, for ``"answer"``, its query rows set."""
    if spec.span is None and positions == "all":
        return spec
    enc = encoded(model, sample)
    spec = spec.for_sample(enc)
    if positions == "all":
        return spec
    return replace(spec, queries=tuple(range(len(enc.input_ids) - 1, model_info(model).n_ctx)))


def _name(score_fn: ScoreFn) -> str:
    return getattr(score_fn, "__qualname__", None) or type(score_fn).__name__


def _text(sample: Sample) -> list[Any]:
    """What a sample's result depends on: its text, or its tokens when it comes encoded."""
    if isinstance(sample, Sample):
        return [sample.prompt, sample.answer, sample.bos, [str(span) for span in sample.spans]]
    return [sample.input_ids.tolist(), sample.answer_ids.tolist()]
