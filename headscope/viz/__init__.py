"""Figures: plotly maps of per-head results and circuitsvis attention views.

Every function is pure: it takes results or tensors and returns a figure or HTML object,
without showing or writing anything (except :func:`save_report`, which writes its file).
"""

from headscope.viz._attention import AttentionView as AttentionView
from headscope.viz._attention import attention_view as attention_view
from headscope.viz._attention import attention_window as attention_window
from headscope.viz._attention import circuitsvis_script as circuitsvis_script
from headscope.viz._figures import knockout_curve_figure as knockout_curve_figure
from headscope.viz._figures import recall_scatter as recall_scatter
from headscope.viz._figures import top_heads_bar as top_heads_bar
from headscope.viz._heads import head_map as head_map
from headscope.viz._report import html_report as html_report
from headscope.viz._report import save_report as save_report
