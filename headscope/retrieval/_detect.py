"""``detect_retrieval_heads``: Wu et al.'s copy-paste score, by greedy generation or teacher forcing.

At each answer token and for every (layer, query head), take the head's top-1 attended key on
the query row that predicts that token. The head scores a hit when the key lies in the needle
(the union of the sample's ``span`` spans) and the prompt token there is the token being
produced: the same token text (``match="text"``, the default: " Paris" in a document and "Paris"
at the start of an answer are one token) or the same token id (``match="id"``, Wu et al.'s
comparison, under which an answer token without its context copy's leading space never scores;
see :mod:`headscope.retrieval._match`). A sample's score is hits / needle length (tokens of its longest needle span);
only samples the model answered count, and a head's retrieval score is the mean over them.

``mode="generation"`` is Wu et al.'s procedure: prefill, then greedy decoding with a KV cache,
up to ``max_new_tokens`` or a stop token; the produced token is the model's own, and a sample
counts when ``success(sample, generated_text)`` holds (default :data:`DEFAULT_SUCCESS`: ROUGE-1
recall of the gold answer above 0.5, and the sample's value, when it has one, named as a word).

``mode="teacher_forced"`` (the fast default) runs one forward over prompt + gold answer. The
token produced at answer position ``t`` is the gold token ``t``, read on the row of the token
before it. With ``require_prediction=True`` (default) a hit also needs the model's own argmax
there to equal the gold token, so a hit is a token the model would really have copied, as in
generation mode; ``False`` credits a head that points at the right needle token even where the
model would have said something else. A sample counts when ``success(sample, text)`` holds for
the text of the model's argmax predictions at the answer positions.

``score="mass"`` reads the same rows for the other common retrieval score: the attention weight
each head puts on the needle (summed over its tokens), averaged over the scored rows of a sample
(every answer row, teacher-forced; every decoding step, generation), then over counted samples.

``attention`` picks the route (:mod:`headscope.retrieval._routes`): ``"fused"`` runs sdpa and
computes only the scored rows, never a ``[query, key]`` matrix (bridges of Llama, Mistral and
Qwen2/3 decoders); ``"eager"`` reads TransformerLens's full patterns; ``"auto"`` (default) takes
fused wherever it is available. Both routes give equal hit counts: they read rows with one
function and one tie rule (the earliest key among equal maximal weights).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope._types import Choice
from headscope.distributed import World, item_key, model_fingerprint, sharded_map, token_cost
from headscope.errors import ConfigError
from headscope.models import model_info, tokenizer_of
from headscope.retrieval._fused import FusedRoute
from headscope.retrieval._match import Match, TokenMatch
from headscope.retrieval._outcomes import SuccessLog, describe_rule
from headscope.retrieval._prepare import Prepared, prepare
from headscope.retrieval._rouge import DEFAULT_SUCCESS
from headscope.retrieval._routes import Attention, EagerRoute, choose_route
from headscope.retrieval._scores import RetrievalScores, Score
from headscope.retrieval._top1 import count_hits, needle_mask
from headscope.tasks import Sample
from headscope.tasks._forced import forced_batch

__all__ = ["Mode", "detect_retrieval_heads"]

Mode = Choice["teacher_forced", "generation"]
Route = EagerRoute | FusedRoute
Success = Callable[[Sample, str], bool]


def detect_retrieval_heads(
    model: Any,
    samples: Sequence[Sample],
    *,
    mode: Mode = "teacher_forced",
    score: Score = "copy",
    attention: Attention = "auto",
    span: str = "needle",
    match: Match = "text",
    require_prediction: bool = True,
    max_new_tokens: int = 50,
    stop_ids: Collection[int] | None = None,
    success: Success | None = None,
    batch_size: int = 1,
    keep_per_sample: bool = True,
    progress: bool = True,
    distributed: bool = False,
    resume: str | Path | None = None,
) -> RetrievalScores:
    """Retrieval score of every head of ``model`` on ``samples`` (see the module docstring).

    **Arguments:**
    - ``mode``: ``"teacher_forced"`` (one forward per sample over prompt + gold answer) or
      ``"generation"`` (Wu et al.'s greedy decoding with a KV cache).
    - ``score``: ``"copy"`` (Wu et al.'s copy-paste hits / needle length) or ``"mass"`` (mean
      attention mass on the needle at the scored rows).
    - ``attention``: ``"auto"`` (fused where available), ``"fused"`` (raise if unavailable) or
      ``"eager"``; see the module docstring.
    - ``span``: the span label to copy from; ``"answer"`` scores gold-answer
      occurrences in the context (the seed paper's QA setting). Several spans are united.
    - ``match``: copy scores only; when the produced token is the one at the head's top-1 key:
      ``"text"`` (same token text up to a leading space marker) or ``"id"`` (Wu et al.'s id
      comparison). With ``require_prediction`` the model's argmax is compared the same way.
    - ``require_prediction``: teacher-forced only; a hit also needs the model's argmax to be
      the gold token.
    - ``max_new_tokens``, ``stop_ids``: generation only; ``stop_ids`` defaults to the
      tokenizer's EOS token.
    - ``success``: ``success(sample, output_text) -> bool`` decides which samples count;
      default :data:`~headscope.retrieval.DEFAULT_SUCCESS` (ROUGE-1 recall above 0.5 and
      ``meta["value"]``, where a sample has one, named as a whole word).
    - ``batch_size``: teacher-forced only; samples are right-padded, so every scored query row
      sees only real tokens under the causal mask and keeps its positions, on every model kind.
      Generation decodes one sample at a time (samples stop at different steps, and on CPU a
      batched decoding step is no cheaper per token), as Wu et al. do.

    - ``distributed``: split the samples over the ranks of the initialised ``torch.distributed``
      group (:mod:`headscope.distributed`; balanced by tokens on the fused route, tokens squared
      on the eager one) and merge in sample order: every rank returns scores equal, bit for bit,
      to a one-process run's (same thread count, same device kind).
    - ``resume``: a folder for one result file per finished sample (or batch); a rerun reads
      them instead of recomputing. Files are keyed by the model's weights, the settings and the
      sample's tokens, so a changed setting recomputes.

    **Cost:** one forward per sample (teacher-forced) or per produced token (generation, with a
    KV cache). On the eager route TransformerLens builds each layer's attention pattern, as in a
    plain forward; a hook on ``hook_pattern`` keeps only the scored query rows, so no pattern
    outlives its layer. The fused route costs about one Hugging Face sdpa forward.

    **Returns:** :class:`RetrievalScores` (hit sums and counts; merge shards with ``+``).

    >>> from headscope import load_model
    >>> from headscope.tasks import Sample, Span
    >>> model = load_model("tiny-llama")
    >>> s = Sample("Note: the code is 4712. Filler text. The code is", " 4712", (Span("needle", 18, 22),))
    >>> scores = detect_retrieval_heads(
    ...     model, [s], require_prediction=False, success=lambda s, out: True, progress=False
    ... )
    >>> scores.shape, scores.n_counted
    ((2, 4), 1)
    """
    if mode not in ("teacher_forced", "generation"):
        raise ConfigError(f"mode must be 'teacher_forced' or 'generation'; got {mode!r}")
    if score not in ("copy", "mass"):
        raise ConfigError(f"score must be 'copy' or 'mass'; got {score!r}")
    if match not in ("id", "text"):
        raise ConfigError(f"match must be 'text' (token text, default) or 'id' (Wu et al.'s ids); got {match!r}")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError(f"batch_size and max_new_tokens must be >= 1; got {batch_size} and {max_new_tokens}")
    info = model_info(model)
    tokenizer = tokenizer_of(model)
    success = success if success is not None else DEFAULT_SUCCESS
    generation = mode == "generation"
    mass = score == "mass"
    same = TokenMatch(tokenizer, match)
    extra = max_new_tokens - 1 if generation else None
    prepared = prepare(samples, tokenizer, info, span=span, extra_tokens=extra, same=same)
    settings: dict[str, Any] = {"span": span, "success": describe_rule(success)}
    if not mass:
        settings["match"] = match
    route = choose_route(model, attention, info.n_layers)
    if generation:
        stops = set(stop_ids) if stop_ids is not None else {tokenizer.eos_token_id} - {None}
        settings.update(max_new_tokens=max_new_tokens, stop_ids=sorted(stops))
    else:
        settings.update(require_prediction=require_prediction)
    judge = success.rule if isinstance(success, SuccessLog) else success
    chunk = 1 if generation else batch_size
    batches = [prepared[i : i + chunk] for i in range(0, len(prepared), chunk)]

    def score_batch(batch: list[Prepared]) -> list[Judged]:
        if generation:
            results = _generation(route, batch, same, mass=mass, max_new_tokens=max_new_tokens, stop_ids=stops)
        else:
            results = _teacher_forced(
                route, batch, same, mass=mass, require_prediction=require_prediction, batch_size=chunk
            )
        judged = []
        for item, value, output_ids in results:
            output = tokenizer.decode(output_ids.tolist())
            judged.append(Judged(value, output, bool(judge(item.sample, output))))
        return judged

    fused = isinstance(route, FusedRoute)
    extra_cost = max_new_tokens if generation else 0
    keys = None
    if resume is not None:
        run = {"model": info.name, "weights": model_fingerprint(model), "mode": mode, "score": score, **settings}
        keys = [item_key("detect", run, [_tokens(p) for p in batch]) for batch in batches]
    parts = sharded_map(
        score_batch,
        batches,
        keys=keys,
        costs=[sum(token_cost(_length(p) + extra_cost, fused=fused) for p in batch) for batch in batches],
        partial=resume,
        encode=lambda judged: [j.to_json() for j in judged],
        decode=lambda rows: [Judged.from_json(row) for row in rows],
        context=lambda: _session(route),
        desc=f"retrieval heads ({mode})",
        unit="batch" if chunk > 1 else "sample",
        progress=progress,
        world=None if distributed else World(),  # one process, even inside a group the caller shards itself
    )
    judged = [j for part in parts for j in part]
    if isinstance(success, SuccessLog):
        success.records.extend((p.sample, j.output, j.ok) for p, j in zip(prepared, judged, strict=True))
    hit_sums = torch.zeros(info.shape, dtype=torch.float64)
    counted = [j.value for j in judged if j.ok]
    for value in counted:
        hit_sums += value
    per = torch.stack(counted) if counted else torch.zeros(0, *info.shape, dtype=torch.float64)
    return RetrievalScores(
        hit_sums, len(counted), len(prepared), info.name, mode, settings, per if keep_per_sample else None, score
    )


@dataclass(frozen=True)
class Judged:
    """One sample's scores ``[layer, head]``, the model's output text, and whether it counts."""

    value: Float[Tensor, "layer head"]
    output: str
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value.tolist(), "output": self.output, "ok": self.ok}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Judged:
        return cls(torch.tensor(row["value"], dtype=torch.float64), row["output"], row["ok"])


@contextmanager
def _session(route: Route) -> Iterator[None]:
    with torch.no_grad(), route.session():
        yield


def _length(p: Prepared) -> int:
    return p.input_ids.numel() + p.answer_ids.numel()


def _tokens(p: Prepared) -> list[Any]:
    return [p.input_ids.tolist(), p.answer_ids.tolist(), list(p.spans)]


Scored = Iterator[tuple[Prepared, Float[Tensor, "layer head"], Int[Tensor, " answer"]]]


def _teacher_forced(
    route: Route, prepared: list[Prepared], same: TokenMatch, *, mass: bool, require_prediction: bool, batch_size: int
) -> Scored:
    """Batches of right-padded prompt + answer[:-1]; scored rows are those predicting answer tokens."""
    device = route.device
    for first in range(0, len(prepared), batch_size):
        batch = prepared[first : first + batch_size]
        forced = forced_batch(batch).to(device)
        tokens = forced.tokens
        needles = torch.stack([needle_mask(tokens.shape[1], p.spans, device) for p in batch]) if mass else None
        logits, reads = route.forward(tokens, forced.rows, needles, forced.attention_mask)
        predicted = logits.argmax(-1)
        del logits
        for b, (p, n) in enumerate(zip(batch, forced.lengths, strict=True)):
            seq = tokens[b, : p.input_ids.numel() + n - 1]
            if mass:
                yield p, reads.mass[:, b, :, :n].to(torch.float64).mean(-1).cpu(), predicted[b, :n]  # type: ignore[index]
                continue
            gold = same(p.answer_ids.to(device))
            ones = torch.ones(n, dtype=torch.bool, device=device)
            valid = same(predicted[b, :n]) == gold if require_prediction else ones
            mask = needle_mask(seq.numel(), p.spans, device)
            hits = count_hits(reads.top1[:, b, :, :n], same(seq.to(device)), mask, gold, valid)
            yield p, hits.to(torch.float64).cpu() / p.needle_len, predicted[b, :n]


def _generation(
    route: Route,
    prepared: list[Prepared],
    same: TokenMatch,
    *,
    mass: bool,
    max_new_tokens: int,
    stop_ids: Collection[int],
) -> Scored:
    """Greedy decoding per sample; every step's last query row is scored against the produced token."""
    for p in prepared:
        needles = needle_mask(p.input_ids.numel(), p.spans, route.device)[None] if mass else None
        produced: list[int] = []
        steps: list[Tensor] = []
        for token, reads in route.steps(p.input_ids, needles, max_new_tokens=max_new_tokens, stop_ids=stop_ids):
            produced.append(token)
            steps.append((reads.mass if mass else reads.top1)[:, 0, :, 0])  # type: ignore[index]  # [layer, head]
        out = torch.tensor(produced)
        read = torch.stack(steps, dim=-1).cpu()
        if mass:
            yield p, read.to(torch.float64).mean(-1), out
            continue
        seq = torch.cat([p.input_ids.cpu(), out[:-1]])
        mask = needle_mask(seq.numel(), p.spans, torch.device("cpu"))
        valid = torch.ones(len(produced), dtype=torch.bool)
        yield p, count_hits(read, same(seq), mask, same(out), valid).to(torch.float64) / p.needle_len, out
