"""``Sample``: one prompt with its gold answer and labelled spans, aligned exactly to tokens.

Every task builder and loader returns samples, and every score reads token positions from
them, so the alignment lives here once. Spans are character ranges ``[start, end)`` of
``Sample.prompt``; :meth:`Sample.encode` maps them to token ranges with the tokenizer's own
offsets. A token belongs to a span when its text, whitespace stripped, overlaps the span. When
a span boundary falls inside a merged token (``" 47" "12."`` around the needle ``4712``), the
token range covers the whole token and ``EncodedSample.aligned[label]`` is ``False``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from headscope.errors import SpanError

__all__ = ["EncodedSample", "Sample", "Span"]

#: Labels the builders use; a sample may carry others.
NEEDLE, GOLD_DOC, ANSWER, DOC = "needle", "gold_doc", "answer", "doc"


@dataclass(frozen=True)
class Span:
    """A labelled character range ``[start, end)`` of a sample's prompt."""

    label: str
    start: int
    end: int


@dataclass(frozen=True)
class EncodedSample:
    """A sample as tokens: prompt ids, answer ids, and token ranges ``[start, end)`` per label."""

    input_ids: Int[Tensor, " pos"]
    answer_ids: Int[Tensor, " answer"]
    spans: dict[str, list[tuple[int, int]]]
    aligned: dict[str, bool]

    def positions(self, label: str) -> list[tuple[int, int]]:
        """Token ranges of ``label``; :class:`SpanError` if the sample has none."""
        if not self.spans.get(label):
            raise SpanError(f"sample has no {label!r} span; it has {sorted(k for k, v in self.spans.items() if v)}")
        return self.spans[label]


@dataclass(frozen=True)
class Sample:
    """One task instance.

    ``prompt`` is the exact text fed to the model (context and question, through a chat template
    if one was applied); ``answer`` is the gold continuation; ``spans`` label parts of ``prompt``
    (``"needle"``, ``"gold_doc"``, ``"answer"`` for answer occurrences in the context, ``"doc"``
    for every document). ``bos`` says whether a BOS token goes before the prompt (chat templates
    bring their own special tokens).

    ``lead_in`` is how the assistant's reply starts before the answer, so that ``lead_in + answer``
    reads as one sentence: the needle sentence up to its value (``"The favorite spice of X is"``
    before ``" saffron"``). :meth:`with_chat_template` writes it at the start of the assistant's
    turn, which makes the gold answer the very next tokens, as teacher-forced scores need. The
    builders set it; for your own samples pass ``lead_in=`` or ``dataclasses.replace(s, lead_in=...)``.
    It should end where the answer's leading space begins (no trailing space).

    >>> s = Sample(prompt="The key is 4712. What is the key?", answer=" 4712", spans=(Span("needle", 11, 15),))
    >>> s.text("needle")
    ['4712']
    """

    prompt: str
    answer: str
    spans: tuple[Span, ...] = ()
    task: str = "custom"
    bos: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    lead_in: str = ""

    def __post_init__(self) -> None:
        bad = [s for s in self.spans if not (0 <= s.start < s.end <= len(self.prompt))]
        if bad:
            raise SpanError(f"spans outside the prompt of {len(self.prompt)} characters: {bad}")

    def text(self, label: str) -> list[str]:
        """The prompt text under each span of ``label``."""
        return [self.prompt[s.start : s.end] for s in self.spans if s.label == label]

    def labels(self) -> list[str]:
        return sorted({s.label for s in self.spans})

    def encode(self, tokenizer: Any) -> EncodedSample:
        """Tokenize the prompt and answer and align every span to token positions.

        The answer is tokenized on its own (answers start with a space, as generated text does).
        Token positions count the BOS token when ``self.bos``.
        """
        enc = tokenizer(self.prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        shift = 0
        if self.bos:
            if tokenizer.bos_token_id is None:
                raise SpanError("sample wants a BOS token but the tokenizer has none; set bos=False")
            ids, shift = [tokenizer.bos_token_id, *ids], 1
        spans: dict[str, list[tuple[int, int]]] = {}
        aligned: dict[str, bool] = {}
        for span in self.spans:
            (start, end), exact = _token_range(self.prompt, offsets, span)
            spans.setdefault(span.label, []).append((start + shift, end + shift))
            aligned[span.label] = aligned.get(span.label, True) and exact
        answer_ids = tokenizer(self.answer, add_special_tokens=False)["input_ids"]
        return EncodedSample(
            input_ids=torch.tensor(ids, dtype=torch.long),
            answer_ids=torch.tensor(answer_ids, dtype=torch.long),
            spans=spans,
            aligned=aligned,
        )

    def with_chat_template(
        self, tokenizer: Any, system: str | None = None, answer_prefix: str | None = "auto"
    ) -> Sample:
        """The same sample with ``prompt`` wrapped in the tokenizer's chat template (spans shifted).

        ``answer_prefix`` is written at the start of the assistant's turn, after the generation
        prompt: ``"auto"`` (default) writes the sample's :attr:`lead_in`, ``""`` or ``None`` writes
        nothing, any other text is written instead. Chat models tend to restate the question before
        the answer ("The native language of X is Welsh."); with the lead-in in the prompt the gold
        answer is the very next tokens, which teacher-forced detection, :func:`~headscope.answer_accuracy`
        and patching at the answer position need. The returned sample's ``lead_in`` is ``""`` (it
        is now part of the prompt).

        >>> from headscope.models import tiny_tokenizer
        >>> tok = tiny_tokenizer()
        >>> tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\\n{% endfor %}<assistant>"
        >>> s = Sample("The key is 4712. What is the key?", " 4712", lead_in="The key is")
        >>> s.with_chat_template(tok).prompt
        '<user>The key is 4712. What is the key?\\n<assistant>The key is'
        >>> s.with_chat_template(tok, answer_prefix=None).prompt
        '<user>The key is 4712. What is the key?\\n<assistant>'
        """
        prefix = self.lead_in if answer_prefix == "auto" else answer_prefix or ""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": self.prompt}
        ]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        offset = rendered.find(self.prompt)
        if offset < 0:
            raise SpanError("the chat template changed the prompt text; spans cannot be carried over")
        spans = tuple(Span(s.label, s.start + offset, s.end + offset) for s in self.spans)
        return replace(self, prompt=rendered + prefix, spans=spans, bos=False, lead_in="")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        data = dict(data)
        data["spans"] = tuple(Span(**s) for s in data.get("spans", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)


def _token_range(text: str, offsets: list[tuple[int, int]], span: Span) -> tuple[tuple[int, int], bool]:
    """First and one-past-last token overlapping ``span`` (whitespace ignored), and whether both ends align."""
    hits = []
    for i, (a, b) in enumerate(offsets):
        if b <= span.start or a >= span.end:  # cannot overlap: stripping whitespace only narrows [a, b)
            continue
        piece = text[a:b]
        a2 = a + (len(piece) - len(piece.lstrip()))
        b2 = b - (len(piece) - len(piece.rstrip()))
        if a2 < b2 and a2 < span.end and b2 > span.start:
            hits.append((i, a2, b2))
    if not hits:
        raise SpanError(
            f"{span.label!r} span {span.start}:{span.end} ({text[span.start : span.end]!r}) covers no token"
        )
    exact = hits[0][1] >= span.start and hits[-1][2] <= span.end
    return (hits[0][0], hits[-1][0] + 1), exact
