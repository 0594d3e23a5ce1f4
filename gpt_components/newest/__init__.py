"""Past the book, part 3: linear attention and the newest open models.

Gated DeltaNet (a recurrent state of fixed size in place of a growing KV cache) and the hybrids
built on it (Qwen3-Next, Qwen3.5), GPT-OSS (attention sinks, YaRN, clamped SwiGLU experts),
OLMo 3 (norms after each branch) and Gemma 4 (key/value caches shared across layers, per-layer
input embeddings). Each new idea is a component module; each family is one file composing them
with the modern decoder's (``gpt_components.modern``), ending in the ``Family(...)`` that
registers it. Every module here is imported and its ``__all__`` exported without a list.

>>> import gpt_components.newest as newest
>>> isinstance(newest.__all__, list)
True
"""

from ..machinery.chapter import import_chapter

_EXPORTS = import_chapter(__name__)
__all__ = list(_EXPORTS)
globals().update(_EXPORTS)
