"""Task samples and builders: prompts with gold answers and token-exact labelled spans.

Synthetic builders vary the seed paper's two axes: ``needle=`` realism ("natural",
"templated", "symbolic") and ``haystack=`` diversity ("diverse", "templated", "symbolic").
Loaders read real data (Lost in the Middle, MuSiQue, plain QA) into the same :class:`Sample`.
"""

from headscope.errors import TaskError as TaskError
from headscope.tasks._citation import citation as citation
from headscope.tasks._documents import Document as Document
from headscope.tasks._documents import shipped_corpus as shipped_corpus
from headscope.tasks._kv import kv_retrieval as kv_retrieval
from headscope.tasks._loaders import load_mdqa as load_mdqa
from headscope.tasks._loaders import load_musique as load_musique
from headscope.tasks._loaders import load_qa_jsonl as load_qa_jsonl
from headscope.tasks._loaders import read_jsonl as read_jsonl
from headscope.tasks._loaders import real_mdqa as real_mdqa
from headscope.tasks._mdqa import mdqa as mdqa
from headscope.tasks._multihop import multihop_qa as multihop_qa
from headscope.tasks._needle import needle_grid as needle_grid
from headscope.tasks._needle import needle_sample as needle_sample
from headscope.tasks._sample import EncodedSample as EncodedSample
from headscope.tasks._sample import Sample as Sample
from headscope.tasks._sample import Span as Span
from headscope.tasks._scoring import CitationScores as CitationScores
from headscope.tasks._scoring import citation_scores as citation_scores
from headscope.tasks._scoring import exact_match as exact_match
from headscope.tasks._scoring import normalize_answer as normalize_answer
from headscope.tasks._scoring import parse_citations as parse_citations
from headscope.tasks._scoring import rouge1_recall as rouge1_recall
from headscope.tasks._scoring import subspan_match as subspan_match
from headscope.tasks._scoring import token_f1 as token_f1
