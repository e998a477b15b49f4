"""The checks behind :func:`headscope.supported`: each capability on each route against Hugging Face eager.

One probe per family: a prompt of about 60 tokens (longer than every window) whose needle is a
stretch in the middle and whose answer repeats part of it (:func:`probe_sample`; detection's scores
use a second probe whose needle ends the prompt, within a window of the answer rows), and three heads,
one per layer (:data:`HEADS`). A check returns ``"yes"`` or ``"no: <why>"``; a route that refuses
(a :class:`~headscope.HeadscopeError`) is a ``no`` with the refusal's first sentence.

- **detection**: the route's reads of every query row (the row readers detection uses) against
  ``output_attentions=True``: top-1 keys equal wherever HF's top-1 margin exceeds :data:`MARGIN`,
  needle mass within :func:`mass_tolerance`; then ``detect_retrieval_heads`` (copy and mass scores)
  against the same scores computed from HF's attentions (copy scores of the heads whose answer rows
  all have a clear margin).
- **knockout**: every mode (:data:`~headscope.ablation.MODES`) changes the logits, and equals the HF
  model with the same knockout made inside its own eager attention
  (:mod:`headscope.support._reference`), within :func:`logit_tolerance`.
- **patching**: every head patched from a clean run into a corrupted run restores the clean
  logits wherever the tokens agree, and one head patched with ``patch_heads`` equals HF with that
  head's output replaced by HF's own clean output.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.ablation import MODES, Knockout, mean_knockout
from headscope.errors import HeadscopeError
from headscope.models import model_info, tokenizer_of
from headscope.patching import patch_heads, patched, record_heads
from headscope.retrieval import detect_retrieval_heads
from headscope.retrieval._routes import choose_route
from headscope.support._reference import RefEdit, reference_edits
from headscope.tasks import EncodedSample, Sample, Span

__all__ = [
    "HEADS",
    "MARGIN",
    "check_detection",
    "check_knockout",
    "check_patching",
    "hf_reads",
    "logit_tolerance",
    "mass_tolerance",
    "probe_sample",
    "reference_knockout",
    "reference_patch",
    "relative_error",
]

#: Knocked-out / patched heads: one per layer, so sliding and full layers are both edited.
HEADS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3))
#: HF top-1 margins (largest minus second-largest weight) above which the routes' top-1 keys must agree.
MARGIN = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
_WORDS = "red blue green gold river stone".split()


def logit_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """``(relative error, error / effect)`` bounds for logits in ``dtype`` (see :func:`relative_error`).

    float32 routes agree with HF to rounding (1e-7 relative); bfloat16 ones differ by the order of
    rounding in three peaked random layers (up to 3e-2 measured), so they get 5e-2 and 0.15 of the effect.
    """
    return (1e-5, 1e-4) if dtype == torch.float32 else (5e-2, 0.15)


def mass_tolerance(dtype: torch.dtype) -> float:
    """Absolute bound on a needle-mass difference (masses lie in [0, 1]).

    Below float32 it is ten units in the last place of the dtype (bfloat16: 0.078): two routes' residual
    streams round apart layer by layer, and a row's mass sums many rounded weights.
    """
    return 1e-4 if dtype == torch.float32 else 10 * torch.finfo(dtype).eps


def relative_error(got: Tensor, expected: Tensor) -> float:
    """``||got - expected|| / ||expected||`` over every element, in float64."""
    got, expected = got.double(), expected.double()
    return float((got - expected).norm() / expected.norm().clamp_min(1e-30))


def probe_sample(seed: int = 0, n_words: int = 30, *, late: bool = False) -> Sample:
    """Words from a small set (about 60 tokens); the needle is the middle third and the answer repeats its start.

    ``late=True`` puts the needle in the last third, within a window of the answer rows, so heads of
    sliding-window layers can copy from it too.

    >>> s = probe_sample()
    >>> s.text("needle")[0].split()[:8] == s.answer.split()
    True
    """
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(n_words)]
    start, stop = (2 * n_words // 3, n_words) if late else (n_words // 3, 2 * n_words // 3)
    before = " ".join(words[:start]) + " "
    needle = " ".join(words[start:stop])
    prompt = f"{before}{needle} {' '.join(words[stop:])}".rstrip()
    answer = " " + " ".join(words[start : start + 8])
    return Sample(prompt, answer, (Span("needle", len(before), len(before) + len(needle)),))


def forced_tokens(encoded: EncodedSample) -> tuple[Int[Tensor, "1 pos"], Int[Tensor, " row"]]:
    """Prompt + answer[:-1] as ``[1, pos]`` and the rows that predict the answer tokens."""
    n_prompt, n_answer = len(encoded.input_ids), len(encoded.answer_ids)
    tokens = torch.cat([encoded.input_ids, encoded.answer_ids[:-1]])[None]
    return tokens, torch.arange(n_prompt - 1, n_prompt - 1 + n_answer)


def needle_of(encoded: EncodedSample, n_pos: int) -> Bool[Tensor, " pos"]:
    mask = torch.zeros(n_pos, dtype=torch.bool)
    for start, end in encoded.positions("needle"):
        mask[start:end] = True
    return mask


def hf_reads(
    reference: Any, tokens: Int[Tensor, "1 pos"], needle: Bool[Tensor, " pos"]
) -> tuple[Int[Tensor, "layer head query"], Float[Tensor, "layer head query"], Float[Tensor, "layer head query"]]:
    """Top-1 key, top-1 margin and needle mass of every row, from HF's ``output_attentions``."""
    with torch.no_grad():
        attentions = reference(tokens, output_attentions=True).attentions
    weights = torch.stack([a[0] for a in attentions]).float()  # [layer, head, query, key]
    top2 = weights.topk(2, dim=-1).values
    return weights.argmax(-1), top2[..., 0] - top2[..., 1], (weights * needle).sum(-1)


def _first_sentence(error: BaseException) -> str:
    text = str(error).split(". ")[0].strip().rstrip(".")
    return text if isinstance(error, HeadscopeError) else f"{type(error).__name__}: {text}"


def _guarded(check: Callable[[], str | None]) -> str:
    try:
        problem = check()
    except Exception as error:  # a refusal or a failure of the route is the answer the table gives
        return f"no: {_first_sentence(error)}"
    return "yes" if problem is None else f"no: {problem}"


# -- detection -------------------------------------------------------------------------------------


def check_detection(model: Any, reference: Any, attention: str) -> str:
    """Row reads and detection scores of ``attention``'s route against HF eager (see the module docstring)."""
    return _guarded(lambda: _detection(model, reference, attention))


def _detection(model: Any, reference: Any, attention: str) -> str | None:
    dtype = next(model.parameters()).dtype
    encoded = probe_sample().encode(tokenizer_of(model))
    tokens, _ = forced_tokens(encoded)
    n_pos = tokens.shape[1]
    needle = needle_of(encoded, n_pos)
    top1, margin, mass = hf_reads(reference, tokens, needle)
    route = choose_route(model, attention, model_info(model).n_layers)
    with torch.no_grad(), route.session():
        _, reads = route.forward(tokens, torch.arange(n_pos)[None], needle[None], torch.ones_like(tokens))
    got_top1, got_mass = reads.top1[:, 0].cpu(), reads.mass[:, 0].float().cpu()  # type: ignore[union-attr]
    clear = margin > MARGIN[dtype]
    wrong = int((clear & (got_top1 != top1)).sum())
    if wrong:
        return f"top-1 keys differ from HF eager on {wrong} of {int(clear.sum())} rows with a clear margin"
    if (got_mass - mass).abs().max() > mass_tolerance(dtype):
        return f"needle mass differs from HF eager by {(got_mass - mass).abs().max():.2g}"
    return _detection_scores(model, reference, attention)


def _detection_scores(model: Any, reference: Any, attention: str) -> str | None:
    """``detect_retrieval_heads`` against the copy and mass scores computed from HF's attentions (late needle)."""
    dtype = next(model.parameters()).dtype
    sample = probe_sample(late=True)
    encoded = sample.encode(tokenizer_of(model))
    tokens, rows = forced_tokens(encoded)
    needle = needle_of(encoded, tokens.shape[1])
    top1, margin, mass = hf_reads(reference, tokens, needle)
    keys = top1[:, :, rows]  # [layer, head, answer]
    hits = (needle[keys] & (tokens[0][keys] == encoded.answer_ids)).sum(-1).double()
    copy = hits / int(needle.sum())
    kw = dict(require_prediction=False, success=lambda s, out: True, progress=False, attention=attention)
    got_copy = detect_retrieval_heads(model, [sample], score="copy", **kw).per_sample[0]  # type: ignore[arg-type]
    got_mass = detect_retrieval_heads(model, [sample], score="mass", **kw).per_sample[0]  # type: ignore[arg-type]
    clear = (margin[:, :, rows] > MARGIN[dtype]).all(-1)  # heads whose every answer row has a clear top-1
    if not torch.equal(got_copy[clear], copy[clear]):
        return f"copy scores differ from HF eager's on {int((got_copy != copy)[clear].sum())} heads"
    expected_mass = mass[:, :, rows].double().mean(-1)
    if (got_mass - expected_mass).abs().max() > mass_tolerance(dtype):
        return f"mass scores differ from HF eager's by {(got_mass - expected_mass).abs().max():.2g}"
    return None


# -- knockout --------------------------------------------------------------------------------------


def knockout_specs(model: Any, tokens: Tensor, keys: tuple[int, ...]) -> dict[str, Knockout]:
    """One :class:`Knockout` of :data:`HEADS` per mode; ``edge`` blocks ``keys``, ``mean`` uses ``tokens``' means."""
    specs = {mode: Knockout(HEADS, mode) for mode in MODES if mode not in ("edge", "mean")}
    specs["edge"] = Knockout(HEADS, "edge", keys=keys)
    specs["mean"] = mean_knockout(model, HEADS, [tokens])
    return {mode: specs[mode] for mode in MODES}


def reference_knockout(reference: Any, spec: Knockout, tokens: Tensor) -> Float[Tensor, "batch pos vocab"]:
    """HF eager logits with ``spec`` made inside the family's own attention."""
    edits: dict[int, RefEdit] = {}
    for i, (layer, head) in enumerate(spec.heads):
        edit = edits.setdefault(layer, RefEdit(spec.mode, rows=spec.queries, keys=spec.keys or ()))  # type: ignore[arg-type]
        edit.heads += (head,)
        if spec.means is not None:
            mean = torch.tensor(spec.means[i])[None]
            edit.values = mean if edit.values is None else torch.cat([edit.values, mean])
    with torch.no_grad(), reference_edits(reference, edits):
        return reference(tokens).logits


def check_knockout(model: Any, reference: Any, attention: str) -> str:
    """Every knockout mode on ``attention``'s route against HF eager (see the module docstring)."""
    return _guarded(lambda: _knockout(model, reference, attention))


def _knockout(model: Any, reference: Any, attention: str) -> str | None:
    dtype = next(model.parameters()).dtype
    tokens, keys = _probe_tokens(model)
    with torch.no_grad():
        clean = model(tokens)
    bound, effect_bound = logit_tolerance(dtype)
    for mode, spec in knockout_specs(model, tokens, keys).items():
        expected = reference_knockout(reference, spec, tokens)
        try:
            with torch.no_grad(), spec.applied(model, attention=attention):
                got = model(tokens)
        except HeadscopeError as error:
            return f"mode {mode!r}: {_first_sentence(error)}"
        if relative_error(got, clean) < 1e-3:
            return f"mode {mode!r} leaves the logits unchanged"
        error = relative_error(got, expected)
        effect = float((expected.double() - clean.double()).norm() / expected.double().norm())
        if error > bound or error > effect_bound * effect:
            return f"mode {mode!r} differs from HF eager by {error:.2g} (relative; the knockout moves {effect:.2g})"
    return None


def _probe_tokens(model: Any) -> tuple[Tensor, tuple[int, ...]]:
    encoded = probe_sample().encode(tokenizer_of(model))
    tokens, _ = forced_tokens(encoded)
    (start, end), *_ = encoded.positions("needle")
    return tokens, tuple(range(start, min(end, start + 8)))


# -- patching --------------------------------------------------------------------------------------


def reference_patch(reference: Any, clean: Tensor, corrupt: Tensor, heads: tuple[tuple[int, int], ...]) -> Tensor:
    """HF eager logits on ``corrupt`` with ``heads``' outputs replaced by HF's own outputs on ``clean``."""
    layers = sorted({layer for layer, _ in heads})
    records = {layer: RefEdit("record") for layer in layers}
    with torch.no_grad(), reference_edits(reference, records):
        reference(clean)
    edits = {
        layer: RefEdit("replace", tuple(h for lay, h in heads if lay == layer), values=records[layer].recorded)
        for layer in layers
    }
    with torch.no_grad(), reference_edits(reference, edits):
        return reference(corrupt).logits


def corrupted(tokens: Tensor, positions: tuple[int, ...], vocab: int) -> Tensor:
    """``tokens`` with the token at each position replaced by the next id up."""
    out = tokens.clone()
    out[:, list(positions)] = (out[:, list(positions)] + 1) % vocab
    return out


def check_patching(model: Any, reference: Any, attention: str) -> str:
    """Patching round trip and one head against HF eager (see the module docstring)."""
    return _guarded(lambda: _patching(model, reference, attention))


def _patching(model: Any, reference: Any, attention: str) -> str | None:
    dtype = next(model.parameters()).dtype
    clean, keys = _probe_tokens(model)
    info = model_info(model)
    corrupt = corrupted(clean, keys, info.d_vocab)
    same = (clean == corrupt)[0]
    every = [(layer, head) for layer in range(info.n_layers) for head in range(info.n_heads)]
    bound, effect_bound = logit_tolerance(dtype)
    with torch.no_grad():
        want = model(clean)
        acts = record_heads(model, clean, attention=attention)  # type: ignore[arg-type]
        with patched(model, acts, every, attention=attention):  # type: ignore[arg-type]
            restored = model(corrupt)
        broken = model(corrupt)
    error = relative_error(restored[:, same], want[:, same])
    if error > bound:
        return f"patching every head from the clean run leaves the logits {error:.2g} (relative) from clean"
    one = ((2, 1),)
    got = patch_heads(model, model, corrupt, one, source_tokens=clean, attention=attention)  # type: ignore[arg-type]
    expected = reference_patch(reference, clean, corrupt, one)
    error = relative_error(got, expected)
    effect = relative_error(got, broken)
    if effect < 1e-4:
        return "patching one head changes nothing"
    if error > bound or error > effect_bound * effect:
        return f"patch_heads differs from HF eager by {error:.2g} (relative; the patch moves {effect:.2g})"
    return None
