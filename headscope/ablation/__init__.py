"""Attention knockout: block chosen heads and measure what a task loses.

Context: retrieval heads (Wu et al. 2024) copy the answer out of a long context. If a set of heads
really carries retrieval, knocking it out should break retrieval far more than knocking out as
many random heads. :class:`Knockout` is the intervention as a value (which heads, which mode, which
positions); ``with knockout(model, heads, mode=...)`` or ``with spec.applied(model)`` applies it to
every forward pass in the block (prefill and generation). :func:`knockout_curve` sweeps the number
of knocked-out top-ranked heads against random heads drawn outside the top of the ranking; by
default it knocks heads out only at the rows that produce the answer (``positions="answer"``, Wu
et al.'s decoding-only knockout), so the prompt is read intact.
"""

from headscope.ablation._apply import knockout as knockout
from headscope.ablation._curve import KnockoutCurve as KnockoutCurve
from headscope.ablation._curve import knockout_curve as knockout_curve
from headscope.ablation._means import head_means as head_means
from headscope.ablation._means import mean_knockout as mean_knockout
from headscope.ablation._spec import MODES as MODES
from headscope.ablation._spec import Knockout as Knockout
