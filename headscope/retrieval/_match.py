"""When is the produced token the token a head looks at: by id (Wu et al.) or by token text (default).

Wu et al. count a copy when the generated token's *id* equals the id of the prompt token at the
head's top-1 key (``match="id"``). Byte-level BPE and SentencePiece vocabularies give most words
two ids, with and without a leading space: " Paris" inside a document and "Paris" where an
answer starts (a chat model's reply, or a real MDQA answer, which carries no leading space) are
different tokens. Under id matching the first token of such an answer never scores, and a
single-token answer never does.

``match="text"`` (headscope's default) compares token *text*: each token's vocabulary string with
one leading space marker removed (``" "``, byte-level BPE's ``"Ġ"``, SentencePiece's ``"▁"``).
" Paris" and "Paris" are then the same token; any other two distinct tokens stay distinct (a
vocabulary maps strings to ids one to one), and a token made only of space markers keeps them
all (so " " and "  " stay two tokens). On needle samples whose answer keeps its leading space
(" teal" after the lead-in) both rules give the same hits; they differ where an answer token
lacks the leading space its copy in the context has, which text matching credits as a copy and
id matching does not.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from headscope._types import Choice
from headscope.errors import ConfigError

__all__ = ["Match", "TokenMatch"]

#: ``"text"``: tokens equal up to one leading space marker; ``"id"``: equal token ids (Wu et al.).
Match = Choice["id", "text"]
_MARKERS = (" ", "\u0120", "\u2581")  # a space, byte-level BPE's "Ġ", SentencePiece's "▁"


class TokenMatch:
    """Map token ids to match classes: two tokens match when their classes are equal.

    Under ``"text"`` a token's class is the smallest id among the tokens with its text (its
    vocabulary string less one leading space marker); under ``"id"`` it is the id itself. Ids the
    tokenizer does not know (a model vocabulary padded past the tokenizer's) are their own class.

    >>> from headscope.models import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> ids = torch.tensor([tok.convert_tokens_to_ids(t) for t in ("key", "Ġkey")])  # "key", " key"
    >>> TokenMatch(tok, "text")(ids).unique().numel(), TokenMatch(tok, "id")(ids).unique().numel()
    (1, 2)
    """

    def __init__(self, tokenizer: Any, match: Match) -> None:
        if match not in ("id", "text"):
            raise ConfigError(f"match must be 'id' or 'text'; got {match!r}")
        self.match = match
        self._table: Tensor | None = None
        if match == "text":
            strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
            first: dict[str, int] = {}
            classes = [first.setdefault(_text(s), i) if s is not None else i for i, s in enumerate(strings)]
            self._table = torch.tensor(classes, dtype=torch.long)

    def __call__(self, ids: Int[Tensor, "..."]) -> Int[Tensor, "..."]:
        if self._table is None:
            return ids
        if self._table.device != ids.device:
            self._table = self._table.to(ids.device)
        n = self._table.numel()
        return torch.where(ids < n, self._table[ids.clamp(max=n - 1)], ids)

    def __repr__(self) -> str:
        return f"TokenMatch({self.match!r})"


def _text(token: str) -> str:
    """A vocabulary string with one leading space marker removed; whitespace-only tokens are kept whole."""
    if token.startswith(_MARKERS) and token.lstrip("".join(_MARKERS)):
        return token[1:]
    return token
