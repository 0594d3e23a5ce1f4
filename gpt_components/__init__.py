"""gpt_components: a GPT-2-style language model built from first principles.

Modules follow the pipeline of "Build a Large Language Model (From Scratch)", in order:
fundamentals -> tokenizers -> data -> embeddings -> attention -> transformer -> model ->
generation -> training (with its checkpoints and metrics) -> finetuning. Everything listed in
``__all__`` is the public API.

>>> import gpt_components
>>> "MultiHeadAttention" in gpt_components.__all__
True
"""

from . import (
    appendix_d,
    attention,
    bpe,
    bpe_files,
    bpe_merges,
    checkpoint,
    corpus,
    data,
    embeddings,
    finetune,
    fundamentals,
    generation,
    inspection,
    inspection_report,
    kv_cache,
    metrics,
    model,
    modern,
    pretrained,
    registry,
    resources,
    simple_loop,
    sources,
    tensor_files,
    tokenizers,
    trace,
    training,
    transformer,
    weights,
)
from .appendix_d import *
from .attention import *
from .bpe import *
from .bpe_files import *
from .bpe_merges import *
from .checkpoint import *
from .corpus import *
from .data import *
from .embeddings import *
from .finetune import *
from .fundamentals import *
from .generation import *
from .inspection import *
from .inspection_report import *
from .kv_cache import *
from .metrics import *
from .model import *
from .modern import *
from .registry import *
from .resources import *
from .simple_loop import *
from .tensor_files import *
from .tokenizers import *
from .trace import *
from .training import *
from .transformer import *
from .weights import *

# isort: split
from .pretrained import *  # after weights: its save_pretrained dispatches on the family
from .sources import *

__version__ = "0.1.0"

_MODULES = (
    fundamentals,
    resources,
    tokenizers,
    bpe,
    bpe_merges,
    bpe_files,
    data,
    embeddings,
    attention,
    transformer,
    trace,
    model,
    kv_cache,
    generation,
    inspection,
    inspection_report,
    tensor_files,
    weights,
    modern,
    registry,
    pretrained,
    corpus,
    checkpoint,
    sources,
    metrics,
    training,
    simple_loop,
    appendix_d,
    finetune,
)

__all__ = list(dict.fromkeys(["__version__", *(name for module in _MODULES
                                                for name in module.__all__)]))
