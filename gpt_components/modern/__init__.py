"""Past the book: the modern decoder (Llama 3, Qwen3) as a composition of components.

Components, one module each: ``norms`` (``RMSNorm``), ``rope`` (rotary positions, Llama 3
scaling), ``feedforward`` (``SwiGLU``), ``attention`` (``GroupedQueryAttention``, optional
QK-norm), ``sliding_window`` (windowed attention and its ring-buffer cache), ``moe`` (routers,
experts, the load-balancing loss), ``latent_attention`` (DeepSeek's MLA), ``cache`` (per-layer
KV caches). ``config`` (``DecoderConfig``, ``LayerSpec``) names the components a family uses,
``components`` builds them by name, ``decoder`` (``DecoderBlock``, ``DecoderModel``) stacks
them. One short file per family: ``llama``, ``qwen3``, ``gemma3``, ``qwen3_moe``,
``deepseek_v3`` (choices, presets, Hugging Face names), each ending in the ``Family(...)`` that
registers it (``family``); ``hf`` holds the ``config.json`` fields they share. Every module here
is imported and its ``__all__`` exported without a list, so a new family is one new file.
``tokenizers`` reads their tokenizer files (``load_tokenizer``) and ``chat`` writes their
instruct models' chat formats; ``book_names`` gives the book's bonus-chapter names
(``Llama3Model(cfg)``, ``Qwen3Model(cfg)`` from its config dicts, ``compute_rope_params``).

>>> import torch
>>> from gpt_components.modern import DecoderModel, Qwen3Config
>>> model = DecoderModel(Qwen3Config.from_name("qwen3-nano", vocab_size=100)).eval()
>>> model(torch.tensor([[1, 2, 3]])).shape
torch.Size([1, 3, 100])
"""

from ..machinery.chapter import import_chapter

# Every module of the chapter, imported in name order: a family file declares its Family on
# import (that registers it), and what a module lists in ``__all__`` is exported from here.
# A new family is one new file in this folder; nothing here names it.
_EXPORTS = import_chapter(__name__)
__all__ = list(_EXPORTS)
globals().update(_EXPORTS)
