"""Retrieval heads (Wu et al. 2024): which attention heads copy the answer out of the context.

:func:`detect_retrieval_heads` scores every head by greedy generation (Wu et al.'s procedure)
or by one teacher-forced forward pass, on the eager route or the fused one (sdpa attention,
only the scored rows recomputed); :class:`RetrievalScores` holds the result as sums and
counts that merge across runs and machines; :func:`stability` bootstraps them over samples (a score
interval per head and how often it lands in the top k). :func:`record_attention` keeps a few heads'
attention around the needle for :func:`headscope.viz.attention_view` to draw.
"""

from headscope.retrieval._decode import Decoder as Decoder
from headscope.retrieval._decode import greedy_steps as greedy_steps
from headscope.retrieval._detect import Mode as Mode
from headscope.retrieval._detect import detect_retrieval_heads as detect_retrieval_heads
from headscope.retrieval._distributed import all_gather_scores as all_gather_scores
from headscope.retrieval._distributed import shard_samples as shard_samples
from headscope.retrieval._outcomes import SuccessLog as SuccessLog
from headscope.retrieval._record import AttentionRows as AttentionRows
from headscope.retrieval._record import record_attention as record_attention
from headscope.retrieval._rouge import DEFAULT_SUCCESS as DEFAULT_SUCCESS
from headscope.retrieval._rouge import RougeRecall as RougeRecall
from headscope.retrieval._routes import Attention as Attention
from headscope.retrieval._scores import RETRIEVAL_THRESHOLD as RETRIEVAL_THRESHOLD
from headscope.retrieval._scores import RetrievalScores as RetrievalScores
from headscope.retrieval._scores import Score as Score
from headscope.retrieval._stability import Stability as Stability
from headscope.retrieval._stability import stability as stability
from headscope.retrieval._top1 import count_hits as count_hits

__all__ = [
    "DEFAULT_SUCCESS",
    "RETRIEVAL_THRESHOLD",
    "Attention",
    "AttentionRows",
    "Decoder",
    "Mode",
    "RetrievalScores",
    "RougeRecall",
    "Score",
    "Stability",
    "SuccessLog",
    "all_gather_scores",
    "count_hits",
    "detect_retrieval_heads",
    "greedy_steps",
    "record_attention",
    "shard_samples",
    "stability",
]
