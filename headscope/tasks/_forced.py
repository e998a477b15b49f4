"""Teacher forcing: prompt + answer in one forward, read at the rows that predict the answer.

Every teacher-forced score (answer accuracy, answer log-probability, the fine-tuning loss,
detection's copy hits) runs the same forward: the prompt followed by the answer without its
last token, so row ``len(prompt) - 1 + t`` predicts answer token ``t``. :func:`forced_batch`
builds that input once, right-padded for a batch; :func:`answer_logits` runs it for one sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.errors import ConfigError

__all__ = ["Forceable", "ForcedBatch", "answer_logits", "forced_batch"]


@runtime_checkable
class Forceable(Protocol):
    """Prompt and answer token ids: an :class:`~headscope.tasks.EncodedSample` or a prepared detection sample."""

    input_ids: Int[Tensor, " pos"]
    answer_ids: Int[Tensor, " answer"]


@dataclass(frozen=True)
class ForcedBatch:
    """Right-padded ``prompt + answer[:-1]`` rows and where each answer token is predicted.

    ``tokens[b]`` holds sample ``b``'s prompt and answer less its last token, padded with 0
    (``attention_mask`` is 1 on real tokens). ``rows[b, t]`` is the row that predicts answer
    token ``t``; answers shorter than the longest repeat their last row. ``targets[b, t]`` is
    that answer token, -100 past the answer's end.

    >>> import torch
    >>> from headscope.tasks import EncodedSample
    >>> enc = EncodedSample(torch.tensor([5, 6, 7]), torch.tensor([8, 9]), {}, {})
    >>> batch = forced_batch([enc])
    >>> batch.tokens.tolist(), batch.rows.tolist(), batch.targets.tolist()
    ([[5, 6, 7, 8]], [[2, 3]], [[8, 9]])
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    rows: Int[Tensor, "batch answer"]
    targets: Int[Tensor, "batch answer"]
    lengths: tuple[int, ...]

    def to(self, device: Any) -> ForcedBatch:
        """The same batch with every tensor on ``device``."""
        return ForcedBatch(
            self.tokens.to(device),
            self.attention_mask.to(device),
            self.rows.to(device),
            self.targets.to(device),
            self.lengths,
        )


def forced_batch(samples: Sequence[Forceable]) -> ForcedBatch:
    """The teacher-forced input of ``samples``: see :class:`ForcedBatch` (on the CPU)."""
    if not samples:
        raise ConfigError("forced_batch needs at least one sample")
    empty = [i for i, s in enumerate(samples) if s.answer_ids.numel() == 0]
    if empty:
        raise ConfigError(f"samples {empty} have an empty answer: teacher forcing needs answer tokens")
    seqs = [torch.cat([s.input_ids.cpu(), s.answer_ids.cpu()[:-1]]) for s in samples]
    lengths = tuple(int(s.answer_ids.numel()) for s in samples)
    n_rows = max(lengths)
    tokens = torch.zeros(len(seqs), max(s.numel() for s in seqs), dtype=torch.long)
    attention_mask = torch.zeros_like(tokens)
    rows = torch.zeros(len(seqs), n_rows, dtype=torch.long)
    targets = torch.full((len(seqs), n_rows), -100, dtype=torch.long)
    for b, (sample, seq, n) in enumerate(zip(samples, seqs, lengths, strict=True)):
        tokens[b, : seq.numel()] = seq
        attention_mask[b, : seq.numel()] = 1
        rows[b] = sample.input_ids.numel() - 1 + torch.arange(n_rows).clamp(max=n - 1)
        targets[b, :n] = sample.answer_ids
    return ForcedBatch(tokens, attention_mask, rows, targets, lengths)


def answer_logits(model: Any, sample: Forceable) -> Float[Tensor, "answer vocab"]:
    """Logits of the rows that predict each answer token of ``sample``: one forward, no gradient.

    >>> from headscope import load_model
    >>> from headscope.tasks import Sample
    >>> model = load_model("tiny-llama")
    >>> enc = Sample("The key is", " blue").encode(model.tokenizer)
    >>> answer_logits(model, enc).shape[0] == len(enc.answer_ids)
    True
    """
    batch = forced_batch([sample])
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(batch.tokens.to(device))
    return logits[0, batch.rows[0].to(device)]
