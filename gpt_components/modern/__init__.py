"""Past the book: the modern decoder (Llama 3, Qwen3) as a composition of components.

Components, one module each: ``norms`` (``RMSNorm``), ``rope`` (rotary positions, Llama 3
scaling), ``feedforward`` (``SwiGLU``), ``attention`` (``GroupedQueryAttention``, optional
QK-norm), ``sliding_window`` (windowed attention and its ring-buffer cache), ``moe`` (routers,
experts, the load-balancing loss), ``latent_attention`` (DeepSeek's MLA), ``cache`` (per-layer
KV caches). ``config`` (``DecoderConfig``, ``LayerSpec``) names the components a family uses,
``components`` builds them by name, ``decoder`` (``DecoderBlock``, ``DecoderModel``) stacks
them. One short file per family: ``llama``, ``qwen3``, ``gemma3``, ``qwen3_moe``,
``deepseek_v3`` (choices, presets, Hugging Face names); ``hf`` reads and writes their weights.
``tokenizers`` reads their tokenizer files (``load_tokenizer``) and ``chat`` writes their
instruct models' chat formats; ``book_names`` gives the book's bonus-chapter names
(``Llama3Model(cfg)``, ``Qwen3Model(cfg)`` from its config dicts, ``compute_rope_params``).

>>> import torch
>>> from gpt_components.modern import DecoderModel, Qwen3Config
>>> model = DecoderModel(Qwen3Config.from_name("qwen3-nano", vocab_size=100)).eval()
>>> model(torch.tensor([[1, 2, 3]])).shape
torch.Size([1, 3, 100])
"""

from . import (
    attention,
    book_names,
    cache,
    chat,
    components,
    config,
    decoder,
    deepseek_v3,
    feedforward,
    gemma3,
    hf,
    latent_attention,
    llama,
    moe,
    norms,
    qwen3,
    qwen3_moe,
    rope,
    sliding_window,
    tokenizers,
)
from .attention import *
from .book_names import *
from .cache import *
from .chat import *
from .config import *
from .decoder import *
from .deepseek_v3 import *
from .feedforward import *
from .gemma3 import *
from .latent_attention import *
from .llama import *
from .moe import *
from .norms import *
from .qwen3 import *
from .qwen3_moe import *
from .rope import *
from .sliding_window import *
from .tokenizers import *

__all__ = [name for module in (norms, rope, feedforward, attention, sliding_window, moe,
                               latent_attention, cache, config, decoder, llama, qwen3, gemma3,
                               qwen3_moe, deepseek_v3, tokenizers, chat, book_names)
           for name in module.__all__]
