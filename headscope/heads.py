"""Head sets: validated collections of (layer, head) pairs, and random baselines of equal size."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from headscope.errors import HeadIndexError
from headscope.models import ModelInfo

Head = tuple[int, int]

__all__ = ["Head", "parse_head", "random_heads"]


def parse_head(label: str) -> Head:
    """``"L3H7"`` or ``"3-7"`` (Wu et al.'s key) to ``(3, 7)``.

    >>> parse_head("L3H7"), parse_head("12-4")
    ((3, 7), (12, 4))
    """
    text = label.strip()
    try:
        if text.upper().startswith("L") and "H" in text.upper():
            layer, head = text[1:].upper().split("H")
        else:
            layer, head = text.split("-")
        return int(layer), int(head)
    except ValueError:
        raise HeadIndexError(f"cannot read a head from {label!r}; expected 'L3H7' or '3-7'") from None


def random_heads(info: ModelInfo, k: int, *, exclude: Iterable[Head] = (), seed: int = 0) -> list[Head]:
    """``k`` distinct heads drawn uniformly from those not in ``exclude``, sorted.

    The random-head baseline of knockout and patching experiments (Wu et al. draw outside the
    top 100 heads).

    >>> from headscope import load_model, model_info
    >>> heads = random_heads(model_info(load_model("tiny-llama")), 7, exclude=[(0, 0)], seed=1)
    >>> len(heads), (0, 0) in heads
    (7, False)
    """
    banned = set(info.check_heads(exclude))
    pool = [
        (layer, head) for layer in range(info.n_layers) for head in range(info.n_heads) if (layer, head) not in banned
    ]
    if not 0 <= k <= len(pool):
        raise HeadIndexError(f"cannot draw {k} heads: only {len(pool)} heads remain outside the {len(banned)} excluded")
    picks = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in picks)
