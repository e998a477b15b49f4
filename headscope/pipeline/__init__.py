"""The seed paper's experiment end to end, at laptop scale: do synthetic data teach the real retrieval heads?

Zhao, Yin and Durrett (ICML 2025) fine-tune one model on several synthetic variants of a task and
on real data, then ask whether the synthetic models score well *because* they learned the heads
the real-data model uses. :func:`run_pipeline` does every step with the library's own pieces:
fine-tune (:mod:`headscope.training`), score, detect retrieval heads (:mod:`headscope.retrieval`),
measure the recall of the real model's heads ``|H_syn ∩ H_real| / |H_real|`` and correlate it
with task score (:mod:`headscope.compare`), knock out top against random heads
(:mod:`headscope.ablation`), and patch the shared heads from the real model into a synthetic one
against their complement and random sets (:mod:`headscope.patching`).

**Task.** The needle in a haystack (:func:`~headscope.tasks.needle_sample`), because it cuts
contexts to an exact token budget, so every variant costs the same and the real and synthetic
data differ only along the paper's two axes. "Real" is a natural needle in diverse natural
documents; the synthetic variants replace the needle with a templated relation or a symbolic
key/value, the haystack with templated or symbolic filler, or both.

**Base model.** A small Llama (3 layers x 8 heads by default) built here and pre-trained on
plain documents, so it starts with no retrieval ability and its retrieval heads form during
fine-tuning, from the variant's data. The scale makes the numbers noisy; the summary says what
they do and do not show.

**On a real model** (:meth:`PipelineConfig.smollm2`, ``headscope paper``): SmolLM2-135M-Instruct
fine-tuned on real Natural Questions multi-document QA (Lost in the Middle's rows, from
``../shared/data``) and on synthetic MDQA variants (:func:`~headscope.tasks.mdqa`), scored by
generated exact match by gold-document position on held-out real questions. Training, generation
and detection run on the fused (sdpa) route, which keeps the run to about 40 minutes on 2 cores.
"""

from headscope.pipeline._config import REAL as REAL
from headscope.pipeline._config import SYNTHETIC as SYNTHETIC
from headscope.pipeline._config import PipelineConfig as PipelineConfig
from headscope.pipeline._config import Variant as Variant
from headscope.pipeline._data import ANSWER_CUE as ANSWER_CUE
from headscope.pipeline._data import answer_format as answer_format
from headscope.pipeline._data import generic_samples as generic_samples
from headscope.pipeline._data import mdqa_samples as mdqa_samples
from headscope.pipeline._data import split_evaluation as split_evaluation
from headscope.pipeline._data import variant_samples as variant_samples
from headscope.pipeline._result import PipelineResult as PipelineResult
from headscope.pipeline._result import VariantResult as VariantResult
from headscope.pipeline._run import ModelScore as ModelScore
from headscope.pipeline._run import base_model as base_model
from headscope.pipeline._run import finetune_variant as finetune_variant
from headscope.pipeline._run import retrieval_heads as retrieval_heads
from headscope.pipeline._run import run_pipeline as run_pipeline
from headscope.pipeline._run import score_model as score_model
from headscope.pipeline._score import TaskScore as TaskScore
from headscope.pipeline._score import answer_correct as answer_correct
from headscope.pipeline._score import answer_logprob as answer_logprob
from headscope.pipeline._score import generated_match as generated_match
from headscope.pipeline._score import sample_scores as sample_scores
from headscope.pipeline._score import task_score as task_score

__all__ = [
    "ANSWER_CUE",
    "REAL",
    "SYNTHETIC",
    "ModelScore",
    "PipelineConfig",
    "PipelineResult",
    "TaskScore",
    "Variant",
    "VariantResult",
    "answer_correct",
    "answer_format",
    "answer_logprob",
    "base_model",
    "finetune_variant",
    "generated_match",
    "generic_samples",
    "mdqa_samples",
    "retrieval_heads",
    "run_pipeline",
    "sample_scores",
    "score_model",
    "split_evaluation",
    "task_score",
    "variant_samples",
]
