"""Weights in Hugging Face's layout, for every family: ``from_pretrained``, ``save_pretrained``.

``from_pretrained(path)`` reads ``config.json``'s ``model_type`` (``gpt2``, ``llama``,
``qwen3``) and returns that family's model in eval mode, in the dtype of the file.
``save_pretrained(model, directory)`` writes ``config.json`` and ``model.safetensors`` so that
``transformers.AutoModelForCausalLM.from_pretrained(directory)`` gives the same logits. Each
family's names live in its own module (``weights`` for GPT-2, ``modern.llama``,
``modern.qwen3``); a lone GPT-2 ``model.safetensors`` or a GPT-2 hub name goes to ``weights``.

>>> import tempfile
>>> import torch
>>> from gpt_components.machinery.registry import preset_config, build_model
>>> model = build_model(preset_config("qwen3-nano", vocab_size=100)).eval()
>>> with tempfile.TemporaryDirectory() as directory:
...     again = from_pretrained(save_pretrained(model, directory))
>>> ids = torch.tensor([[1, 2, 3]])
>>> torch.equal(again(ids), model(ids))
True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .registry import FAMILIES, family_for_model_type, family_of

__all__ = ["from_pretrained", "save_pretrained"]


def from_pretrained(path: str | Path, **overrides: Any) -> nn.Module:
    """The model stored at ``path`` in Hugging Face's layout, in eval mode.

    ``overrides`` set config fields that do not change shapes (``attn_kernel``, ``drop_rate``).
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return FAMILIES["gpt2"].load_pretrained(path, **overrides)  # a lone file or a hub name
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type", "gpt2")
    return family_for_model_type(model_type).load_pretrained(path, **overrides)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors``; return the directory."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return Path(family_of(model).save_pretrained(model, Path(directory)))
