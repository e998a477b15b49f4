"""Patch chosen heads' activations from a source run into a target run.

A head's output is its slice of ``hook_z`` (its contribution to the residual stream is
``z @ W_O``; only ``b_O`` is shared by all heads), so patching ``z`` patches exactly what the head
writes. ``q``, ``k``, ``v`` and ``pattern`` can be patched too. The source run can be the same
model on another input (clean into corrupted) or another model of the same architecture on the
same input (the seed paper's real-data model into a synthetic-data one).

Positions and lengths: ``positions`` index the source run (negative indices count from its end).
A forward of the target at least as long as the source is patched at those positions; a forward
*shorter* than the source is taken to be a cached decoding step after the prompt and is left
alone. So during generation the prompt is patched and generated tokens never are, with or
without a key/value cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope._types import Attention, Choice
from headscope.errors import ConfigError, HeadIndexError, ModelError, ModelMismatchError
from headscope.heads import Heads
from headscope.hooks import attached, attn_hook, capture
from headscope.models import ModelInfo, fused_unsupported, model_info, model_kind
from headscope.models._fused_bridge import fused_bridge, fused_sites, wants_fused

Site = Choice["z", "q", "k", "v", "pattern"]
Positions = Choice["all"] | Sequence[int]
SITES: tuple[str, ...] = ("z", "q", "k", "v", "pattern")

__all__ = ["attention_route", "check_same_architecture", "patch_heads", "patched", "record_heads"]


def check_same_architecture(target: Any, source: Any) -> None:
    """Raise :class:`ModelMismatchError` naming every difference that makes patching between them meaningless.

    Compared: model kind, compatibility mode, layers, heads, key/value heads, ``d_head``,
    ``d_model``, vocabulary size, positional scheme, and the tokenizers' vocabularies.
    """
    if target is source:
        return
    a, b = model_info(target), model_info(source)
    fields = ("kind", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_model", "d_vocab", "positional")
    diffs = [f"{f}: target {getattr(a, f)} vs source {getattr(b, f)}" for f in fields if getattr(a, f) != getattr(b, f)]
    compat_a, compat_b = (bool(getattr(m, "compatibility_mode", False)) for m in (target, source))
    if compat_a != compat_b:
        diffs.append(f"compatibility_mode: target {compat_a} vs source {compat_b}")
    tok_a, tok_b = getattr(target, "tokenizer", None), getattr(source, "tokenizer", None)
    if tok_a is not None and tok_b is not None and tok_a.get_vocab() != tok_b.get_vocab():
        diffs.append(f"tokenizer vocabularies differ ({len(tok_a)} vs {len(tok_b)} tokens)")
    if diffs:
        raise ModelMismatchError(
            "cannot patch between models of different architectures: " + "; ".join(diffs) + ". "
            "Patch between two fine-tunes of one base model."
        )


def _heads_by_layer(info: ModelInfo, heads: Heads) -> dict[int, list[int]]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in sorted(set(info.check_heads(heads))):
        by_layer.setdefault(layer, []).append(head)
    return by_layer


def _check_sites(sites: Sequence[str], info: ModelInfo) -> tuple[str, ...]:
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ConfigError(f"sites must be a non-empty subset of {SITES}; got {sites}")
    if "pattern" in sites and not info.pattern_edits:
        raise ModelError(
            f"{info.name} computes attention inside Hugging Face code and discards edits of hook_pattern; "
            "patch site 'z' (the head's output) instead"
        )
    return sites


def resolve_positions(positions: Positions, n_pos: int) -> Tensor:
    """Sorted absolute positions in ``[0, n_pos)`` (negative indices count from the end)."""
    if isinstance(positions, str):
        if positions != "all":
            raise ConfigError(f"positions must be 'all' or a sequence of token positions; got {positions!r}")
        return torch.arange(n_pos)
    raw = [int(p) for p in positions]
    bad = [p for p in raw if not -n_pos <= p < n_pos]
    if bad:
        raise HeadIndexError(f"positions must lie in [-{n_pos}, {n_pos}) for an input of {n_pos} tokens; got {bad}")
    if not raw:
        raise ConfigError("positions is empty: pass 'all' or at least one position")
    return torch.tensor(sorted({p % n_pos for p in raw}))


def record_heads(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    layers: Iterable[int] | None = None,
    sites: Sequence[Site] = ("z",),
    attention: Attention = "auto",
) -> dict[str, Tensor]:
    """Run ``model`` once and keep the per-head activations a later :func:`patched` block reads.

    Returns ``{hook name: activation}`` for each site at each layer (all layers by default).
    ``attention`` picks the route the run takes (see :func:`patched`).

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> acts = record_heads(model, torch.tensor([[0, 5, 9]]), layers=[1])
    >>> list(acts), tuple(acts["blocks.1.attn.hook_z"].shape)
    (['blocks.1.attn.hook_z'], (1, 3, 4, 16))
    """
    info = model_info(model)
    sites = _check_sites(sites, info)
    layers = range(info.n_layers) if layers is None else sorted(set(int(x) for x in layers))
    bad = [x for x in layers if not 0 <= x < info.n_layers]
    if bad:
        raise HeadIndexError(f"layers must lie in [0, {info.n_layers}); got {bad}")
    tokens = _as_batch(tokens).to(_device(model))
    info.check_length(tokens.shape[1])
    names = [attn_hook(layer, site) for layer in layers for site in sites]
    with torch.no_grad(), attention_route(model, attention, sites), capture(model, names) as acts:
        model(tokens)
    return dict(acts)


def attention_route(model: Any, attention: Attention, sites: Sequence[str] = ("z",)) -> AbstractContextManager[None]:
    """The route ``attention`` picks for patching ``sites``: :func:`fused_bridge`, or nothing to do (eager)."""
    eager_because = "patching site 'pattern'" if "pattern" in sites else None
    if eager_because is None and model_kind(model) == "bridge" and fused_unsupported(model) is None:
        silent = sorted(set(sites) - fused_sites(model))
        if silent:
            eager_because = f"patching site {silent[0]!r} (its hook does not fire on this model's fused route)"
    return fused_bridge(model) if wants_fused(model, attention, eager_because=eager_because) else nullcontext()


def _as_batch(tokens: Any) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise ConfigError(f"tokens must be [pos] or [batch, pos]; got shape {tuple(tokens.shape)}")
    return tokens


class _PatchHook:
    """Writes a source activation into chosen heads at chosen positions of one hook."""

    def __init__(self, name: str, source: Tensor, heads: Tensor, positions: Positions, site: str) -> None:
        self.name, self.source, self.heads, self.site = name, source, heads, site
        self.pos_axis = 2 if site == "pattern" else 1
        self.positions = resolve_positions(positions, source.shape[self.pos_axis])

    def __call__(self, act: Tensor, hook: Any) -> Tensor | None:
        n_src = self.source.shape[self.pos_axis]
        if act.shape[self.pos_axis] < n_src:
            return None  # a cached decoding step after the prompt: nothing of the source to patch
        if self.source.shape[0] not in (1, act.shape[0]):
            raise ConfigError(
                f"{self.name}: the source run has batch {self.source.shape[0]} but the target run {act.shape[0]}; "
                "use equal batches or a source of batch 1"
            )
        src = self.source.to(device=act.device, dtype=act.dtype).expand(act.shape[0], *self.source.shape[1:])
        out = act.clone()
        pos, heads = self.positions.to(act.device), self.heads.to(act.device)
        if self.site == "pattern":
            rows = src[:, heads][:, :, pos]
            out[:, heads[:, None], pos[None, :], :n_src] = rows
            out[:, heads[:, None], pos[None, :], n_src:] = 0.0
        else:
            out[:, pos[:, None], heads[None, :]] = src[:, pos[:, None], heads[None, :]]
        return out


@contextmanager
def patched(
    model: Any,
    source: Mapping[str, Tensor],
    heads: Heads,
    *,
    positions: Positions = "all",
    sites: Sequence[Site] = ("z",),
    attention: Attention = "auto",
) -> Iterator[None]:
    """Inside the block, every forward of ``model`` has ``heads`` replaced by ``source``'s activations.

    ``source`` comes from :func:`record_heads` (of this model on another input, or of another
    model of the same architecture). Under grouped-query attention, patching ``k`` or ``v`` of a
    query head patches the key/value head it reads, which its whole group shares. See the module
    docstring for how lengths and generation are handled. An empty ``heads`` patches nothing.

    Attention is the only path between positions, so patching every head of every layer from a
    clean run restores the clean logits exactly at every position whose token the two inputs share.

    ``attention``: ``"fused"`` runs every layer's attention through sdpa
    (:func:`~headscope.models._fused_bridge.fused_bridge`; ``hook_q/k/v/z`` still fire, so the
    ``z``, ``q``, ``k`` and ``v`` sites patch as on the eager route, to float rounding);
    ``"eager"`` keeps TransformerLens's attention; ``"auto"`` (default) takes fused wherever it
    can run and the sites do not include ``"pattern"``.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> clean, corrupt = torch.tensor([[0, 5, 9, 7]]), torch.tensor([[0, 6, 9, 7]])
    >>> acts = record_heads(model, clean)
    >>> every_head = [(layer, head) for layer in range(2) for head in range(4)]
    >>> with patched(model, acts, every_head):
    ...     restored = model(corrupt)
    >>> expected = model(clean)
    >>> bool((restored - expected)[:, 2:].abs().max() <= 1e-5 * expected.abs().max())  # where the tokens agree
    True
    """
    info = model_info(model)
    sites = _check_sites(sites, info)
    hooks = []
    for layer, idx in _heads_by_layer(info, heads).items():
        for site in sites:
            name = attn_hook(layer, site)
            if name not in source:
                raise ConfigError(
                    f"source holds no {name}; record it with record_heads(model, tokens, sites={tuple(sites)})"
                )
            per_head = torch.tensor(idx)
            if site in ("k", "v"):
                per_head = torch.unique(per_head // info.kv_group)
            hooks.append((name, _PatchHook(name, source[name], per_head, positions, site)))
    route = attention_route(model, attention, sites) if hooks else nullcontext()  # no heads: exactly the model
    with attached(model, hooks), route:
        yield


def patch_heads(
    target: Any,
    source: Any,
    tokens: Int[Tensor, "batch pos"],
    heads: Heads,
    *,
    positions: Positions = "all",
    sites: Sequence[Site] = ("z",),
    source_tokens: Int[Tensor, "batch _pos"] | None = None,  # its length is checked against tokens below
    attention: Attention = "auto",
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of ``target`` on ``tokens`` with ``heads`` patched from ``source``'s run.

    Two settings: another model of the same architecture on the same ``tokens`` (checked by
    :func:`check_same_architecture`), or the same model on ``source_tokens`` (clean into
    corrupted; both inputs must have the same length).

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> clean, corrupt = torch.tensor([[0, 5, 9, 7]]), torch.tensor([[0, 6, 9, 7]])
    >>> logits = patch_heads(model, model, corrupt, [(1, 2)], positions=[-1], source_tokens=clean)
    >>> tuple(logits.shape)
    (1, 4, 1024)
    """
    check_same_architecture(target, source)
    tokens = _as_batch(tokens)
    src_tokens = tokens if source_tokens is None else _as_batch(source_tokens)
    if src_tokens.shape[1] != tokens.shape[1]:
        raise ConfigError(
            f"source and target inputs must have the same length to patch position by position; "
            f"got {src_tokens.shape[1]} and {tokens.shape[1]} tokens"
        )
    info = model_info(target)
    heads = info.check_heads(heads)
    resolve_positions(positions, tokens.shape[1])
    layers = sorted({layer for layer, _ in heads})
    acts = {}
    if heads:
        acts = record_heads(source, src_tokens.to(_device(source)), layers=layers, sites=sites, attention=attention)
    with torch.no_grad(), patched(target, acts, heads, positions=positions, sites=sites, attention=attention):
        return target(tokens.to(_device(target)))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device
