"""What works where: the architecture matrix, checked against Hugging Face eager on tiny real-config models.

:func:`supported` boots a tiny random-weight model of each decoder family
(:mod:`headscope.models._families`: Llama 3, Mistral, Qwen2/3, Gemma 2/3, Phi-3, OLMo 2,
GPT-NeoX, GPT-2, GPT-Neo) and checks detection, knockout and patching on the fused and eager
attention routes against the same model run by Hugging Face with eager attention. The result,
:class:`Support`, prints as the README's table (``scripts/supported_table.py``).
"""

from headscope.support._matrix import CAPABILITIES as CAPABILITIES
from headscope.support._matrix import ROUTES as ROUTES
from headscope.support._matrix import Cell as Cell
from headscope.support._matrix import Support as Support
from headscope.support._matrix import supported as supported

__all__ = ["CAPABILITIES", "ROUTES", "Cell", "Support", "supported"]
