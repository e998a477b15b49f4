"""The fused knockout route: sdpa for every head, then only the knocked-out rows are rewritten.

A :class:`FusedKnockout` is a :class:`~headscope.models._fused_attention.LayerEdit`: it acts
inside the fused attention function wherever the model's fused route runs, on the bridge itself
(:func:`headscope.models._fused_bridge.fused_bridge`) and in the Hugging Face twin that
detection, generation and training use. It sees each layer's post-rotary query, keys and values
(cached ones included), Hugging Face's mask and the sdpa output ``[batch, query, head,
d_head]``. Only the knocked-out heads' rows at the knocked-out query positions change, computed
the way the eager route computes them, so logits agree with it to float rounding:

- ``zero`` / ``mean``: the output slice (the head's ``hook_z``) is set to 0 / the head's mean.
- ``uniform``: the mean of the value vectors over the keys the row can see. Under a plain causal
  mask that is a running mean: one cumulative sum over keys (float64), ``O(key)`` memory. With a
  mask (padding, a sliding window), the visible keys are averaged a chunk of rows at a time.
- ``edge``: only rows that can see a blocked key change (rows before the first blocked key are
  left as sdpa computed them). Their scores are recomputed by the route's one row recomputation
  (:meth:`~headscope.models._fused_attention.AttentionCall.scores`), the blocked keys set to
  ``-inf``, softmax in float32, a chunk of rows at a time so no ``[query, key]`` matrix larger
  than a chunk exists. A row whose every visible key is blocked attends to nothing: output zero.

:meth:`FusedKnockout.edit_scores` is the same edit of a row's scores, so detection reads a
knocked-out head's top-1 key as the knockout makes it attend (edge and uniform; zero and mean
leave the attention as it was and only silence the head's output, as on the eager route).

Query head ``h`` reads key/value head ``h // group``. Unlike the eager ``z`` route this works
with a KV cache: every key and value is at hand in each call.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.ablation._spec import Knockout
from headscope.errors import SpanError
from headscope.models._fused_attention import AttentionCall

__all__ = ["FusedKnockout"]


class FusedKnockout:
    """The knockout of one layer's heads, as an edit of that layer's fused attention."""

    def __init__(self, heads: list[int], spec: Knockout, group: int, means: Tensor | None = None) -> None:
        self.heads, self.spec, self.group, self.means = torch.tensor(heads), spec, group, means
        self.queries = None if spec.queries is None else torch.tensor(spec.queries, dtype=torch.long)

    def __repr__(self) -> str:
        return f"FusedKnockout(heads={self.heads.tolist()}, mode={self.spec.mode!r})"

    def __call__(
        self, call: AttentionCall, out: Float[Tensor, "batch query head d_head"]
    ) -> Float[Tensor, "batch query head d_head"]:
        rows = self._rows(call.query.shape[-2], call.offset, call.query.device)
        if self.spec.mode == "edge":
            rows = rows[rows + call.offset >= self._blocked_keys(call)[0]]  # earlier rows see no blocked key
        if not len(rows):
            return out
        h = self.heads.to(call.query.device)
        out = out.clone()
        if self.spec.mode in ("zero", "mean"):
            out[:, rows[:, None], h[None, :]] = 0.0 if self.means is None else self.means.to(out)
            return out
        v = call.value[:, h // self.group].float()  # [batch, knocked head, key, d_head]
        if self.spec.mode == "uniform" and call.mask is None:
            new = _running_mean(v, rows + call.offset)
        else:
            batch_rows = rows.expand(call.query.shape[0], -1)
            parts = []
            for part in call.chunks(batch_rows, len(h)):
                scores = self.edit_scores(call, call.scores(part, h), part, h)
                weights = call.weights(scores)
                if self.spec.mode == "edge":  # every visible key blocked: the row attends to nothing
                    weights = weights.masked_fill(self._empty(call, part, h)[..., None], 0.0)
                parts.append(torch.matmul(weights, v))
            new = torch.cat(parts, dim=2)
        out[:, rows[:, None], h[None, :]] = new.transpose(1, 2).to(out.dtype)
        return out

    def edit_scores(
        self,
        call: AttentionCall,
        scores: Float[Tensor, "batch head row key"],
        rows: Int[Tensor, "batch row"],
        heads: Int[Tensor, " head"] | None,
    ) -> Float[Tensor, "batch head row key"]:
        """Scores of the rows ``rows`` (for query heads ``heads``, all when ``None``) as the knockout leaves them.

        Uniform: every visible key scores 0. Edge: blocked keys are hidden, except in a row that
        would then see nothing (the eager route leaves those rows' attention as it was too and
        zeroes their output). Zero and mean change no score.
        """
        if self.spec.mode not in ("uniform", "edge"):
            return scores
        knocked = self.heads.to(scores.device)
        present = torch.arange(scores.shape[1], device=scores.device) if heads is None else heads.to(scores.device)
        picked = torch.isin(present, knocked)  # [head] of the scores that this knockout knocks out
        at = self._knocked_rows(rows + call.offset)[:, None, :, None] & picked[None, :, None, None]
        visible = scores > float("-inf")
        if self.spec.mode == "uniform":
            return torch.where(at & visible, torch.zeros_like(scores), scores)
        blocked = _blocked(self._blocked_keys(call), scores.shape[-1], scores.device)
        hide = visible & blocked
        hide = hide & (visible & ~blocked).any(-1, keepdim=True)  # rows left with a key keep their blocked keys hidden
        return scores.masked_fill(at & hide, float("-inf"))

    def _empty(self, call: AttentionCall, rows: Tensor, h: Tensor) -> Bool[Tensor, "batch head row"]:
        """Rows whose every visible key is blocked."""
        visible = call.visible(rows)
        blocked = _blocked(self._blocked_keys(call), visible.shape[-1], visible.device)
        return ~(visible & ~blocked).any(-1).expand(rows.shape[0], len(h), rows.shape[1])

    def _blocked_keys(self, call: AttentionCall) -> tuple[int, ...]:
        keys = self.spec.keys or ()
        n_key = call.key.shape[-2]
        if keys[-1] >= n_key:
            raise SpanError(
                f"edge knockout blocks key position {keys[-1]}, but this forward pass has only {n_key} positions"
            )
        return keys

    def _rows(self, n_query: int, offset: int, device: torch.device) -> Tensor:
        if self.queries is None:
            return torch.arange(n_query, device=device)
        inside = self.queries[(self.queries >= offset) & (self.queries < offset + n_query)]
        return (inside - offset).to(device)

    def _knocked_rows(self, positions: Int[Tensor, "batch row"]) -> Bool[Tensor, "batch row"]:
        if self.queries is None:
            return torch.ones_like(positions, dtype=torch.bool)
        return torch.isin(positions, self.queries.to(positions.device))


def _blocked(keys: tuple[int, ...], n_key: int, device: torch.device) -> Bool[Tensor, " key"]:
    blocked = torch.zeros(n_key, dtype=torch.bool, device=device)
    blocked[list(keys)] = True
    return blocked


def _running_mean(v: Float[Tensor, "batch head key d_head"], last: Tensor) -> Float[Tensor, "batch head row d_head"]:
    """Mean of ``v`` over keys ``0..last[i]`` for each row ``i``: one cumulative sum, no ``[row, key]`` weights."""
    total = v.double().cumsum(dim=2)[:, :, last]
    return (total / (last + 1).to(total)[:, None]).float()
