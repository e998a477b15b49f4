"""The pipeline's data: needle samples per variant, and plain text to pre-train a base model on."""

from __future__ import annotations

import random
from typing import Any

from headscope.errors import ConfigError
from headscope.pipeline._config import PipelineConfig, Variant
from headscope.tasks import Sample, needle_sample, shipped_corpus

__all__ = ["generic_samples", "variant_samples"]

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
