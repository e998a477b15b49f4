"""Figures: plotly maps of per-head results and circuitsvis attention views.

Every function is pure: it takes results or tensors and returns a figure or HTML object,
without showing or writing anything.
"""

from headscope.viz._heads import head_map as head_map
