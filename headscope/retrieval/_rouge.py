"""When does a sample count: ROUGE-1 recall of the gold answer in the model's output.

Wu et al. keep a sample only when the ROUGE-1 recall of the needle in the generated text is
above 50%. :class:`RougeRecall` is that rule over :func:`headscope.tasks.rouge1_recall` (no
stemming), taking the best over ``sample.answer`` and any ``sample.meta["answers"]``. For a
whole-sentence answer, recall alone also passes a sentence with the wrong value ("... is
Spanish." recalls 7 of 8 words of "... is Welsh."); ``require_value=True`` also asks for the
needle's value (``sample.meta["value"]``) in the output.
"""

from __future__ import annotations

from dataclasses import dataclass

from headscope.tasks import Sample, rouge1_recall

__all__ = ["RougeRecall"]


@dataclass(frozen=True)
class RougeRecall:
    """The default success rule: the answer's ROUGE-1 recall in ``output`` is above ``min_recall``.

    >>> from headscope.tasks import Sample
    >>> rule = RougeRecall(0.5)
    >>> rule(Sample(prompt="p", answer=" Paris, France"), "It is Paris.")  # recall 0.5 is not above 0.5
    False
    >>> rule(Sample(prompt="p", answer=" Paris, France", meta={"answers": ["Paris"]}), "It is Paris.")
    True
    >>> whole = Sample(prompt="p", answer=" The capital is Paris.", meta={"value": "Paris"})
    >>> rule(whole, "The capital is Rome."), RougeRecall(0.5, require_value=True)(whole, "The capital is Rome.")
    (True, False)
    """

    min_recall: float = 0.5
    require_value: bool = False

    def __call__(self, sample: Sample, output: str) -> bool:
        references = [sample.answer, *sample.meta.get("answers", ())]
        if self.require_value and "value" in sample.meta and sample.meta["value"].lower() not in output.lower():
            return False
        return rouge1_recall(output, references) > self.min_recall

    def __str__(self) -> str:
        return f"rouge1_recall > {self.min_recall}" + (" and the value said" if self.require_value else "")
