"""The fused knockout route: sdpa for every head, then only the knocked-out rows are rewritten.

Runs inside :func:`headscope.models._fused_bridge.fused_bridge`, which hands each layer's
post-rotary ``query [batch, head, query, d_head]``, ``key/value [batch, kv_head, key, d_head]``
(all keys, cached ones included), Hugging Face's mask (``None`` on the causal fast path) and the
sdpa output ``[batch, query, head, d_head]`` to :class:`FusedKnockout`. Only the knocked-out
heads' rows at the knocked-out query positions change, computed the way the eager route computes
them, so logits agree with it to float rounding:

- ``zero`` / ``mean``: the output slice (the head's ``hook_z``) is set to 0 / the head's mean.
- ``uniform``: the mean of the value vectors over the keys the row can see. Under a plain causal
  mask that is a running mean: one cumulative sum over keys (float64), ``O(key)`` memory. With a
  padding mask, the mask's visible keys are averaged, a chunk of rows at a time.
- ``edge``: only rows that can see a blocked key change (rows before the first blocked key are
  left as sdpa computed them). Those rows are recomputed from ``q @ k.T * scaling`` with the
  blocked keys masked, softmax in float32 (as the eager bridge does), a chunk of rows at a time so
  no ``[query, key]`` matrix larger than a chunk exists. A row whose every visible key is blocked
  attends to nothing: output zero.

Query head ``h`` reads key/value head ``h // group``. Unlike the eager ``z`` route this works
with a KV cache: every key and value is at hand in each call.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from headscope.ablation._spec import Knockout
from headscope.errors import SpanError

__all__ = ["FusedKnockout"]

_CHUNK = 1 << 22  # elements of one [head, row, key] block of recomputed scores


class FusedKnockout:
    """The knockout of one layer's heads, as an edit of that layer's fused attention output."""

    def __init__(self, heads: list[int], spec: Knockout, group: int, means: Tensor | None = None) -> None:
        self.heads, self.spec, self.group, self.means = torch.tensor(heads), spec, group, means
        self.queries = None if spec.queries is None else torch.tensor(spec.queries, dtype=torch.long)

    def __call__(
        self,
        query: Float[Tensor, "batch head query d_head"],
        key: Float[Tensor, "batch kv_head key d_head"],
        value: Float[Tensor, "batch kv_head key d_head"],
        mask: Tensor | None,
        scaling: float,
        out: Float[Tensor, "batch query head d_head"],
    ) -> Float[Tensor, "batch query head d_head"]:
        n_query, n_key = query.shape[-2], key.shape[-2]
        offset = n_key - n_query
        rows = self._rows(n_query, offset, query.device)
        if self.spec.mode == "edge":
            keys = self.spec.keys or ()
            if keys[-1] >= n_key:
                raise SpanError(
                    f"edge knockout blocks key position {keys[-1]}, but this forward pass has only {n_key} positions"
                )
            rows = rows[rows + offset >= keys[0]]  # earlier rows see no blocked key
        if not len(rows):
            return out
        h = self.heads.to(query.device)
        out = out.clone()
        if self.spec.mode in ("zero", "mean"):
            out[:, rows[:, None], h[None, :]] = 0.0 if self.means is None else self.means.to(out)
            return out
        v = value[:, h // self.group]  # [batch, knocked head, key, d_head]
        if self.spec.mode == "uniform" and mask is None:
            new = _running_mean(v, rows + offset)
        else:
            new = torch.cat(
                [self._rows_attention(query, key, v, mask, scaling, part, offset) for part in _chunks(rows, n_key, h)],
                dim=2,
            )
        out[:, rows[:, None], h[None, :]] = new.transpose(1, 2).to(out.dtype)
        return out

    def _rows(self, n_query: int, offset: int, device: torch.device) -> Tensor:
        if self.queries is None:
            return torch.arange(n_query, device=device)
        inside = self.queries[(self.queries >= offset) & (self.queries < offset + n_query)]
        return (inside - offset).to(device)

    def _rows_attention(
        self, query: Tensor, key: Tensor, v: Tensor, mask: Tensor | None, scaling: float, rows: Tensor, offset: int
    ) -> Float[Tensor, "batch head row d_head"]:
        """Knocked-out attention of the rows ``rows``: uniform over, or softmax without the blocked, visible keys."""
        h = self.heads.to(query.device)
        n_key = key.shape[-2]
        visible = torch.arange(n_key, device=query.device) <= (rows + offset)[:, None]  # [row, key]
        visible = visible.expand(query.shape[0], len(h), *visible.shape)
        if mask is not None:  # [batch, 1 or head, query or 1, key]: True (or 0.0) where a key is visible
            allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
            allowed = allowed[:, h] if allowed.shape[1] > 1 else allowed
            visible = visible & (allowed[:, :, rows] if allowed.shape[2] > 1 else allowed)
        if self.spec.mode == "uniform":
            weights = visible.float() / visible.sum(-1, keepdim=True).clamp_min(1)
            return torch.matmul(weights, v.float())
        keep = visible & ~_blocked(self.spec.keys or (), n_key, query.device)
        q = query[:, h][:, :, rows]
        scores = torch.matmul(q, key[:, h // self.group].transpose(-2, -1)) * scaling
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
        weights = weights.masked_fill(~keep.any(-1, keepdim=True), 0.0)  # every visible key blocked: no output
        return torch.matmul(weights, v)


def _blocked(keys: tuple[int, ...], n_key: int, device: torch.device) -> Bool[Tensor, " key"]:
    blocked = torch.zeros(n_key, dtype=torch.bool, device=device)
    blocked[list(keys)] = True
    return blocked


def _running_mean(v: Float[Tensor, "batch head key d_head"], last: Tensor) -> Float[Tensor, "batch head row d_head"]:
    """Mean of ``v`` over keys ``0..last[i]`` for each row ``i``: one cumulative sum, no ``[row, key]`` weights."""
    total = v.double().cumsum(dim=2)[:, :, last]
    return (total / (last + 1).to(total)[:, None]).float()


def _chunks(rows: Tensor, n_key: int, heads: Tensor) -> list[Tensor]:
    size = max(1, _CHUNK // max(1, n_key * len(heads)))
    return list(rows.split(size))
