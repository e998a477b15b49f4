"""Which TransformerLens model classes exist in the installed version."""

from __future__ import annotations

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
    """``"hooked"`` or ``"bridge"``; a clear :class:`ModelError` for anything else."""
    if isinstance(model, bridge_class()):
        return "bridge"
    hooked = hooked_transformer_class()
    if hooked is not None and isinstance(model, hooked):
        return "hooked"
    raise ModelError(
        "expected a TransformerLens model (HookedTransformer or TransformerBridge); "
        f"got {type(model).__module__}.{type(model).__name__}. "
        "Load a saved Hugging Face model folder with headscope.load_folder(path)."
    )
