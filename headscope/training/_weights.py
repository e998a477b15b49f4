"""Save and load only the fine-tuned parameters, as safetensors.

A fine-tuned attention-only model differs from its base in a few tensors, so only those are
stored, under their parameter names (see :func:`select_parameters`), with the model kind and
compatibility mode: a compatibility-mode bridge folds layer norms into some weights, so its
tensors mean something else than the same names on a plain bridge.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from headscope.errors import ConfigError, ModelMismatchError
from headscope.models import model_info, model_kind
from headscope.training._select import named_parameters

_FORMAT = "headscope-finetuned-weights"


def save_weights(model: Any, path: str | Path, names: Iterable[str]) -> Path:
    """Write the parameters ``names`` (e.g. ``FinetuneResult.trained``) of ``model`` to a safetensors file.

    >>> import tempfile, pathlib
    >>> from headscope import load_model
    >>> from headscope.training import select_parameters
    >>> model = load_model("tiny-llama")
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "attn.safetensors"
    >>> load_weights(model, save_weights(model, path, select_parameters(model, "attention")))[:1]
    ('model.layers.0.self_attn.q_proj.weight',)
    """
    from safetensors.torch import save_file

    named = named_parameters(model)
    names = list(names)
    missing = [n for n in names if n not in named]
    if missing:
        raise ModelMismatchError(f"the model has no parameters named {missing[:10]}; it has {list(named)[:10]} ...")
    if not names:
        raise ConfigError("names is empty: nothing to save")
    tensors = {n: named[n].detach().to("cpu").clone().contiguous() for n in names}
    path = Path(path)
    save_file(tensors, str(path), metadata=_describe(model))
    return path


def load_weights(model: Any, path: str | Path) -> tuple[str, ...]:
    """Copy the tensors saved by :func:`save_weights` into ``model`` in place; returns their names.

    Raises :class:`~headscope.ModelMismatchError`, changing nothing, when the file comes from
    another model kind or compatibility mode, or names parameters that ``model`` lacks or that
    have other shapes.
    """
    from safetensors import safe_open

    model_kind(model)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != _FORMAT:
        raise ModelMismatchError(f"{path} was not written by headscope.training.save_weights")
    here = _describe(model)
    for key in ("kind", "compatibility_mode"):
        if meta.get(key) != here[key]:
            saved = f"a {meta.get('kind')} model with compatibility_mode={meta.get('compatibility_mode')}"
            raise ModelMismatchError(
                f"{path} holds weights of {saved}, "
                f"but this is a {here['kind']} model with compatibility_mode={here['compatibility_mode']}: "
                "parameter names and parameterisations differ between them; load it into the same kind of model"
            )
    named = named_parameters(model)
    problems = [f"{n} (not in this model)" for n in tensors if n not in named]
    problems += [
        f"{n} (saved {tuple(t.shape)}, model {tuple(named[n].shape)})"
        for n, t in tensors.items()
        if n in named and t.shape != named[n].shape
    ]
    if problems:
        raise ModelMismatchError(
            f"{path} does not fit this model ({meta.get('model')} saved, {here['model']} here): "
            + "; ".join(problems[:10])
        )
    with torch.no_grad():
        for n, t in tensors.items():
            named[n].copy_(t.to(device=named[n].device, dtype=named[n].dtype))
    return tuple(n for n in named if n in tensors)


def _describe(model: Any) -> dict[str, str]:
    return {
        "format": _FORMAT,
        "kind": model_kind(model),
        "compatibility_mode": str(bool(getattr(model, "compatibility_mode", False))),
        "model": model_info(model).name,
    }
