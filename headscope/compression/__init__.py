"""KV-cache compression from a head set: keep the whole cache only where heads retrieve.

Retrieval heads say which heads need the whole context. DuoAttention (Xiao et al. 2024) keeps a
full KV cache only for its retrieval heads and, for every other KV head, the first few tokens
(attention sinks) and a recent window; RazorAttention and HeadKV pick heads from scores without
training. :func:`kv_policy` turns scores or a head set into such a policy (per KV head: under
grouped-query attention the scores of a KV head's query heads are pooled, by max by default), and
:func:`generate_compressed` decodes under it with a real compressed cache
(:class:`CompressedCache`: the streaming heads' evicted keys are gone, so the memory is measured).
:func:`compression_curve` measures answer accuracy against the share of KV heads kept full, for
the retrieval ranking, other rankings, random KV-head sets and full attention.
"""

from headscope.compression._cache import CompressedCache as CompressedCache
from headscope.compression._cache import kept_positions as kept_positions
from headscope.compression._curve import CompressionCurve as CompressionCurve
from headscope.compression._curve import compression_curve as compression_curve
from headscope.compression._decode import CompressedDecoder as CompressedDecoder
from headscope.compression._decode import Generation as Generation
from headscope.compression._decode import generate_compressed as generate_compressed
from headscope.compression._policy import CacheBytes as CacheBytes
from headscope.compression._policy import KVPolicy as KVPolicy
from headscope.compression._policy import kv_policy as kv_policy
