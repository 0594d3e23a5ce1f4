"""Model families by name: build a model from a saved config, find a preset, load weights.

Every family (GPT-2's ``GPTModel`` and the modern decoders in ``gpt_components.modern``) is a
``Family`` listed in ``FAMILIES``. A run's ``config.json`` keeps ``config_to_dict(cfg)``, the
config's fields plus a ``"family"`` key; ``build_model`` takes that dict back (a dict without a
family key is GPT-2, as runs saved before the key existed). ``preset_config`` finds a preset
by name across every family; the CLI's ``--preset`` reads them from ``preset_names()``.

>>> cfg = preset_config("llama3-nano", vocab_size=100)
>>> saved = config_to_dict(cfg)
>>> saved["family"], type(build_model(saved)).__name__
('llama', 'DecoderModel')
>>> type(build_model({"vocab_size": 100, "context_length": 8, "emb_dim": 8, "n_heads": 2,
...                   "n_layers": 1})).__name__
'GPTModel'
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..model import MODEL_PRESETS, GPTConfig, GPTModel
from ..modern import deepseek_v3, gemma3, llama, qwen3, qwen3_moe
from ..modern.family import Family

__all__ = ["Family", "FAMILIES", "family_of", "family_for_model_type", "config_to_dict",
           "config_from_dict", "build_model", "preset_config", "preset_names"]


def _load_gpt2(path: Any, **overrides: Any) -> nn.Module:
    from ..weights import load_pretrained

    return load_pretrained(path, **overrides)


def _save_gpt2(model: nn.Module, directory: Any) -> Any:
    from ..weights import save_pretrained

    return save_pretrained(model, directory)


GPT2 = Family(name="gpt2", config_class=GPTConfig, model_class=GPTModel, presets=MODEL_PRESETS,
              hf_model_types=("gpt2",), load_pretrained=_load_gpt2, save_pretrained=_save_gpt2)

FAMILIES: dict[str, Family] = {family.name: family
                               for family in (GPT2, llama.FAMILY, qwen3.FAMILY, gemma3.FAMILY,
                                              qwen3_moe.FAMILY, deepseek_v3.FAMILY)}


def family_of(cfg_or_model: Any) -> Family:
    """The family of a config, or of a model (through its ``cfg``)."""
    cfg = getattr(cfg_or_model, "cfg", cfg_or_model)
    for family in FAMILIES.values():
        if type(cfg) is family.config_class:
            return family
    raise TypeError(f"cfg must be the config of a registered family ({sorted(FAMILIES)}), got "
                    f"{type(cfg).__name__}")


def family_for_model_type(model_type: str) -> Family:
    """The family that reads a Hugging Face ``config.json`` of this ``model_type``."""
    for family in FAMILIES.values():
        if model_type in family.hf_model_types:
            return family
    known = sorted(t for family in FAMILIES.values() for t in family.hf_model_types)
    raise ValueError(f"config model_type must be one of {known}, got {model_type!r}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of ``cfg``'s fields with its ``"family"``; ``config_from_dict`` inverts."""
    return {"family": family_of(cfg).name, **dataclasses.asdict(cfg)}


def config_from_dict(saved: dict[str, Any]) -> Any:
    """The config a ``config_to_dict`` dict describes (no ``"family"``: GPT-2)."""
    if not isinstance(saved, dict):
        raise TypeError(f"saved must be a dict of config fields, got {type(saved).__name__}")
    fields = dict(saved)
    name = fields.pop("family", "gpt2")
    if name not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {name!r}")
    config_class = FAMILIES[name].config_class
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"saved config has fields {unknown} that {config_class.__name__} does "
                         "not have")
    return config_class(**fields)


def build_model(cfg: Any) -> nn.Module:
    """A freshly initialised model of ``cfg`` (a config or a ``config_to_dict`` dict)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    return family_of(cfg).model_class(cfg)


def preset_names() -> list[str]:
    """Every preset of every family, sorted."""
    return sorted(name for family in FAMILIES.values() for name in family.presets)


def preset_config(name: str, **overrides: Any) -> Any:
    """The preset ``name`` of whichever family has it, with fields overridden by keyword."""
    for family in FAMILIES.values():
        if name in family.presets:
            return family.config_class.from_name(name, **overrides)
    raise ValueError(f"preset must be one of {preset_names()}, got {name!r}")
