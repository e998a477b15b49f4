"""Thin fine-tuning helpers: the answer-only loss, parameter selection, a training loop, weight files.

The seed paper (Zhao, Yin and Durrett, ICML 2025) fine-tunes only the attention weights of a
model on long-context task data, with the loss on the answer tokens only, then looks at which
retrieval heads the training made. :func:`finetune` does that on any TransformerLens model, in
place; :func:`select_parameters` says which parameters train (``"attention"``,
``"attention_weights"``, ``"all"``, regular expressions or a predicate), :func:`answer_loss` is
the loss, and :func:`save_weights` / :func:`load_weights` keep only the trained tensors.
Training from scratch is ``finetune(..., train="all")`` on a freshly initialised
:func:`headscope.models.tiny_folder` model.
"""

from headscope.training._loss import answer_loss as answer_loss
from headscope.training._result import FinetuneResult as FinetuneResult
from headscope.training._select import PRESETS as PRESETS
from headscope.training._select import parameter_name as parameter_name
from headscope.training._select import select_parameters as select_parameters
from headscope.training._train import finetune as finetune
from headscope.training._weights import load_weights as load_weights
from headscope.training._weights import save_weights as save_weights

__all__ = [
    "PRESETS",
    "FinetuneResult",
    "answer_loss",
    "finetune",
    "load_weights",
    "parameter_name",
    "save_weights",
    "select_parameters",
]
