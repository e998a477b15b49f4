"""Which attention route detection takes: ``attention="fused" | "eager" | "auto"``.

- ``"eager"``: the model's own forward; TransformerLens builds each layer's full pattern and a
  ``hook_pattern`` hook reads the scored rows (:class:`EagerRoute`). Works on every model kind.
- ``"fused"``: sdpa attention in a Hugging Face twin of a bridge, computing only the scored rows
  (:class:`~headscope.retrieval._fused.FusedRoute`). Bridges of the architectures the fused route
  covers, without compatibility mode, and with no hooks attached (the twin fires none of the
  bridge's hooks, and a hook is never skipped silently). A knockout active on the bridge's fused
  route acts in the twin too.
- ``"auto"``: fused wherever it is available, eager otherwise. HookedTransformer and
  compatibility-mode bridges always stay eager.

Inside a fused block that also attaches hooks (a patch entered on the fused route), neither route
can read attention honestly: the twin would skip the patch's hooks and ``hook_pattern`` cannot fire
on the fused route; detection then raises and says so.

Both routes read rows with the same function and tie rule, so hit counts are equal.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope._types import Attention
from headscope.errors import ConfigError, ModelError
from headscope.hooks import attached
from headscope.models import fused_active, twin_unavailable
from headscope.retrieval._decode import greedy_steps
from headscope.retrieval._fused import FusedRoute
from headscope.retrieval._top1 import RowReads, pattern_readers, take_reads

__all__ = ["Attention", "EagerRoute", "choose_route"]


class EagerRoute:
    """Detection forwards through ``model`` itself, reading rows in ``hook_pattern``.

    Each forward (each decoding run) attaches hooks built for its own rows and needles
    (:func:`~headscope.retrieval._top1.pattern_readers`) and removes them when it ends.
    """

    def __init__(self, model: Any, n_layers: int) -> None:
        self.model = model
        self.n_layers = n_layers
        self.device = next(model.parameters()).device

    def session(self) -> AbstractContextManager[None]:
        """Nothing to set up: hooks live only as long as the forward they serve."""
        return nullcontext()

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        rows: Int[Tensor, "batch row"],
        needles: Bool[Tensor, "batch pos"] | None,
        attention_mask: Int[Tensor, "batch pos"],
    ) -> tuple[Float[Tensor, "batch row vocab"], RowReads]:
        """Logits and reads of the rows ``rows[b]``."""
        hooks, store = pattern_readers(self.n_layers, rows, needles)
        with attached(self.model, hooks):
            # The mask changes nothing for right padding under causal attention, but without one a
            # HookedTransformer whose tokenizer pads on the left masks every token equal to the pad id.
            logits = self.model(tokens, attention_mask=attention_mask)
        reads = take_reads(store, "hook_pattern did not fire")
        return logits[torch.arange(rows.shape[0], device=rows.device)[:, None], rows], reads

    def steps(
        self,
        prompt: Int[Tensor, " pos"],
        needles: Bool[Tensor, "1 pos"] | None,
        *,
        max_new_tokens: int,
        stop_ids: Collection[int],
    ) -> Iterator[tuple[int, RowReads]]:
        """Greedy decoding with the model's KV cache; each token comes with the reads of its row."""
        hooks, store = pattern_readers(self.n_layers, None, needles)
        with attached(self.model, hooks):
            for token in greedy_steps(self.model, prompt, max_new_tokens=max_new_tokens, stop_ids=stop_ids):
                yield token, take_reads(store, "hook_pattern did not fire")


def choose_route(model: Any, attention: Attention, n_layers: int) -> EagerRoute | FusedRoute:
    """The route ``attention`` asks for; ``"fused"`` raises :class:`ModelError` saying why it cannot run."""
    if attention not in ("fused", "eager", "auto"):
        raise ConfigError(f"attention must be 'fused', 'eager' or 'auto'; got {attention!r}")
    reason = twin_unavailable(model) if attention != "eager" else "attention='eager' was asked for"
    if reason is None:
        try:
            return FusedRoute(model)
        except ModelError as err:  # e.g. a bridge whose parameters do not map onto its HF class
            reason = str(err)
    if attention == "fused":
        raise ModelError(f"attention='fused' cannot run on this model: {reason}. Use attention='eager' (or 'auto').")
    if fused_active(model):
        raise ModelError(
            f"this model's attention runs on the fused route right now (a knockout or patch entered with "
            f"attention='auto' or 'fused'), where hook_pattern cannot fire, and the fused detection route is not "
            f"available ({reason}). Enter the knockout or patch with attention='eager', or detect outside it"
        )
    return EagerRoute(model, n_layers)
