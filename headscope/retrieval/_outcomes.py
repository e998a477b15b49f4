"""``SuccessLog``: a success rule that remembers its verdicts, for the needle-in-a-haystack picture.

:func:`~headscope.retrieval.detect_retrieval_heads` asks its ``success`` rule once per sample,
in order, whether the model answered. Passing a ``SuccessLog`` records each verdict with the
sample's grid cell (``meta["length"]`` and ``meta["depth"]`` of needle samples), so answer
success per (context length x needle depth) comes out of the detection run itself, at no cost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from headscope.retrieval._rouge import DEFAULT_SUCCESS, RougeRecall
from headscope.tasks import Sample

__all__ = ["SuccessLog", "describe_rule"]


class SuccessLog:
    """Wrap a success rule and record ``(sample, output, success)`` per call.

    The rule defaults to :data:`~headscope.retrieval.DEFAULT_SUCCESS`, detection's own.

    Detection records the wrapped rule's name in its settings, so scores detected with and
    without a log merge.

    >>> from headscope.tasks import Sample
    >>> log = SuccessLog()
    >>> log(Sample("p", " Paris", meta={"length": 500, "depth": 50.0}), "Paris.")
    True
    >>> log.to_frame()[["length", "depth", "success"]].values.tolist()
    [[500, 50.0, True]]
    """

    def __init__(self, rule: Callable[[Sample, str], bool] | None = None) -> None:
        self.rule = rule if rule is not None else DEFAULT_SUCCESS
        self.records: list[tuple[Sample, str, bool]] = []
        # Detection names a rule by its __qualname__ (or str() for RougeRecall): answer for the wrapped rule.
        self.__qualname__ = describe_rule(self.rule)

    def __call__(self, sample: Sample, output: str) -> bool:
        ok = bool(self.rule(sample, output))
        self.records.append((sample, output, ok))
        return ok

    def replay(self, index: int) -> Sample:
        """Sample ``index`` with the model's own words before its answer appended to the prompt.

        Chat models often restate the question before answering ("The native language of X is
        Welsh."). Teacher-forcing the gold answer after this prompt replays the rows that really
        produced it, e.g. for :func:`~headscope.retrieval.record_attention`. When the output does
        not hold the answer verbatim, the sample comes back unchanged.

        >>> log = SuccessLog()
        >>> _ = log(Sample("Q: language? A:", " Welsh"), " It is Welsh.")
        >>> log.replay(0).prompt
        'Q: language? A: It is'
        """
        sample, output, _ = self.records[index]
        found = output.find(sample.answer.strip())
        if found <= 0 or not output[:found].strip():
            return sample
        return replace(sample, prompt=sample.prompt + output[:found].rstrip())

    def to_frame(self) -> Any:
        """One row per sample judged: index, length, depth (NaN without needle meta), answer, output, success."""
        import pandas as pd

        nan = float("nan")
        return pd.DataFrame(
            [
                (i, s.meta.get("length", nan), s.meta.get("depth", nan), s.answer.strip(), output, ok)
                for i, (s, output, ok) in enumerate(self.records)
            ],
            columns=["index", "length", "depth", "answer", "output", "success"],
        )


def describe_rule(success: Callable[[Sample, str], bool]) -> str:
    """A stable name for a success rule (recorded in the scores' settings, compared when merging)."""
    if isinstance(success, RougeRecall):
        return str(success)
    return getattr(success, "__qualname__", None) or type(success).__name__
