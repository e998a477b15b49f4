"""headscope: retrieval heads in long-context models, over TransformerLens.

Detect the attention heads that copy from a long context (Wu et al. 2024), knock them out,
patch them between runs and models, and compare head sets across models, as in Zhao, Yin and
Durrett, *Understanding Synthetic Context Extension via Retrieval Heads* (ICML 2025).

Each capability is a subpackage (``headscope.models``, ``tasks``, ``retrieval``, ``ablation``,
``patching``, ``compare``, ``compression``, ``training``, ``viz``, ``pipeline``, ``support``); the
names most work needs are re-exported here.
"""

from headscope.ablation import Knockout as Knockout
from headscope.ablation import KnockoutCurve as KnockoutCurve
from headscope.ablation import knockout as knockout
from headscope.ablation import knockout_curve as knockout_curve
from headscope.compare import Correlation as Correlation
from headscope.compare import LoadedHeads as LoadedHeads
from headscope.compare import correlate as correlate
from headscope.compare import head_set as head_set
from headscope.compare import jaccard as jaccard
from headscope.compare import load_heads as load_heads
from headscope.compare import qrhead_string as qrhead_string
from headscope.compare import rank_correlation as rank_correlation
from headscope.compare import recall as recall
from headscope.compare import run_overlap as run_overlap
from headscope.compare import write_duo_tsv as write_duo_tsv
from headscope.compression import CompressionCurve as CompressionCurve
from headscope.compression import KVPolicy as KVPolicy
from headscope.compression import compression_curve as compression_curve
from headscope.compression import kv_policy as kv_policy
from headscope.errors import ConfigError as ConfigError
from headscope.errors import ContextLengthError as ContextLengthError
from headscope.errors import HeadIndexError as HeadIndexError
from headscope.errors import HeadscopeError as HeadscopeError
from headscope.errors import InputTypeError as InputTypeError
from headscope.errors import MissingDependencyError as MissingDependencyError
from headscope.errors import ModelError as ModelError
from headscope.errors import ModelMismatchError as ModelMismatchError
from headscope.errors import ShardError as ShardError
from headscope.errors import SpanError as SpanError
from headscope.errors import TaskError as TaskError
from headscope.evaluate import answer_accuracy as answer_accuracy
from headscope.evaluate import generate_answer as generate_answer
from headscope.evaluate import retrieval_success as retrieval_success
from headscope.heads import Head as Head
from headscope.heads import HeadSet as HeadSet
from headscope.heads import random_heads as random_heads
from headscope.hooks import attached as attached
from headscope.hooks import capture as capture
from headscope.models import ModelInfo as ModelInfo
from headscope.models import available_kinds as available_kinds
from headscope.models import load_folder as load_folder
from headscope.models import load_model as load_model
from headscope.models import model_info as model_info
from headscope.models import to_tokens as to_tokens
from headscope.patching import PatchingComparison as PatchingComparison
from headscope.patching import PatchingResult as PatchingResult
from headscope.patching import attribution_patching as attribution_patching
from headscope.patching import compare_patching as compare_patching
from headscope.patching import head_patching_sweep as head_patching_sweep
from headscope.patching import patch_heads as patch_heads
from headscope.patching import patched as patched
from headscope.pipeline import PipelineConfig as PipelineConfig
from headscope.pipeline import PipelineResult as PipelineResult
from headscope.pipeline import run_pipeline as run_pipeline
from headscope.retrieval import AttentionRows as AttentionRows
from headscope.retrieval import RetrievalScores as RetrievalScores
from headscope.retrieval import Stability as Stability
from headscope.retrieval import detect_retrieval_heads as detect_retrieval_heads
from headscope.retrieval import record_attention as record_attention
from headscope.retrieval import stability as stability
from headscope.support import Support as Support
from headscope.support import supported as supported
from headscope.tasks import Sample as Sample
from headscope.tasks import Span as Span
from headscope.tasks import citation as citation
from headscope.tasks import kv_retrieval as kv_retrieval
from headscope.tasks import load_mdqa as load_mdqa
from headscope.tasks import load_musique as load_musique
from headscope.tasks import load_qa_jsonl as load_qa_jsonl
from headscope.tasks import mdqa as mdqa
from headscope.tasks import multihop_qa as multihop_qa
from headscope.tasks import needle_grid as needle_grid
from headscope.tasks import real_mdqa as real_mdqa
from headscope.training import FinetuneResult as FinetuneResult
from headscope.training import answer_loss as answer_loss
from headscope.training import finetune as finetune
from headscope.training import load_weights as load_weights
from headscope.training import save_weights as save_weights
from headscope.training import select_parameters as select_parameters
from headscope.viz import attention_view as attention_view
from headscope.viz import head_map as head_map

__version__ = "0.1.0"

__all__ = [
    "AttentionRows",
    "CompressionCurve",
    "ConfigError",
    "ContextLengthError",
    "Correlation",
    "FinetuneResult",
    "Head",
    "HeadIndexError",
    "HeadSet",
    "HeadscopeError",
    "InputTypeError",
    "KVPolicy",
    "Knockout",
    "KnockoutCurve",
    "LoadedHeads",
    "MissingDependencyError",
    "ModelError",
    "ModelInfo",
    "ModelMismatchError",
    "PatchingComparison",
    "PatchingResult",
    "PipelineConfig",
    "PipelineResult",
    "RetrievalScores",
    "Sample",
    "ShardError",
    "Span",
    "SpanError",
    "Stability",
    "Support",
    "TaskError",
    "answer_accuracy",
    "answer_loss",
    "attached",
    "attention_view",
    "attribution_patching",
    "available_kinds",
    "capture",
    "citation",
    "compare_patching",
    "compression_curve",
    "correlate",
    "detect_retrieval_heads",
    "finetune",
    "generate_answer",
    "head_map",
    "head_patching_sweep",
    "head_set",
    "jaccard",
    "knockout",
    "knockout_curve",
    "kv_policy",
    "kv_retrieval",
    "load_folder",
    "load_heads",
    "load_mdqa",
    "load_model",
    "load_musique",
    "load_qa_jsonl",
    "load_weights",
    "mdqa",
    "model_info",
    "multihop_qa",
    "needle_grid",
    "patch_heads",
    "patched",
    "qrhead_string",
    "random_heads",
    "rank_correlation",
    "real_mdqa",
    "recall",
    "record_attention",
    "retrieval_success",
    "run_overlap",
    "run_pipeline",
    "save_weights",
    "select_parameters",
    "stability",
    "supported",
    "to_tokens",
    "write_duo_tsv",
]
