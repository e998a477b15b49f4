"""The one model layer: load models (by name, folder or hub id), describe them, and tokenize for them.

Every headscope function accepts a ``HookedTransformer`` (TransformerLens 3.x) or a
``TransformerBridge`` (3.9 and 4.x, with or without compatibility mode) and works only
through the canonical hook names.
"""

from headscope.models._cache import cache_dir as cache_dir
from headscope.models._convert import load_folder as load_folder
from headscope.models._fused import fused_unsupported as fused_unsupported
from headscope.models._fused import hf_twin as hf_twin
from headscope.models._fused import twin_unavailable as twin_unavailable
from headscope.models._fused_bridge import fused_active as fused_active
from headscope.models._fused_bridge import fused_bridge as fused_bridge
from headscope.models._hub import hub_cache_dir as hub_cache_dir
from headscope.models._hub import hub_folder as hub_folder
from headscope.models._info import Head as Head
from headscope.models._info import ModelInfo as ModelInfo
from headscope.models._info import model_info as model_info
from headscope.models._info import name_model as name_model
from headscope.models._info import to_tokens as to_tokens
from headscope.models._info import tokenizer_of as tokenizer_of
from headscope.models._kinds import Kind as Kind
from headscope.models._kinds import available_kinds as available_kinds
from headscope.models._kinds import model_kind as model_kind
from headscope.models._registry import DEFAULT_MODEL as DEFAULT_MODEL
from headscope.models._registry import known_models as known_models
from headscope.models._registry import load_model as load_model
from headscope.models._smollm2 import gguf_path as gguf_path
from headscope.models._smollm2 import smollm2_folder as smollm2_folder
from headscope.models._tiny import tiny_folder as tiny_folder
from headscope.models._tiny import tiny_tokenizer as tiny_tokenizer
