"""gpt_components: a GPT-2-style language model built from first principles.

Modules follow the pipeline of "Build a Large Language Model (From Scratch)", in order:
fundamentals -> tokenizers -> data -> embeddings -> attention -> transformer -> model ->
generation -> training -> finetuning. Everything listed in ``__all__`` is the public API.

>>> import gpt_components
>>> "MultiHeadAttention" in gpt_components.__all__
True
"""

from . import attention, data, embeddings, fundamentals, resources, tokenizers
from .attention import *
from .data import *
from .embeddings import *
from .fundamentals import *
from .resources import *
from .tokenizers import *

__version__ = "0.1.0"

_MODULES = (fundamentals, resources, tokenizers, data, embeddings, attention)

__all__ = ["__version__", *(name for module in _MODULES for name in module.__all__)]
