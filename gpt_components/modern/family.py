"""A model family as the registry sees it: its config class, model class, presets, weights.

A family file (``llama.py``, ``qwen3.py``) declares one ``Family``;
``gpt_components.machinery.registry`` lists them. ``load_pretrained(path, **overrides)`` and
``save_pretrained(model, directory)`` read and write Hugging Face's layout for the
``model_type`` values in ``hf_model_types``.

>>> from gpt_components.modern import llama
>>> llama.FAMILY.name, llama.FAMILY.hf_model_types
('llama', ('llama',))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["Family"]


@dataclass(frozen=True)
class Family:
    """Everything the registry needs to build, name, load and save one family's models."""

    name: str  # the "family" key of a saved config dict
    config_class: type  # a frozen dataclass with the interface fields
    model_class: type[nn.Module]  # built as model_class(cfg)
    presets: Mapping[str, Any] = field(default_factory=dict)  # name -> config
    hf_model_types: tuple[str, ...] = ()  # config.json "model_type" values it reads
    load_pretrained: Callable[..., nn.Module] | None = None  # (path, **overrides) -> model
    save_pretrained: Callable[[nn.Module, Path], Path] | None = None  # (model, dir) -> dir
