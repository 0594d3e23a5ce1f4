"""Serving many people at once: a batched engine behind an OpenAI-compatible server.

A paged KV cache (fixed-size blocks, a block table per sequence), a scheduler that admits,
prefills in chunks, decodes every running sequence in one batched forward and preempts when
pages run out, prefix caching and speculative decoding: each shortcut proven to change nothing
but speed. The server (``gpt-components serve``) needs the ``serve`` extra (FastAPI, uvicorn)
and imports it only when started. Every module here is imported and its ``__all__`` exported
without a list.

>>> import gpt_components.serving as serving
>>> isinstance(serving.__all__, list)
True
"""

from ..machinery.chapter import import_chapter

_EXPORTS = import_chapter(__name__)
__all__ = list(_EXPORTS)
globals().update(_EXPORTS)
