"""Compare head sets across models: overlap, rank agreement, and how overlap tracks task score.

Zhao, Yin and Durrett detect retrieval heads on models fine-tuned on synthetic and on real data,
measure how many of the real-data heads the synthetic ones recover (:func:`recall`), and correlate
that recall with each variant's downstream score (:func:`correlate`: Spearman with an exact
permutation p-value on few points and bootstrap intervals over points and over the questions
behind each score). :func:`head_set` cuts a set from a ``[layer, head]`` score map; :func:`rank_correlation`
compares two score maps over all heads; :func:`run_overlap` compares the top-k and stable sets of
several detections (e.g. one per needle seed). :func:`load_heads` reads head sets published by other
methods (Wu et al.'s and HeadKV's scores, DuoAttention's TSV, QRHead's strings) so that all of these
take them; :func:`write_duo_tsv` and :func:`qrhead_string` write the last two.
"""

from headscope.compare._correlation import Correlation as Correlation
from headscope.compare._correlation import correlate as correlate
from headscope.compare._export import qrhead_string as qrhead_string
from headscope.compare._export import write_duo_tsv as write_duo_tsv
from headscope.compare._formats import detect_format as detect_format
from headscope.compare._formats import load_heads as load_heads
from headscope.compare._loaded import LoadedHeads as LoadedHeads
from headscope.compare._rank import RankAgreement as RankAgreement
from headscope.compare._rank import rank_correlation as rank_correlation
from headscope.compare._runs import RunOverlap as RunOverlap
from headscope.compare._runs import run_overlap as run_overlap
from headscope.compare._sets import head_set as head_set
from headscope.compare._sets import jaccard as jaccard
from headscope.compare._sets import recall as recall
