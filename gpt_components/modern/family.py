"""What a modern family file declares, in one place: ``Family`` and ``HFLayout``.

A family file (``llama.py``, ``qwen3.py``, ...) writes its config subclass (the choices it makes
and its own fields), its presets, its Hugging Face names and ``config.json`` mapping (an
``HFLayout``, built on ``hf.decoder_fields_from_hf``/``decoder_fields_to_hf``), and then one
``Family(...)``: declaring it registers it (``machinery.registry``), so no other file changes.
``docs/adding-a-family.md`` walks through writing one.

>>> from gpt_components.modern import llama
>>> llama.FAMILY.name, llama.FAMILY.hf_model_types, llama.LlamaConfig.family
('llama', ('llama',), 'llama')
"""

from __future__ import annotations

from ..machinery.pretrained import HFLayout
from ..machinery.registry import Family

__all__ = ["Family", "HFLayout"]
