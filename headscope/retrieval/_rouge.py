"""When does a sample count: ROUGE-1 recall of the gold answer, and the value named as a whole word.

Wu et al. keep a sample only when the ROUGE-1 recall of the needle in the generated text is
above 50%. :class:`RougeRecall` is that rule over :func:`headscope.tasks.rouge1_recall` (no
stemming), taking the best over ``sample.answer`` and any ``sample.meta["answers"]``. Recall
alone passes a whole-sentence answer with the wrong value ("The native language of Ada is
Spanish." recalls 6 of the 7 words of "... is Welsh."), so when a sample knows its value
(``sample.meta["value"]``, as needle samples do) the output must also name it as a whole word
(:func:`headscope.tasks.names_value`: case and punctuation ignored, "Ann" is not named by "Anna").

:data:`DEFAULT_SUCCESS` is the one rule that detection, :class:`~headscope.retrieval.SuccessLog`,
:func:`~headscope.retrieval_success` (so generation-scored knockout curves) and the command line
use; ``RougeRecall(require_value=False)`` is Wu et al.'s rule alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from headscope.tasks import Sample, rouge1_recall
from headscope.tasks._scoring import names_value

__all__ = ["DEFAULT_SUCCESS", "RougeRecall"]


@dataclass(frozen=True)
class RougeRecall:
    """The answer's ROUGE-1 recall in ``output`` is above ``min_recall``, and the sample's value is named.

    ``require_value`` (default ``True``) applies only to samples whose ``meta`` holds a
    ``"value"``; other samples are judged by recall alone.

    >>> from headscope.tasks import Sample
    >>> rule = RougeRecall(0.5)
    >>> rule(Sample(prompt="p", answer=" Paris, France"), "It is Paris.")  # recall 0.5 is not above 0.5
    False
    >>> rule(Sample(prompt="p", answer=" Paris, France", meta={"answers": ["Paris"]}), "It is Paris.")
    True
    >>> whole = Sample(prompt="p", answer=" The capital is Paris.", meta={"value": "Paris"})
    >>> rule(whole, "The capital is Rome."), RougeRecall(0.5, require_value=False)(whole, "The capital is Rome.")
    (False, True)
    """

    min_recall: float = 0.5
    require_value: bool = True

    def __call__(self, sample: Sample, output: str) -> bool:
        if self.require_value and "value" in sample.meta and not names_value(output, str(sample.meta["value"])):
            return False
        references = [sample.answer, *sample.meta.get("answers", ())]
        return rouge1_recall(output, references) > self.min_recall

    def __str__(self) -> str:
        value = " and the value named as a whole word" if self.require_value else ""
        return f"rouge1_recall > {self.min_recall}{value}"


#: headscope's success rule everywhere: ROUGE-1 recall above 0.5 (Wu et al.) and the value named as a whole word.
DEFAULT_SUCCESS = RougeRecall()
