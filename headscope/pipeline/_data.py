"""The pipeline's data: needle samples per variant, and plain text to pre-train a base model on."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from headscope.errors import ConfigError, TaskError
from headscope.pipeline._config import PipelineConfig, Variant
from headscope.tasks import Sample, mdqa, needle_sample, real_mdqa, shipped_corpus

__all__ = [
    "ANSWER_CUE",
    "answer_format",
    "check_held_out",
    "generic_samples",
    "mdqa_samples",
    "split_evaluation",
    "variant_samples",
]

#: Seed offsets keeping training, evaluation and pre-training data apart.
_TRAIN, _EVAL, _GENERIC = 1, 2, 3
#: The cue every pipeline MDQA answer follows, real or synthetic (Liu et al.'s prompt ends with it).
ANSWER_CUE = "Answer:"


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

    Real and synthetic samples share one answer format (see :func:`answer_format`): the answer
    follows the cue ``Answer:`` with its leading space, in the user's prompt or, with
    ``config.chat``, at the start of the assistant's turn.

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
        return answer_format(config, held, tokenizer)
    evaluation = mdqa_samples(config, config.real, tokenizer, split="eval")
    real = real_mdqa(
        config.data, n_docs=config.n_docs, n_samples=config.n_train, seed=seed + _TRAIN, exclude=evaluation
    )
    real = answer_format(config, real, tokenizer)
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
        return answer_format(config, samples, tokenizer)

    def gap(n_docs: int) -> float:
        probe = build(n_docs, min(4, config.n_train))
        return abs(sum(_length(s, tokenizer) for s in probe) / len(probe) - target)

    return build(min(range(1, 2 * config.n_docs + 1), key=gap), config.n_train)


def _length(sample: Sample, tokenizer: Any) -> int:
    enc = sample.encode(tokenizer)
    return len(enc.input_ids) + len(enc.answer_ids)


def answer_format(config: PipelineConfig, samples: list[Sample], tokenizer: Any) -> list[Sample]:
    """Every MDQA sample, real or synthetic, in one answer format: ``Answer:`` then the answer with its leading space.

    Real NQ rows have no lead-in, while synthetic ones carry their fact's ("The hometown of X
    is"); training on both as they come would teach two formats, so the variants would differ in
    format as well as in data. Both therefore answer after the same cue, Liu et al.'s own
    ``Answer:``, which every prompt already ends with: a plain prompt stays as it is (no lead-in),
    and a chat prompt moves the cue from the user's turn to the start of the assistant's
    (``...<|im_start|>assistant\nAnswer: Paris``). The answer keeps its leading space, so its
    first token is the token the documents hold (``" Paris"``, not ``"Paris"``): teacher-forced
    scores, generation and the copy score of detection read one and the same answer.
    """
    out = []
    for sample in samples:
        sample = replace(sample, answer=" " + sample.answer.lstrip(), lead_in="")
        if config.chat:
            if not sample.prompt.endswith(f"\n{ANSWER_CUE}"):
                raise TaskError(f"an MDQA prompt should end with {ANSWER_CUE!r}; got ...{sample.prompt[-40:]!r}")
            question = replace(sample, prompt=sample.prompt.removesuffix(ANSWER_CUE).rstrip("\n"))
            sample = question.with_chat_template(tokenizer, answer_prefix=ANSWER_CUE)
        out.append(sample)
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


def split_evaluation(samples: Sequence[Sample], n_analysis: int | None) -> tuple[list[int], list[int]]:
    """Indices of the evaluation samples that choose heads (detection) and of the others, that test them (analysis).

    Heads chosen on the samples that then measure their knockout or patching would be tested on
    the very questions that made them look important, so the two parts are disjoint. Both are
    balanced over ``meta["gold_position"]`` (samples without one form one group): ``n_analysis``
    samples go to analysis, dealt over the positions in turn as evenly as the count allows (the
    last samples of each position), and every position keeps at least one for detection.
    ``n_analysis=None`` takes half of each position (rounded down).

    >>> from headscope.tasks import Sample
    >>> held = [Sample("q", " a", meta={"gold_position": p}) for p in (0, 0, 0, 2, 2, 2)]
    >>> split_evaluation(held, 4)
    ([0, 3], [1, 2, 4, 5])
    >>> split_evaluation(held, None)
    ([0, 1, 3, 4], [2, 5])
    """
    groups: dict[Any, list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(sample.meta.get("gold_position"), []).append(i)
    sizes = [len(g) for g in groups.values()]
    if n_analysis is None:
        share = [size // 2 for size in sizes]
    else:
        share = [n_analysis // len(groups) + (j < n_analysis % len(groups)) for j in range(len(groups))]
    if not sum(share) or any(n >= size for n, size in zip(share, sizes, strict=True)):
        raise ConfigError(
            f"cannot split {len(samples)} evaluation samples into {n_analysis} for analysis and the rest for "
            f"detection with every gold position on the detection side; samples per position: "
            f"{dict(zip(groups, sizes, strict=True))}: use fewer analysis samples (n_analysis) or more "
            f"evaluation samples (n_eval)"
        )
    analysis = sorted(i for g, n in zip(groups.values(), share, strict=True) for i in g[len(g) - n :])
    return sorted(set(range(len(samples))) - set(analysis)), analysis
