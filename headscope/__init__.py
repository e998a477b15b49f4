"""headscope: retrieval heads in long-context models, over TransformerLens.

Detect the attention heads that copy from a long context (Wu et al. 2024), knock them out,
patch them between runs and models, and compare head sets across models, as in Zhao, Yin and
Durrett, *Understanding Synthetic Context Extension via Retrieval Heads* (ICML 2025).
"""

from headscope.errors import ContextLengthError as ContextLengthError
from headscope.errors import HeadIndexError as HeadIndexError
from headscope.errors import HeadscopeError as HeadscopeError
from headscope.errors import MissingDependencyError as MissingDependencyError
from headscope.errors import ModelError as ModelError
from headscope.errors import ModelMismatchError as ModelMismatchError
from headscope.errors import SpanError as SpanError
from headscope.hooks import attached as attached
from headscope.hooks import capture as capture
from headscope.models import ModelInfo as ModelInfo
from headscope.models import available_kinds as available_kinds
from headscope.models import load_folder as load_folder
from headscope.models import load_model as load_model
from headscope.models import model_info as model_info
from headscope.models import to_tokens as to_tokens

__version__ = "0.1.0"

__all__ = [
    "ContextLengthError",
    "HeadIndexError",
    "HeadscopeError",
    "MissingDependencyError",
    "ModelError",
    "ModelInfo",
    "ModelMismatchError",
    "SpanError",
    "attached",
    "available_kinds",
    "capture",
    "load_folder",
    "load_model",
    "model_info",
    "to_tokens",
]
