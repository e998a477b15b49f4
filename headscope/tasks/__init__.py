"""Task samples and builders: prompts with gold answers and token-exact labelled spans."""

from headscope.tasks._sample import EncodedSample as EncodedSample
from headscope.tasks._sample import Sample as Sample
from headscope.tasks._sample import Span as Span
