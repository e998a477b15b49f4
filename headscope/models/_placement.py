"""Where and in which precision a model loads: ``device`` and ``dtype``, as torch objects or short names."""

from __future__ import annotations

import torch

from headscope.errors import ConfigError

__all__ = ["DEVICE_NAMES", "DTYPE_NAMES", "resolve_device", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
#: The dtype names :func:`resolve_dtype` accepts (besides any floating ``torch.dtype``).
DTYPE_NAMES: tuple[str, ...] = tuple(_DTYPES)
#: The device forms :func:`resolve_device` accepts, as its messages list them.
DEVICE_NAMES = "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto' (CUDA when available, else the CPU)"


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating ``torch.dtype`` from itself or a name: float32/fp32, bfloat16/bf16, float16/fp16.

    >>> resolve_dtype("bf16"), resolve_dtype(torch.float16)
    (torch.bfloat16, torch.float16)
    """
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower() in _DTYPES:
        return _DTYPES[dtype.strip().lower()]
    raise ConfigError(
        f"dtype must be a floating torch.dtype or one of {', '.join(DTYPE_NAMES)}; got {dtype!r}. "
        "Try dtype=torch.bfloat16 (or 'bf16') for large models on a GPU, 'float32' for exact checks on a CPU"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """A ``torch.device`` that exists on this machine, from itself or a name; ``"auto"`` picks CUDA when available.

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    True
    """
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device must be {DEVICE_NAMES}; got {device!r}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"device {device!r} needs CUDA, and torch.cuda.is_available() is False on this machine "
                f"(torch {torch.__version__}); use 'cpu', or 'auto' to take a GPU only where there is one"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {count} CUDA device(s), 0 to {count - 1}"
            )
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} needs Apple's MPS, which torch does not find here; use 'cpu'")
    elif resolved.type != "cpu":
        raise ConfigError(f"device must be {DEVICE_NAMES}; got {device!r}")
    return resolved
