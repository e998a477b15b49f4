"""Figures: plotly maps of per-head results and circuitsvis attention views.

viz draws; it runs nothing. Every function takes results, frames or tensors and returns a
figure or HTML object, without running a model, showing or writing anything (except
:func:`save_report`, which writes its file). Models are run on the analysis side, e.g.
:func:`headscope.retrieval.record_attention` for :func:`attention_view`.

The figures of a retrieval run's report, one call each::

    log = SuccessLog()                                   # headscope.retrieval
    scores = detect_retrieval_heads(model, samples, success=log)
    needle_heatmap(log.to_frame())                       # answer success per length x depth
    head_map(scores.scores, threshold=0.1, label_top=5)  # the head map, Wu et al.'s cut outlined
    attention_view(record_attention(model, sample, [h for h, _ in scores.top(3)]))
    stability_figure(stability(scores).to_frame(), top_k=10)  # P(top 10) over bootstrap resamples
    knockout_curve_figure(curve.to_frame())              # top heads against random heads
    compression_figure(compression.to_frame())           # accuracy against KV heads kept full
    ranked_table(scores.to_frame())                      # every head, top 20 shown
    save_report("report.html", "run", retrieval_report(scores, outcomes=log.to_frame(), ...))
"""

from headscope.viz._attention import AttentionView as AttentionView
from headscope.viz._attention import TopKey as TopKey
from headscope.viz._attention import attention_view as attention_view
from headscope.viz._attention import attention_window as attention_window
from headscope.viz._attention import circuitsvis_script as circuitsvis_script
from headscope.viz._compression import compression_figure as compression_figure
from headscope.viz._figures import correlation_figure as correlation_figure
from headscope.viz._figures import knockout_curve_figure as knockout_curve_figure
from headscope.viz._figures import loss_curves as loss_curves
from headscope.viz._figures import patching_sets_figure as patching_sets_figure
from headscope.viz._figures import rank_scatter as rank_scatter
from headscope.viz._figures import recall_scatter as recall_scatter
from headscope.viz._figures import top_heads_bar as top_heads_bar
from headscope.viz._figures import training_figure as training_figure
from headscope.viz._heads import head_map as head_map
from headscope.viz._needle import needle_heatmap as needle_heatmap
from headscope.viz._report import Section as Section
from headscope.viz._report import html_report as html_report
from headscope.viz._report import save_report as save_report
from headscope.viz._retrieval_page import retrieval_report as retrieval_report
from headscope.viz._stability import overlap_figure as overlap_figure
from headscope.viz._stability import stability_figure as stability_figure
from headscope.viz._table import ranked_table as ranked_table
