"""Which TransformerLens model classes exist in the installed version."""

from __future__ import annotations

from os import PathLike
from typing import Any

from headscope._types import Choice
from headscope.errors import ModelError

Kind = Choice["hooked", "bridge"]


def hooked_transformer_class() -> type | None:
    """``HookedTransformer`` on TransformerLens 3.x, ``None`` on 4.x where it was removed.

    Detected by import: on 4.x even ``hasattr(transformer_lens, "HookedTransformer")`` raises.
    """
    try:
        from transformer_lens import HookedTransformer
    except ImportError:
        return None
    return HookedTransformer


def bridge_class() -> type:
    """``TransformerBridge`` (TransformerLens 3.9 and 4.x)."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge


def available_kinds() -> tuple[Kind, ...]:
    """The model kinds this TransformerLens install can build: always ``"bridge"``, plus ``"hooked"`` on 3.x."""
    return ("hooked", "bridge") if hooked_transformer_class() is not None else ("bridge",)


def model_kind(model: Any) -> Kind:
    """``"hooked"`` or ``"bridge"``; a clear :class:`ModelError` for anything else.

    Every public function that takes a model reaches this check before it touches the model
    (through :func:`~headscope.models.model_info` or :func:`~headscope.models.tokenizer_of`), so
    a wrong object is reported as what it is, not by the first attribute it lacks.

    >>> model_kind("smollm2-135m-instruct")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    headscope.ModelError: expected a TransformerLens model (HookedTransformer or TransformerBridge); got the str ...
    """
    if isinstance(model, bridge_class()):
        return "bridge"
    hooked = hooked_transformer_class()
    if hooked is not None and isinstance(model, hooked):
        return "hooked"
    expected = "expected a TransformerLens model (HookedTransformer or TransformerBridge)"
    if isinstance(model, (str, PathLike)):
        raise ModelError(
            f"{expected}; got the {type(model).__name__} {str(model)!r}. Load the model first: "
            f"headscope.load_model({str(model)!r}) for a known name, headscope.load_folder(path) for a saved "
            "Hugging Face model folder."
        )
    seen = f"{type(model).__module__}.{type(model).__qualname__}"
    if seen.startswith("transformers."):
        hint = "Wrap a Hugging Face model: save it with save_pretrained and load the folder with headscope.load_folder"
    else:
        hint = "Load one with headscope.load_model(name) or headscope.load_folder(path)"
    raise ModelError(f"{expected}; got a {type(model).__name__} ({seen}). {hint}.")
