"""gpt_components: a GPT-2-style language model built from first principles.

The book's chapters sit flat, in the order of "Build a Large Language Model (From Scratch)":
fundamentals -> tokenizers (bpe) -> data -> embeddings -> attention -> transformer -> model ->
generation (kv_cache) -> training (simple_loop, appendix_d) -> weights. Each chapter past the
book has a folder: ``modern`` (today's open architectures), ``finetune`` (classification,
instructions, LoRA, DPO), ``inspect`` (looking inside a model). ``machinery`` holds what every
chapter stands on (resources, tensor files, checkpoints, metrics, the family registry,
loading). Everything listed in ``__all__`` is the public API, importable from here.

>>> import gpt_components
>>> "MultiHeadAttention" in gpt_components.__all__
True
"""

import importlib as _importlib
import sys as _sys

__version__ = "0.1.0"

#: The modules whose ``__all__`` makes up the public API, in the order of the pipeline. Making a
#: module public is one line here: every name in its ``__all__`` becomes ``gpt_components.NAME``.
_PUBLIC_MODULES = (
    "machinery.checks",
    "fundamentals",
    "machinery.resources",
    "tokenizers",
    "bpe",
    "bpe_merges",
    "bpe_files",
    "data",
    "embeddings",
    "attention",
    "transformer",
    "inspect.trace",
    "machinery.language_model",
    "model",
    "kv_cache",
    "generation",
    "inspect.inspection",
    "inspect.inspection_report",
    "machinery.tensor_files",
    "weights",
    "modern",
    "newest",
    "machinery.registry",
    "machinery.pretrained",
    "corpus",
    "machinery.checkpoint",
    "machinery.sources",
    "machinery.metrics",
    "training",
    "simple_loop",
    "appendix_d",
    "finetune",
    "serving",
    "reasoning",
)

#: Modules that moved into a folder, importable under their old names too (scripts written
#: before the move keep working): ``gpt_components.registry`` is ``machinery.registry``.
_MOVED = {
    "checkpoint": "machinery.checkpoint",
    "distributed": "machinery.distributed",
    "metrics": "machinery.metrics",
    "pretrained": "machinery.pretrained",
    "registry": "machinery.registry",
    "resources": "machinery.resources",
    "sources": "machinery.sources",
    "tensor_files": "machinery.tensor_files",
    "trace": "inspect.trace",
    "inspection": "inspect.inspection",
    "inspection_report": "inspect.inspection_report",
}

__all__ = ["__version__"]
for _name in _PUBLIC_MODULES:
    _module = _importlib.import_module(f"{__name__}.{_name}")
    globals().update((public, getattr(_module, public)) for public in _module.__all__)
    __all__.extend(public for public in _module.__all__ if public not in __all__)
for _old, _new in _MOVED.items():
    _sys.modules[f"{__name__}.{_old}"] = globals()[_old] = _importlib.import_module(
        f"{__name__}.{_new}")
del _name, _module, _old, _new
