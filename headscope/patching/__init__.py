"""Activation patching of attention heads: within one model, and between two models.

**Context.** Run a model on a *clean* input (where it gets the answer) and a *corrupted* one
(where it does not). Replace one head's output in the corrupted run by its clean value: if the
metric moves back toward the clean value, that head carries what the corruption removed.
Between models, run one input through a *source* model (fine-tuned on real data) and a *target*
(fine-tuned on synthetic data) of the same architecture, and patch heads from source into target:
the seed paper patches the retrieval heads both share, and compares them with the complement and
with random heads of equal size (:func:`compare_patching`).

**Pieces.** :func:`record_heads` + :func:`patched` (a ``with`` block, so generation works too) and
:func:`patch_heads` patch chosen heads; :func:`head_patching_sweep` patches each head alone, exactly
and fast; :func:`attribution_patching` estimates all heads from one backward pass.
"""

from headscope.patching._attribution import attribution_patching as attribution_patching
from headscope.patching._compare import PatchingComparison as PatchingComparison
from headscope.patching._compare import compare_patching as compare_patching
from headscope.patching._metrics import AnswerLogProb as AnswerLogProb
from headscope.patching._metrics import LogitDiff as LogitDiff
from headscope.patching._metrics import Metric as Metric
from headscope.patching._metrics import generation_score as generation_score
from headscope.patching._patch import check_same_architecture as check_same_architecture
from headscope.patching._patch import patch_heads as patch_heads
from headscope.patching._patch import patched as patched
from headscope.patching._patch import record_heads as record_heads
from headscope.patching._result import PatchingResult as PatchingResult
from headscope.patching._sweep import head_patching_sweep as head_patching_sweep

__all__ = [
    "AnswerLogProb",
    "LogitDiff",
    "Metric",
    "PatchingComparison",
    "PatchingResult",
    "attribution_patching",
    "check_same_architecture",
    "compare_patching",
    "generation_score",
    "head_patching_sweep",
    "patch_heads",
    "patched",
    "record_heads",
]
