"""``finetune``: a plain AdamW loop on the answer-only loss, training a chosen set of parameters."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from headscope._types import Attention, Choice
from headscope.errors import ConfigError, InputTypeError, ModelError
from headscope.models import hf_twin, model_info, twin_unavailable
from headscope.tasks import EncodedSample
from headscope.training._loss import Samples, answer_nll, prepare
from headscope.training._result import FinetuneResult
from headscope.training._select import Train, select_parameters

Schedule = Choice["constant", "linear", "cosine"]
EvalFn = Callable[[Any, int], Mapping[str, float]]


def finetune(
    model: Any,
    samples: Samples,
    tokenizer: Any = None,
    *,
    train: Train = "attention",
    lr: float = 1e-4,
    schedule: Schedule = "constant",
    warmup: int = 0,
    epochs: int = 1,
    steps: int | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    check_gradients: bool = True,
    attention: Attention = "eager",
    progress: bool = True,
) -> FinetuneResult:
    """Train ``model`` **in place** on the answer tokens of ``samples``, updating only ``train``.

    The seed paper fine-tunes only the attention weights (``train="attention_weights"``; see
    :func:`select_parameters` for the presets, regular expressions and predicates). Each optimizer
    step (AdamW) averages the answer-token loss over ``batch_size * grad_accum`` samples, drawn
    from passes over the data shuffled with ``seed``; runs are deterministic under a seed. The run
    lasts ``steps`` steps, or by default ``epochs`` passes. ``schedule`` decays the learning rate
    after ``warmup`` linear warm-up steps; ``max_grad_norm`` clips (``None``: no clipping).

    The model stays in eval mode throughout (no dropout, as in ``HookedTransformer``, so every
    kind trains alike) and is left in eval mode with its ``requires_grad`` flags restored.
    ``eval_fn(model, step)`` runs before training, every ``eval_every`` steps and at the end.

    ``attention="fused"`` runs each training forward and backward through a Hugging Face twin
    of the bridge (sdpa attention) that shares its parameter
    tensors, so the bridge's own weights are trained, 1.5x faster on SmolLM2 at 750 tokens;
    hooks attached to the bridge do not fire there. ``"eager"`` (default) runs the model itself.

    With ``check_gradients``, the first step checks that every selected parameter gets a
    non-zero gradient, and raises :class:`~headscope.ModelError` naming those that do not,
    before any update (on TransformerLens 3.9, a Llama bridge in compatibility mode gives its
    MLP weights none). Prefer a plain bridge: compatibility mode folds layer norms into the
    query, key and value weights, so it trains another parameterisation of the same model.

    To train a base model **from scratch** (one without retrieval ability), fine-tune a freshly
    initialised model with ``train="all"``: ``finetune(load_folder(tiny_folder("llama", seed=1)),
    samples, train="all", lr=3e-3)``.

    >>> from headscope import load_model
    >>> from headscope.tasks import Sample
    >>> model = load_model("tiny-llama")
    >>> data = [Sample(f"The key is {w}. The key is", f" {w}") for w in ("red", "blue")]
    >>> result = finetune(model, data, lr=1e-2, steps=5, batch_size=2, progress=False)
    >>> result.steps, result.losses[-1] < result.losses[0]
    (5, True)
    """
    encoded = prepare(model, samples, tokenizer)
    _check_settings(lr, epochs, steps, batch_size, grad_accum, warmup, eval_every, schedule)
    chosen = select_parameters(model, train)
    forward = _forward(model, attention, chosen)
    per_epoch = math.ceil(math.ceil(len(encoded) / batch_size) / grad_accum)
    total = steps if steps is not None else epochs * per_epoch
    settings = dict(
        model=model_info(model).name,
        train=train if isinstance(train, str) else (repr(train) if callable(train) else list(train)),
        lr=lr,
        schedule=schedule,
        warmup=warmup,
        steps=total,
        batch_size=batch_size,
        grad_accum=grad_accum,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        seed=seed,
        n_samples=len(encoded),
        attention=attention,
    )
    params = list(chosen.values())
    flags = {id(p): p.requires_grad for p in model.parameters()}
    batches = _micro_batches(encoded, batch_size, seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    lrs: list[float] = []
    evals: list[dict[str, float]] = []
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        if eval_fn is not None:
            evals.append(_evaluate(eval_fn, model, 0))
        for step in tqdm(range(total), desc="fine-tuning", disable=not progress):
            group = [next(batches) for _ in range(grad_accum)]
            n_tokens = sum(len(s.answer_ids) for b in group for s in b)
            optimizer.zero_grad(set_to_none=True)
            loss = 0.0
            for micro in group:
                nll, _ = answer_nll(model, micro, forward=forward)
                if not nll.requires_grad:  # no selected parameter reaches the loss at all
                    _check_gradients(model, chosen)
                (nll / n_tokens).backward()
                loss += nll.item() / n_tokens
            if step == 0 and check_gradients:
                _check_gradients(model, chosen)
            if max_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, max_grad_norm)
            rate = lr * _factor(step, total, warmup, schedule)
            for g in optimizer.param_groups:
                g["lr"] = rate
            optimizer.step()
            losses.append(loss)
            lrs.append(rate)
            done = step + 1
            if eval_fn is not None and ((eval_every and done % eval_every == 0) or done == total):
                evals.append(_evaluate(eval_fn, model, done))
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
        model.eval()
    return FinetuneResult(
        losses=tuple(losses), lrs=tuple(lrs), evals=tuple(evals), trained=tuple(chosen), settings=settings
    )


def _forward(
    model: Any, attention: str, chosen: Mapping[str, nn.Parameter]
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``None`` (call the model) for ``"eager"``; for ``"fused"`` the logits of an sdpa twin sharing its weights.

    ``"auto"`` is ``"fused"`` where a twin can stand in for the model (a fused-route architecture,
    no hooks attached: an eager knockout's hooks must run, and every ``chosen`` parameter used by
    the twin: TransformerLens 3.9 adds a zero ``lm_head.bias`` that Hugging Face's model has no
    slot for) and ``"eager"`` elsewhere. The twin honours a knockout active on the bridge's fused route.
    """
    if attention not in ("auto", "fused", "eager"):
        raise ConfigError(f"attention must be 'auto', 'fused' or 'eager'; got {attention!r}")
    reason = twin_unavailable(model) if attention != "eager" else "attention='eager'"
    twin = hf_twin(model) if reason is None else None
    if twin is not None:
        shared = {id(p) for p in twin.parameters()}
        left = [name for name, p in chosen.items() if id(p) not in shared]
        if left:
            reason = f"the twin has no slot for {', '.join(left[:3])}, which the bridge adds and train= selects"
    if reason is not None:
        if attention == "fused":
            raise ModelError(f"attention='fused' cannot train this model: {reason}. Use attention='auto'.")
        return None
    return lambda tokens: twin(tokens).logits


def _micro_batches(encoded: list[EncodedSample], batch_size: int, seed: int) -> Iterator[list[EncodedSample]]:
    """Endless stream of batches: each pass over the data in a fresh seeded order."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for i in range(0, len(order), batch_size):
            yield [encoded[j] for j in order[i : i + batch_size]]


def _factor(step: int, total: int, warmup: int, schedule: Schedule) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up to 1, then the schedule's decay."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def _check_gradients(model: Any, chosen: dict[str, nn.Parameter]) -> None:
    dead = [n for n, p in chosen.items() if p.grad is None or not bool(p.grad.any())]
    if not dead:
        return
    hint = ""
    if getattr(model, "compatibility_mode", False):
        hint = (
            " This is a TransformerBridge in compatibility mode, which on TransformerLens 3.9 computes "
            "some layers (Llama MLPs) from copies of the weights; fine-tune without compatibility_mode."
        )
    shown = ", ".join(dead[:10]) + (f", ... ({len(dead)} in all)" if len(dead) > 10 else "")
    raise ModelError(
        f"{len(dead)} of the {len(chosen)} selected parameters get no gradient from the answer loss, "
        f"so training would not change them: {shown}.{hint} Leave them out of train=, or check for "
        "hooks that detach activations. No update was made."
    )


def _evaluate(eval_fn: EvalFn, model: Any, step: int) -> dict[str, float]:
    metrics = eval_fn(model, step)
    if not isinstance(metrics, Mapping):
        raise InputTypeError(
            f"eval_fn must return a mapping of metric names to numbers, such as {{'accuracy': 0.5}}; "
            f"got a {type(metrics).__name__}"
        )
    model.eval()
    return {"step": step, **{str(k): float(v) for k, v in metrics.items() if k != "step"}}


def _check_settings(
    lr: float,
    epochs: int,
    steps: int | None,
    batch_size: int,
    grad_accum: int,
    warmup: int,
    eval_every: int | None,
    schedule: str,
) -> None:
    problems = []
    if not lr > 0:
        problems.append(f"lr must be positive (got {lr})")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if value < 1:
            problems.append(f"{name} must be at least 1 (got {value})")
    if steps is not None and steps < 1:
        problems.append(f"steps must be at least 1 or None (got {steps})")
    if warmup < 0:
        problems.append(f"warmup must be a number of steps >= 0 (got {warmup})")
    if eval_every is not None and eval_every < 1:
        problems.append(f"eval_every must be at least 1 or None (got {eval_every})")
    if schedule not in ("constant", "linear", "cosine"):
        problems.append(f"schedule must be 'constant', 'linear' or 'cosine' (got {schedule!r})")
    if problems:
        raise ConfigError("; ".join(problems))
