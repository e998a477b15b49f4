"""The sections of a retrieval-head run's report, in the order a long-context researcher reads them.

1. the needle-in-a-haystack picture: answer success per (context length x needle depth);
2. the head map, Wu et al.'s 0.1 threshold outlined and the top heads labelled;
3. how stable the top k is: P(top k) per head over bootstrap resamples of the samples (when given);
4. what the top heads do: their attention around the needle on one answered sample;
5. knockout of the top heads against random heads (when the run has one);
6. KV-cache compression: answer accuracy with a share of KV heads full, retrieval-ranked against
   random (when the run has one, :func:`headscope.compression_curve`);
7. every head sorted by score, the top rows shown and the rest folded.

Each figure comes from one public ``viz`` function; this module only adds the captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headscope.viz._attention import attention_view
from headscope.viz._compression import compression_figure
from headscope.viz._figures import knockout_curve_figure
from headscope.viz._heads import head_map
from headscope.viz._needle import needle_heatmap
from headscope.viz._report import Section
from headscope.viz._stability import stability_figure
from headscope.viz._table import ranked_table

if TYPE_CHECKING:
    from headscope.ablation import KnockoutCurve
    from headscope.compression import CompressionCurve
    from headscope.retrieval import AttentionRows, RetrievalScores, Stability

__all__ = ["retrieval_report"]


def retrieval_report(
    scores: RetrievalScores,
    *,
    outcomes: Any = None,
    attention: AttentionRows | None = None,
    knockout: KnockoutCurve | None = None,
    compression: CompressionCurve | None = None,
    stability: Stability | None = None,
    threshold: float = 0.1,
    stable_share: float = 0.9,
    label_top: int = 5,
    shown: int = 20,
) -> list[Section]:
    """Sections for :func:`~headscope.viz.html_report` / :func:`~headscope.viz.save_report`, each with a caption.

    ``outcomes`` is a frame with one row per sample (``length``, ``depth``, ``success``, e.g.
    :meth:`headscope.retrieval.SuccessLog.to_frame`); ``attention`` a record of
    :func:`headscope.retrieval.record_attention`; ``knockout`` a
    :class:`~headscope.ablation.KnockoutCurve`; ``compression`` a
    :class:`~headscope.compression.CompressionCurve`; ``stability`` a
    :func:`headscope.retrieval.stability` of ``scores``, whose section names the heads in the top
    k of at least ``stable_share`` of the resamples. Sections whose input is missing are left out,
    as is the needle picture when no sample has a length and a depth. ``threshold`` is Wu et
    al.'s cut (0.1).

    >>> import torch
    >>> from headscope.retrieval import RetrievalScores
    >>> scores = RetrievalScores(torch.tensor([[0.5, 0.0], [0.2, 0.05]]), 1, 2, "m", "teacher_forced")
    >>> [s.key for s in retrieval_report(scores)]
    ['heads', 'table']
    """
    mode, n_counted, n_samples = scores.mode, scores.n_counted, scores.n_samples
    sections: list[Section] = []
    if outcomes is not None and outcomes[["length", "depth"]].notna().all(axis=1).any():
        cells = outcomes.dropna(subset=["length", "depth"])
        rule = scores.settings.get("success", "the success rule")
        sections.append(
            Section(
                "What the model retrieves: answer success per context length and needle depth",
                needle_heatmap(cells),
                f"Share of needle samples answered ({rule}) in each of {cells['length'].nunique()} context lengths "
                f"x {cells['depth'].nunique()} needle depths: {int(cells['success'].sum())} of {len(cells)} "
                f"samples answered, {mode} mode.",
                "needle",
            )
        )
    values = scores.scores.numpy()
    n_heads = values.size
    if n_counted:
        above = int((values > threshold).sum())
        sections.append(
            Section(
                f"Retrieval score per head (threshold {threshold:g} outlined)",
                head_map(
                    values,
                    title=f"retrieval scores: {scores.model}",
                    value_name="retrieval score",
                    threshold=threshold,
                    label_top=label_top,
                ),
                f"Retrieval score of each of {n_heads} heads ({values.shape[0]} layers x {values.shape[1]}), "
                f"averaged over the {n_counted} of {n_samples} samples answered, {mode} mode; "
                f"{above / n_heads:.1%} of heads ({above}) score above Wu et al.'s {threshold:g} (outlined), "
                f"the top {min(label_top, n_heads)} are labelled.",
                "heads",
            )
        )
    if stability is not None:
        stable = stability.stable(stable_share)
        k = stability.top_k
        sections.append(
            Section(
                f"How stable the top {k} is: {len(stable)} heads in the top {k} of at least {stable_share:.0%} "
                "of resamples",
                stability_figure(
                    stability.to_frame(),
                    top_k=k,
                    threshold=stable_share,
                    title=f"how stable the top {k} is: {stability.model}",
                ),
                f"The {stability.n_samples} answered samples redrawn with replacement {stability.n_boot} times "
                f"(seed {stability.seed}); top: the share of resamples whose top {k} (heads scoring above 0) holds "
                f"each head, dark at or above {stable_share:.0%}; bottom: its score with the "
                f"{stability.confidence:.0%} percentile interval. Stable heads: "
                f"{', '.join(map(str, stable)) or 'none'}.",
                "stability",
            )
        )
    if attention is not None:
        meta = attention.meta
        where = (
            f"{meta['length']} context tokens, needle at {meta['depth']:g}% depth"
            if "length" in meta and "depth" in meta
            else f"{attention.n_tokens} tokens"
        )
        sections.append(
            Section(
                f"What the top heads do: {', '.join(attention.labels)} around the needle",
                attention_view(attention),
                f"Attention of the top {len(attention.heads)} heads on one answered sample ({where}): "
                f"{len(attention.positions)} of {attention.n_tokens} tokens, a window around the "
                f"'{attention.span}' span plus BOS; {_rows(len(attention.query_positions))} the answer "
                "(teacher-forced); the table gives each row's top-1 key over the whole input.",
                "attention",
            )
        )
    if knockout is not None:
        sections.append(
            Section(
                "Knockout: top heads against random heads",
                knockout_curve_figure(knockout.to_frame()),
                f"Task score ({knockout.n_samples} samples) with the top-k heads knocked out ({knockout.mode} mode), "
                f"against k random heads (mean ± std over {len(knockout.seeds)} seeds, shaded).",
                "knockout",
            )
        )
    if compression is not None:
        ratios = compression.to_frame().groupby("fraction")["memory_ratio"].mean()
        memory = ", ".join(f"{f:.0%} full: {r:.2f}×" for f, r in ratios.items())
        sections.append(
            Section(
                "KV-cache compression: retrieval-chosen KV heads against random ones",
                compression_figure(compression.to_frame()),
                f"Answer accuracy ({compression.n_samples} samples, greedy decoding) when only a share of KV heads "
                f"keeps the full cache and the rest keep {compression.sink} sink + {compression.window} recent "
                f"tokens; random KV-head sets shaded (min–max over seeds), full attention dotted. "
                f"KV memory saved (measured after the prompt): {memory}.",
                "compression",
            )
        )
    frame = scores.to_frame()
    sections.append(
        Section(
            "Every head, sorted by score",
            ranked_table(frame, value="value", shown=shown),
            f"All {n_heads} heads sorted by retrieval score ({mode} mode, {n_counted} of {n_samples} samples "
            f"answered); the top {min(shown, n_heads)} are shown, the rest are folded below.",
            "table",
        )
    )
    return sections


def _rows(n: int) -> str:
    return "the row is the position that produces" if n == 1 else f"rows are the {n} positions that produce"
