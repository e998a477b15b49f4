"""The pipeline's data: needle samples per variant, and plain text to pre-train a base model on."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from headscope.errors import ConfigError, TaskError
from headscope.pipeline._config import PipelineConfig, Variant
from headscope.tasks import Sample, mdqa, needle_sample, real_mdqa, shipped_corpus

__all__ = ["check_held_out", "generic_samples", "mdqa_samples", "variant_samples"]

#: Seed offsets keeping training, evaluation and pre-training data apart.
_TRAIN, _EVAL, _GENERIC = 1, 2, 3


def variant_samples(
    config: PipelineConfig, variant: Variant, tokenizer: Any, *, split: str, n_ctx: int | None = None
) -> list[Sample]:
    """``config.n_train`` (``split="train"``) or ``config.n_eval`` (``"eval"``) needle samples of ``variant``.

    Contexts are ``config.length`` tokens with the needle at a depth drawn per sample; the two
    splits use different seeds, so no evaluation sample is trained on. ``n_ctx`` (the model's
    context) raises :class:`~headscope.ContextLengthError` for prompts that would not fit.

    >>> from headscope.models import tiny_tokenizer
    >>> from headscope.pipeline import REAL
    >>> s = variant_samples(PipelineConfig.smoke(n_eval=2), REAL, tiny_tokenizer(), split="eval")
    >>> len(s), s[0].meta["needle_kind"], s[0].meta["length"]
    (2, 'natural', 64)
    """
    if split not in ("train", "eval"):
        raise ConfigError(f"split must be 'train' or 'eval'; got {split!r}")
    if config.task == "mdqa":
        return mdqa_samples(config, variant, tokenizer, split=split)
    n, offset = (config.n_train, _TRAIN) if split == "train" else (config.n_eval, _EVAL)
    seed = config.seed * 1000 + offset
    depths = random.Random(f"{seed}-{variant.name}-depths")
    return [
        needle_sample(
            tokenizer,
            config.length,
            depths.uniform(0, 100),
            needle=variant.needle,  # type: ignore[arg-type]
            haystack=variant.haystack,  # type: ignore[arg-type]
            n_needles=config.n_needles,
            seed=seed,
            index=i,
            n_ctx=n_ctx,
        )
        for i in range(n)
    ]


def generic_samples(tokenizer: Any, *, n: int, length: int, seed: int = 0) -> list[Sample]:
    """``n`` windows of ``length`` tokens of the shipped documents, for language-model pre-training.

    Each window is a :class:`~headscope.tasks.Sample` whose first 8 tokens are the prompt and
    the rest the answer, so the answer-only loss of :func:`~headscope.training.finetune` is a
    plain next-token loss on nearly every token. The text holds no needle, so a model trained
    on it learns language, not retrieval.

    >>> from headscope.models import tiny_tokenizer
    >>> s = generic_samples(tiny_tokenizer(), n=1, length=40)[0]
    >>> len(tiny_tokenizer()(s.prompt + s.answer)["input_ids"]) <= 41
    True
    """
    rng = random.Random(f"{seed}-generic")
    texts = [doc.text for doc in shipped_corpus()]
    out = []
    for _ in range(n):
        ids = tokenizer(rng.choice(texts), add_special_tokens=False)["input_ids"]
        start = rng.randrange(max(1, len(ids) - length))
        window = ids[start : start + length]
        prompt = tokenizer.decode(window[:8])
        out.append(Sample(prompt, tokenizer.decode(window)[len(prompt) :], task="generic"))
    return out


def mdqa_samples(config: PipelineConfig, variant: Variant, tokenizer: Any, *, split: str) -> list[Sample]:
    """Multi-document QA samples of ``variant`` (``config.task == "mdqa"``), chat-wrapped when ``config.chat``.

    ``"eval"`` (real variant only): ``config.n_eval`` real questions at each of
    ``config.gold_positions``, all distinct. ``"train"``: ``config.n_train`` samples with the gold
    document at a random position; the real ones exclude every evaluation question and passage
    (checked by :func:`check_held_out`), the synthetic ones take the number of documents that
    brings their mean length in tokens closest to the real training data's.
    """
    seed = config.seed * 1000
    if split == "eval":
        if variant != config.real:
            raise ConfigError(f"evaluation data is real: split='eval' takes config.real, not {variant.name!r}")
        held: list[Sample] = []
        for position in config.gold_positions:
            held += real_mdqa(
                config.data,
                n_docs=config.n_docs,
                gold_position=position,
                n_samples=config.n_eval,
                seed=seed + _EVAL * 100 + position,
                exclude=held,
            )
        return _chat(config, held, tokenizer)
    evaluation = mdqa_samples(config, config.real, tokenizer, split="eval")
    real = real_mdqa(
        config.data, n_docs=config.n_docs, n_samples=config.n_train, seed=seed + _TRAIN, exclude=evaluation
    )
    real = _chat(config, real, tokenizer)
    check_held_out(real, evaluation)
    if variant == config.real:
        return real
    target = sum(_length(s, tokenizer) for s in real) / len(real)

    def build(n_docs: int, n: int) -> list[Sample]:
        samples = mdqa(
            n_docs=n_docs,
            needle=variant.needle,  # type: ignore[arg-type]
            haystack=variant.haystack,  # type: ignore[arg-type]
            n_samples=n,
            seed=seed + _TRAIN,
        )
        return _chat(config, samples, tokenizer)

    def gap(n_docs: int) -> float:
        probe = build(n_docs, min(4, config.n_train))
        return abs(sum(_length(s, tokenizer) for s in probe) / len(probe) - target)

    return build(min(range(1, 2 * config.n_docs + 1), key=gap), config.n_train)


def _length(sample: Sample, tokenizer: Any) -> int:
    enc = sample.encode(tokenizer)
    return len(enc.input_ids) + len(enc.answer_ids)


def _chat(config: PipelineConfig, samples: list[Sample], tokenizer: Any) -> list[Sample]:
    """Chat-wrapped samples (when ``config.chat``); an answer without a lead-in opens the assistant's turn unspaced."""
    if not config.chat:
        return samples
    out = []
    for sample in samples:
        if not sample.lead_in:
            sample = replace(sample, answer=sample.answer.lstrip())
        out.append(sample.with_chat_template(tokenizer))
    return out


def check_held_out(train: Sequence[Sample], evaluation: Sequence[Sample]) -> None:
    """:class:`~headscope.TaskError` if a training sample asks an evaluation question or shows its gold passage.

    >>> from headscope.tasks import Sample
    >>> check_held_out([Sample("Q1", " a", meta={"question": "Q1"})], [Sample("Q2", " b", meta={"question": "Q2"})])
    """
    asked = {s.meta.get("question") for s in train}
    shown = "\n".join(s.prompt for s in train)
    for i, sample in enumerate(evaluation):
        if sample.meta.get("question") in asked:
            raise TaskError(f"evaluation sample {i} asks a training question: {sample.meta['question']!r}")
        for text in sample.text("gold_doc"):
            body = text.split(") ", 1)[-1]  # drop the "Document [i](Title: ...)" header
            if body in shown:
                raise TaskError(f"evaluation sample {i}'s gold passage appears in the training data: {body[:60]!r}...")
