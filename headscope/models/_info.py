"""``ModelInfo``: one place for a model's shape, tokenizer and which hook edits it honours."""

from __future__ import annotations

import dataclasses
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from headscope._types import Choice
from headscope.errors import ContextLengthError, HeadIndexError, ModelError
from headscope.heads import Head, Heads, as_heads
from headscope.hooks import attached, attn_hook
from headscope.models._kinds import Kind, model_kind

Positional = Choice["rotary", "standard", "other"]
ProbedSite = Choice["pattern", "attn_scores"]

# Both live beside the user's model, not on it, and go when the model goes.
_INFOS: weakref.WeakKeyDictionary[Any, ModelInfo] = weakref.WeakKeyDictionary()
_NAMES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ModelInfo:
    """What headscope needs to know about a TransformerLens model.

    ``n_heads`` counts query heads; ``n_kv_heads`` counts key/value heads (fewer under
    grouped-query attention, where query head ``h`` reads key/value head ``h // kv_group``).
    ``pattern_edits`` / ``score_edits`` say whether editing ``hook_pattern`` /
    ``hook_attn_scores`` really changes the computation on this model: some bridges compute
    attention inside Hugging Face code and silently discard such edits.
    """

    kind: Kind
    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int
    positional: Positional
    pattern_edits: bool
    score_edits: bool

    @property
    def kv_group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``: the shape of every per-head result."""
        return (self.n_layers, self.n_heads)

    def head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]`` in layer-major order, as TransformerLens labels heads."""
        return [str(Head(layer, head)) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def check_heads(self, heads: Heads) -> list[Head]:
        """Read heads in any accepted form (:func:`~headscope.heads.as_head`) and check them against the model.

        Reports every head outside the model at once.
        """
        pairs = as_heads(heads)
        bad = [p for p in pairs if not (p[0] < self.n_layers and p[1] < self.n_heads)]
        if bad:
            raise HeadIndexError(
                f"heads must be (layer, head) pairs within a {self.n_layers}x{self.n_heads} model; "
                f"got {', '.join(map(repr, bad))}"
            )
        return pairs

    def check_length(self, n_tokens: int) -> None:
        """Raise :class:`ContextLengthError` if ``n_tokens`` exceeds the context window."""
        if n_tokens > self.n_ctx:
            raise ContextLengthError(
                f"input of {n_tokens} tokens is longer than {self.name}'s context of {self.n_ctx} tokens"
            )


def name_model(model: Any, name: str) -> Any:
    """Give ``model`` the name headscope's results record (``ModelInfo.name``); ``model`` is returned unchanged.

    :func:`~headscope.load_model` names its models this way. The name is kept beside the model,
    not written into ``model.cfg``; a model never named is known by ``cfg.model_name``.

    >>> from headscope import load_model
    >>> model = load_model("tiny-llama")
    >>> model_info(model).name, model.cfg.model_name == "tiny-llama"
    ('tiny-llama', False)
    """
    _NAMES[model] = name
    if model in _INFOS:
        _INFOS[model] = dataclasses.replace(_INFOS[model], name=name)
    return model


def model_info(model: Any, *, refresh: bool = False) -> ModelInfo:
    """Describe ``model`` (probed once, then cached for as long as the model lives).

    >>> from headscope import load_model
    >>> info = model_info(load_model("tiny-llama"))
    >>> (info.n_layers, info.n_heads, info.n_kv_heads, info.kv_group, info.positional)
    (2, 4, 2, 2, 'rotary')
    """
    kind = model_kind(model)  # first: a non-model is a ModelError, not a failed weak reference or attribute
    cached = _INFOS.get(model)
    if cached is not None and not refresh:
        return cached
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    pos = str(getattr(cfg, "positional_embedding_type", "other"))
    partial = dict(
        kind=kind,
        name=_NAMES.get(model) or str(getattr(cfg, "model_name", type(model).__name__)),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or n_heads),
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        n_ctx=int(cfg.n_ctx),
        d_vocab=int(cfg.d_vocab),
        positional=pos if pos in ("rotary", "standard") else "other",
    )
    info = ModelInfo(
        **partial, pattern_edits=_edit_honoured(model, "pattern"), score_edits=_edit_honoured(model, "attn_scores")
    )
    _INFOS[model] = info
    return info


def _edit_honoured(model: Any, site: ProbedSite) -> bool:
    """Does replacing layer 0's ``site`` change that layer's ``hook_z``?

    The edit sends every query to key 0 only; if it is honoured, every row of ``z`` then equals
    row 0 (query 0 sees only key 0 anyway). Without the edit the rows differ.
    """
    tokens = (torch.arange(1, 7) % int(model.cfg.d_vocab)).unsqueeze(0).to(_device(model))
    z_store: list[Tensor] = []

    def to_first_key(act: Tensor, hook: Any) -> Tensor:
        edited = torch.full_like(act, 0.0 if site == "pattern" else -1e9)
        edited[..., 0] = 1.0 if site == "pattern" else 0.0
        return edited

    def record(act: Tensor, hook: Any) -> None:
        z_store.append(act.detach())

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TransformerLens 4 warns when it discards the edit we probe with
        with attached(model, [(attn_hook(0, "z"), record)]):
            model(tokens)
        with attached(model, [(attn_hook(0, site), to_first_key), (attn_hook(0, "z"), record)]):
            model(tokens)
    plain, edited = z_store
    spread = lambda z: (z - z[:, :1]).abs().max().item()  # noqa: E731
    if spread(plain) < 1e-6:
        raise ModelError("cannot probe hook edits: layer 0's attention output is the same at every position")
    return spread(edited) < 1e-5 * max(1.0, plain.abs().max().item())


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def tokenizer_of(model: Any) -> Any:
    """The model's tokenizer, or a :class:`ModelError` saying how to attach one (or that ``model`` is no model)."""
    model_kind(model)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ModelError(
            "this model has no tokenizer, and headscope needs one here; "
            "pass tokenizer= when building it (HookedTransformer(cfg, tokenizer=tok) / boot_native(cfg, tokenizer=tok))"
        )
    return tokenizer


def to_tokens(model: Any, text: str, *, prepend_bos: bool = True) -> Int[Tensor, "batch pos"]:
    """Tokenize one string as ``[1, pos]`` on the model's device, checking the context length.

    BOS is prepended explicitly (not left to ``model.to_tokens``'s default), so positions are
    the same on every model kind.
    """
    tokenizer = tokenizer_of(model)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ModelError("prepend_bos=True but the tokenizer has no BOS token")
        ids = [tokenizer.bos_token_id, *ids]
    model_info(model).check_length(len(ids))
    return torch.tensor([ids], device=_device(model))
