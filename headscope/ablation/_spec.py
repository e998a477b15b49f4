"""``Knockout``: an attention-head knockout as a value you can print, compare and save."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from headscope._types import Attention, Choice
from headscope.errors import ConfigError, HeadIndexError, ModelMismatchError, SpanError
from headscope.heads import Heads, as_heads
from headscope.results import Saved

if TYPE_CHECKING:
    from headscope.models import ModelInfo
    from headscope.tasks import EncodedSample, Sample

Mode = Choice["edge", "uniform", "zero", "mean"]
Route = Choice["auto", "scores", "z"]
MODES: tuple[str, ...] = ("edge", "uniform", "zero", "mean")

__all__ = ["MODES", "Knockout", "Mode", "Route"]


@dataclass(frozen=True)
class Knockout(Saved):
    """Which heads to knock out, how, and where.

    Modes (Wu et al. 2024 use ``"uniform"``):

    - ``"edge"``: queries at ``queries`` (default: every position) cannot attend to the key
      positions ``keys`` (or the span ``span``, resolved per sample, e.g. ``"needle"``); the
      rest of each row is renormalised, exactly as if those keys were masked before the softmax.
      A query row whose every visible key is blocked attends to nothing: that head's output at that
      query is zero (not NaN, and not a fallback to BOS).
    - ``"uniform"``: the head attends uniformly over the keys it can see (its causal prefix, less
      padding and outside a local window; pre-softmax scores set to a constant), so it can no
      longer pick out any position.
    - ``"zero"``: the head's output ``hook_z`` is set to zero at ``queries``.
    - ``"mean"``: ``hook_z`` is set to ``means[i]`` for ``heads[i]``, the mean of the head's
      ``hook_z`` over every position of reference inputs (see :func:`mean_knockout`).

    Positions are absolute token positions of the full sequence (BOS included when present), so
    the spec means the same thing at every generation step, whether generation re-runs the whole
    sequence or feeds new tokens through a KV cache. Query positions an input does not reach are
    skipped (a knockout of generated positions can be set up before generating); a key position
    beyond the input raises :class:`SpanError`. ``heads`` are stored sorted; ``means`` follow them.
    The spec is model-independent; it is checked against a model when applied.

    >>> spec = Knockout([(1, 2), (0, 3)], mode="edge", keys=range(4, 7))
    >>> spec
    Knockout(heads=((0, 3), (1, 2)), mode='edge', keys=(4, 5, 6), span=None, queries=None)
    >>> spec == Knockout.from_dict(spec.to_dict())
    True
    """

    heads: Heads
    mode: Mode = "uniform"
    keys: Iterable[int] | None = None
    span: str | None = None
    queries: Iterable[int] | None = None
    means: Sequence[Sequence[float]] | Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        heads = as_heads(self.heads)
        if len(set(heads)) != len(heads):
            dupes = sorted({h for h in heads if heads.count(h) > 1})
            raise HeadIndexError(f"each head may appear once in a knockout; repeated: {dupes}")
        order = sorted(range(len(heads)), key=lambda i: heads[i])
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("heads", tuple(heads[i] for i in order))
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(map(repr, MODES))}; got {self.mode!r}")
        if self.mode == "edge":
            if (self.keys is None) == (self.span is None):
                raise ConfigError(
                    "edge knockout needs exactly one of keys= (token positions) or span= (a span label "
                    f"such as 'needle'); got keys={self.keys!r}, span={self.span!r}"
                )
        elif self.keys is not None or self.span is not None:
            raise ConfigError(f"keys= and span= apply to mode='edge' only; mode is {self.mode!r}")
        if self.keys is not None:
            set_("keys", _positions(self.keys, "keys"))
            if not self.keys:
                raise SpanError("edge knockout with no key positions would change nothing; give at least one key")
        if self.queries is not None:
            set_("queries", _positions(self.queries, "queries"))
        set_("means", _means(self.means, self.mode, len(heads), order))

    # -- against a model and a sample -------------------------------------------------------------

    def check(self, info: ModelInfo) -> None:
        """Raise if the heads, positions or means do not fit the model ``info`` describes."""
        info.check_heads(self.heads)
        for name, positions in (("keys", self.keys), ("queries", self.queries)):
            if positions and positions[-1] >= info.n_ctx:
                raise SpanError(f"{name} go up to position {positions[-1]}, beyond the context of {info.n_ctx} tokens")
        if self.means and len(self.means[0]) != info.d_head:
            raise ModelMismatchError(
                f"means have {len(self.means[0])} entries per head but the model's heads have d_head={info.d_head}"
            )

    def for_sample(self, sample: EncodedSample) -> Knockout:
        """Resolve ``span`` to the token positions of that span in ``sample`` (a no-op otherwise).

        >>> import torch
        >>> from headscope.tasks import EncodedSample
        >>> enc = EncodedSample(torch.arange(10), torch.tensor([3]), {"needle": [(4, 6)]}, {"needle": True})
        >>> Knockout([(0, 1)], mode="edge", span="needle").for_sample(enc).keys
        (4, 5)
        """
        if self.span is None:
            return self
        keys = [p for start, end in sample.positions(self.span) for p in range(start, end)]
        return replace(self, keys=tuple(keys), span=None)

    def applied(
        self,
        model: Any,
        *,
        sample: Sample | EncodedSample | None = None,
        route: Route = "auto",
        attention: Attention = "auto",
    ) -> AbstractContextManager[None]:
        """A ``with`` block during which every forward pass of ``model`` runs with this knockout.

        ``sample`` resolves ``span`` (a :class:`~headscope.tasks.Sample` is encoded with the
        model's tokenizer). ``route`` picks how edge and uniform knockouts are carried out:
        ``"scores"`` edits ``hook_attn_scores``; ``"z"`` rewrites ``hook_z`` from the head's value
        vectors (exact on models whose attention ignores score edits); ``"auto"`` uses ``"scores"``
        where :func:`~headscope.model_info` says score edits are honoured. ``attention="fused"``
        runs sdpa and rewrites only the knocked-out rows; ``"auto"`` (default) takes it wherever it
        can run (see :mod:`headscope.ablation._apply`).
        """
        from headscope.ablation._apply import apply_knockout

        return apply_knockout(model, self, sample=sample, route=route, attention=attention)


def _positions(values: Iterable[int], name: str) -> tuple[int, ...]:
    try:
        positions = sorted({int(p) for p in values})
    except (TypeError, ValueError):
        raise SpanError(f"{name} must be token positions (ints); got {values!r}") from None
    if positions and positions[0] < 0:
        raise SpanError(f"{name} must be absolute token positions >= 0; got {positions[0]}")
    return tuple(positions)


def _means(means: Any, mode: str, n_heads: int, order: list[int]) -> tuple[tuple[float, ...], ...] | None:
    if mode != "mean":
        if means is not None:
            raise ConfigError(f"means= applies to mode='mean' only; mode is {mode!r}")
        return None
    if means is None:
        raise ConfigError("mode='mean' needs means= (one d_head vector per head); build the spec with mean_knockout()")
    table = torch.as_tensor(means, dtype=torch.float64).tolist() if not isinstance(means, tuple) else means
    rows = [tuple(float(x) for x in row) for row in table]
    if len(rows) != n_heads or len({len(r) for r in rows}) > 1:
        raise ConfigError(f"means must be one equal-length vector per head ({n_heads} heads); got {len(rows)} rows")
    return tuple(rows[i] for i in order)
