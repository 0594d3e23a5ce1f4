"""Model families by name: declaring one registers it; build, find a preset, load weights.

A family is declared once, in its own file, by constructing a ``Family``: its name, config
class, model class, presets, Hugging Face layout (an ``HFLayout``, or None), the tokenizer its
small presets read and its instruct models' chat format. The declaration is the registration:
``FAMILIES`` holds every family declared, and the config class learns its family's name from it
(``LlamaConfig.family == "llama"``: the name is spelled once). ``FAMILIES`` finds the package's
own families on first use, by importing the modules that declare them (``weights`` for GPT-2,
every module of ``modern`` and ``newest``), so nothing lists them.

A run's ``config.json`` keeps ``config_to_dict(cfg)``, the config's fields plus a ``"family"``
key; ``build_model`` takes that dict back (a dict without a family key is GPT-2, as runs saved
before the key existed). ``preset_config`` finds a preset by name across every family; the CLI's
``--preset`` reads them from ``preset_names()``.

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
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from .checks import check_instance, check_str, did_you_mean, type_error, value_error

__all__ = ["Family", "FAMILIES", "family_of", "family_for_model_type", "config_to_dict",
           "config_from_dict", "build_model", "preset_config", "preset_names"]

# The modules that declare the package's own families; a package is imported with every module
# in it (``modern`` does that itself), so a new family file there needs no edit here.
_HOMES = ("gpt_components.weights", "gpt_components.modern", "gpt_components.newest")
_DECLARED: dict[str, Family] = {}


@dataclass(frozen=True, eq=False)
class Family:
    """One family, declared once: constructing it registers it in ``FAMILIES``."""

    name: str  # the "family" key of a saved config dict; the config class's ``family``
    config_class: type  # a frozen dataclass with the interface fields
    model_class: type[nn.Module]  # built as model_class(cfg)
    presets: Mapping[str, Any]  # name -> config
    layout: Any = None  # a pretrained.HFLayout: how Hugging Face stores it; None: no such layout
    tokenizer: str = "gpt2"  # what its small presets read (a `sources.load_tokenizer_spec`)
    chat_format: type | None = None  # its instruct models' chat format (modern.chat)

    def __post_init__(self) -> None:
        check_str("name", self.name)
        check_instance("config_class", self.config_class, type, "a class")
        check_instance("model_class", self.model_class, type, "an nn.Module subclass")
        check_instance("presets", self.presets, Mapping, "a mapping of names to configs")
        for preset, cfg in self.presets.items():
            if type(cfg) is not self.config_class:
                raise type_error("presets", f"presets[{preset!r}] must be a "
                                            f"{self.config_class.__name__}, got "
                                            f"{type(cfg).__name__}")
        before = _DECLARED.get(self.name)
        if before is not None and _where(before.config_class) != _where(self.config_class):
            raise value_error("name", f"family {self.name!r} is already declared by "
                                      f"{_where(before.config_class)}")
        self.config_class.family = self.name  # a class attribute: frozen instances keep it
        _DECLARED[self.name] = self

    @property
    def hf_model_types(self) -> tuple[str, ...]:
        """The ``config.json`` ``model_type`` values it reads."""
        return () if self.layout is None else (self.layout.model_type,)

    def load_pretrained(self, path: str | Path, **overrides: Any) -> nn.Module:
        """A directory in this family's Hugging Face layout, as a model in eval mode."""
        if self.layout is None:
            raise value_error("path", f"family {self.name!r} has no Hugging Face layout")
        files, config = self.layout.find(path)
        return self.layout.load(self.model_class, files, config, **overrides)

    def save_pretrained(self, model: nn.Module, directory: Path) -> Path:
        """``model`` written in this family's Hugging Face layout; the directory."""
        if self.layout is None:
            raise value_error("model", f"family {self.name!r} has no Hugging Face layout")
        return self.layout.save(model, Path(directory))


def _where(config_class: type) -> str:
    return f"{config_class.__module__}.{config_class.__qualname__}"


class _Families(Mapping[str, Family]):
    """Every declared family by name; the package's own are imported on first use."""

    def _all(self) -> dict[str, Family]:
        for home in _HOMES:
            importlib.import_module(home)  # declaring is registering: importing declares
        return _DECLARED

    def __getitem__(self, name: str) -> Family:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"FAMILIES({sorted(self._all())})"


FAMILIES: Mapping[str, Family] = _Families()


def family_of(cfg_or_model: Any) -> Family:
    """The family of a config, or of a model (through its ``cfg``)."""
    cfg = getattr(cfg_or_model, "cfg", cfg_or_model)
    for family in FAMILIES.values():
        if type(cfg) is family.config_class:
            return family
    raise type_error("cfg", f"cfg must be the config of a registered family ({sorted(FAMILIES)}),"
                            f" got {type(cfg).__name__}")


def family_for_model_type(model_type: str) -> Family:
    """The family that reads a Hugging Face ``config.json`` of this ``model_type``."""
    for family in FAMILIES.values():
        if model_type in family.hf_model_types:
            return family
    known = sorted(t for family in FAMILIES.values() for t in family.hf_model_types)
    raise value_error("model_type", f"config model_type must be one of {known}, got "
                                    f"{model_type!r}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of ``cfg``'s fields with its ``"family"``; ``config_from_dict`` inverts."""
    return {"family": family_of(cfg).name, **dataclasses.asdict(cfg)}


def config_from_dict(saved: dict[str, Any]) -> Any:
    """The config a ``config_to_dict`` dict describes (no ``"family"``: GPT-2)."""
    check_instance("saved", saved, dict, "a dict of config fields")
    fields = dict(saved)
    name = fields.pop("family", "gpt2")
    if name not in FAMILIES:
        raise value_error("family", f"family must be one of {sorted(FAMILIES)}, got {name!r}"
                                    f"{did_you_mean(name, FAMILIES)}")
    config_class = FAMILIES[name].config_class
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise value_error("saved", f"saved config has fields {unknown} that "
                                   f"{config_class.__name__} does not have")
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
        if isinstance(name, str) and name in family.presets:
            return family.config_class.from_name(name, **overrides)
    check_str("preset", name)
    misspelt = did_you_mean(name, preset_names(), cutoff=0.8)
    if misspelt:  # one letter or two off: the name meant, not a list to read through
        raise value_error("preset", f"preset must be the name of a preset, got {name!r}{misspelt}")
    smallest = ", ".join(min(f.presets, key=lambda p: f.presets[p].emb_dim * f.presets[p].n_layers)
                         for f in FAMILIES.values() if f.presets)
    raise value_error("preset", f"preset must be one of the presets (the smallest of each family: "
                                f"{smallest}; preset_names() lists all), got {name!r}"
                                f"{did_you_mean(name, preset_names())}")
