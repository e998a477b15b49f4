"""Figures: plotly maps of per-head results and circuitsvis attention views.

viz draws; it runs nothing. Every function takes results, frames or tensors and returns a
figure or HTML object, without running a model, showing or writing anything (except
:func:`save_report`, which writes its file). Models are run on the analysis side, e.g.
:func:`headscope.retrieval.record_attention` for :func:`attention_view`.
"""

from headscope.viz._attention import AttentionView as AttentionView
from headscope.viz._attention import TopKey as TopKey
from headscope.viz._attention import attention_view as attention_view
from headscope.viz._attention import attention_window as attention_window
from headscope.viz._attention import circuitsvis_script as circuitsvis_script
from headscope.viz._figures import knockout_curve_figure as knockout_curve_figure
from headscope.viz._figures import recall_scatter as recall_scatter
from headscope.viz._figures import top_heads_bar as top_heads_bar
from headscope.viz._heads import head_map as head_map
from headscope.viz._needle import needle_heatmap as needle_heatmap
from headscope.viz._report import Section as Section
from headscope.viz._report import html_report as html_report
from headscope.viz._report import save_report as save_report
from headscope.viz._retrieval_page import retrieval_report as retrieval_report
from headscope.viz._table import ranked_table as ranked_table
