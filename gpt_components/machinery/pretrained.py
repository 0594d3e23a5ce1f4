"""Weights in Hugging Face's layout, for every family: one mechanism, one ``HFLayout`` each.

A family's ``HFLayout`` says how its models are stored as ``transformers`` stores them: the
``model_type`` and architecture in ``config.json``, two functions between ``config.json`` and
its config, and its tensor names (``names``: our module path, or a whole tensor name, to
theirs; ``{i}`` is a block's index, ``{e}`` an expert's). Two transforms cover the layouts met
so far: several of our tensors mapped to one of theirs are fused along the first axis (GPT-2's
``c_attn`` holds ``W_query``, ``W_key``, ``W_value``), and ``transposed`` names the tensors kept
transposed (GPT-2's ``Conv1D``). Experts stacked into one tensor of ours are seen one slice per
expert, under per-expert names (``_tensors``). Everything else is this module's, the same for
every family:

- ``from_pretrained(path)`` reads ``config.json``'s ``model_type``, checks every tensor's name,
  shape and dtype against the model from the file headers alone (a float16 tensor among float32
  ones, or a tensor of another shape, is refused naming it and its file before a byte of
  weights is read), then streams the weights in, one tensor at a time, into a model built on the
  meta device, so they are never held twice; the model is in eval mode, in the file's dtype;
- ``save_pretrained(model, directory)`` writes ``config.json`` and ``model.safetensors`` that
  ``transformers.AutoModelForCausalLM.from_pretrained(directory)`` loads to the same logits.

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

import dataclasses
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .checks import check_instance, type_error, value_error
from .registry import FAMILIES, family_for_model_type, family_of
from .tensor_files import TensorEntry, safetensors_header, stream_safetensors

__all__ = ["HFLayout", "from_pretrained", "save_pretrained", "read_config_json"]


def _never(hf_name: str) -> bool:
    return False


def _same(key: str) -> str | None:
    return key


def _no_zeros(cfg: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    return {}


def read_config_json(file: str | Path) -> dict[str, Any]:
    """A ``config.json`` as a dict; a file that is not a JSON object is named, with why."""
    file = Path(file)
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise value_error("path", f"{str(file)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise value_error("path", f"{str(file)!r} must hold a JSON object, got "
                                  f"{type(config).__name__}")
    return config


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint holds: parameters (a tied one once) and persistent buffers; a module
    that stacks several experts' weights into one tensor lends each expert's slice instead,
    under its per-expert name (``unstacked()``, e.g. ``experts.3.fc1.weight`` -> ``fc1[3]``),
    and restacks those names when ``load_state_dict`` reads them."""
    persistent = set(model.state_dict(keep_vars=True))
    tensors = {**dict(model.named_parameters()),
               **{name: b for name, b in model.named_buffers() if name in persistent}}
    for prefix, module in model.named_modules():
        if callable(getattr(module, "unstacked", None)):
            for name, _ in module.named_parameters(recurse=False):
                del tensors[f"{prefix}.{name}" if prefix else name]
            tensors.update({f"{prefix}.{name}" if prefix else name: view
                            for name, view in module.unstacked().items()})
    return tensors


def _ties(model: nn.Module) -> dict[str, str]:
    """Each tied parameter's second name -> its first (a tied head -> the embedding)."""
    first: dict[int, str] = {}
    ties = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            ties[name] = first[id(param)]
        else:
            first[id(param)] = name
    return ties


@dataclass(frozen=True)
class HFLayout:
    """How one family's models are stored in Hugging Face's layout."""

    model_type: str  # config.json "model_type"
    architecture: str  # config.json "architectures"[0], the transformers class
    names: Mapping[str, str]  # our module path or tensor name -> theirs; {i} block, {e} expert
    config_from_hf: Callable[[Mapping[str, Any]], Any]  # config.json dict -> our config
    config_to_hf: Callable[[Any], dict[str, Any]]  # our config -> config.json dict
    title: str = ""  # the family's name in messages ("GPT-2")
    transposed: Callable[[str], bool] = _never  # their tensors stored transposed (Conv1D)
    canonical: Callable[[str], str | None] = _same  # a file's key as `names` spells it; None: skip
    stand_ins: Mapping[str, str] = field(default_factory=dict)  # may be absent -> read instead
    zeros: Callable[[Any], dict[str, tuple[tuple[int, ...], str]]] = _no_zeros  # see below
    dtype: torch.dtype | None = None  # the loaded model's dtype; None: the file's
    on_meta: bool = True  # build the model on the meta device (its buffers need no data)
    locate: Callable[[str | Path], tuple[list[Path], dict[str, Any]]] | None = None  # see find

    # ``zeros(cfg)``: tensors transformers' model has and ``cfg`` leaves out (GPT-2 without
    # query/key/value biases), name -> (shape, why a nonzero one is refused). Saved as zeros;
    # read only to check that they are zero.

    def find(self, path: str | Path) -> tuple[list[Path], dict[str, Any]]:
        """The safetensors files and ``config.json`` dict at ``path``: a model directory, or
        whatever else ``locate`` reads (GPT-2: a lone file, a hub name)."""
        if self.locate is not None:
            return self.locate(path)
        check_instance("path", path, (str, Path), "a str or Path")
        directory = Path(path)
        return weight_files(directory), read_config_json(directory / "config.json")

    def hf_name(self, name: str) -> str:
        """Their name for one of our tensors, e.g. ``trf_blocks.0.att.W_query.weight``."""
        index = expert = ""
        block = re.fullmatch(r"trf_blocks\.(\d+)\.(.+)", name)
        if block:
            name, index = f"trf_blocks.{{i}}.{block.group(2)}", block.group(1)
        experts = re.fullmatch(r"(.+\.experts)\.(\d+)(\..+)", name)
        if experts:
            name, expert = f"{experts.group(1)}.{{e}}{experts.group(3)}", experts.group(2)
        module, _, leaf = name.rpartition(".")
        if name in self.names:  # a tensor renamed as a whole
            return self.names[name].format(i=index, e=expert)
        if module not in self.names:
            raise value_error("name", f"tensor {name!r} has no Hugging Face name in the "
                                      f"{self.model_type} layout (merge LoRA adapters before "
                                      "saving)")
        return f"{self.names[module].format(i=index, e=expert)}.{leaf}"

    def places(self, model: nn.Module) -> dict[str, list[tuple[str, torch.Tensor]]]:
        """Their name -> our ``(name, tensor)`` pairs it holds, fused in that order."""
        order = {key: n for n, key in enumerate(self.names)}
        places: dict[str, list[tuple[str, torch.Tensor]]] = {}
        for name, tensor in _tensors(model).items():
            places.setdefault(self.hf_name(name), []).append((name, tensor))
        for parts in places.values():
            if len(parts) > 1:  # fused: in the order `names` lists them
                parts.sort(key=lambda part: order.get(_pattern(part[0]), 0))
        return places

    def export(self, hf: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """Their tensor from ours: fused along the first axis, transposed if they keep it so."""
        tensor = torch.cat(parts) if len(parts) > 1 else parts[0]
        return tensor.t() if self.transposed(hf) else tensor

    def split(self, hf: str, tensor: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
        """Ours from theirs: ``export`` undone."""
        tensor = tensor.t() if self.transposed(hf) else tensor
        return tensor.split(sizes) if len(sizes) > 1 else (tensor,)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model``'s tensors named, fused and shaped as transformers' model holds them."""
        state = {hf: self.export(hf, [t.detach() for _, t in parts])
                 for hf, parts in self.places(model).items()}
        like = next(iter(state.values()))
        for hf, (shape, _) in self.zeros(model.cfg).items():
            state[hf] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return state

    def check(self, model: nn.Module, found: Mapping[str, TensorEntry | torch.Tensor],
              source: Callable[[str], str]) -> dict[str, str]:
        """Every tensor ``model`` needs in ``found`` (their names, already ``canonical``), of
        its shape and of one floating-point dtype; nothing left over. Returns the stand-ins
        used (absent name -> the one read instead). Raises naming the first tensor amiss."""
        used, stand_ins = set(), {}
        ties = {self.hf_name(n) for n in _ties(model)}
        for hf, parts in self.places(model).items():
            key = hf
            if key not in found and self.stand_ins.get(hf) in found:
                key = stand_ins[hf] = self.stand_ins[hf]
            if key not in found:
                raise value_error("path", f"{source(hf)} has no tensor {hf!r} (for "
                                          f"{parts[0][0]!r})")
            entry = found[key]
            expected = tuple(self.export(hf, [t.to("meta") for _, t in parts]).shape)
            if tuple(entry.shape) != expected:
                raise value_error("path", f"{source(key)} tensor {key!r} has shape "
                                          f"{tuple(entry.shape)}, but {parts[0][0]!r} needs "
                                          f"{expected}: the config does not match")
            if parts[0][1].is_floating_point() and not entry.dtype.is_floating_point:
                raise value_error("path", f"{source(key)} tensor {key!r} has dtype "
                                          f"{entry.dtype}, but {parts[0][0]!r} needs "
                                          f"floating-point weights ({parts[0][1].dtype})")
            used.add(key)
        zeros = self.zeros(model.cfg)
        extra = sorted(set(found) - used - set(zeros) - ties)
        if extra:
            raise value_error("path", f"{source(extra[0])} has tensor {extra[0]!r}, which the "
                                      "model has no place for: the config does not match")
        floats = [(key, found[key].dtype) for key in sorted(used)
                  if found[key].dtype.is_floating_point]
        for key, dtype in floats:
            if dtype != floats[0][1]:
                raise value_error("path", f"{source(key)} tensor {key!r} has dtype {dtype}, but "
                                          f"{floats[0][0]!r} has {floats[0][1]}: a checkpoint "
                                          "holds one precision (convert the file)")
        for key, (_, why) in zeros.items():
            tensor = found.get(key)
            if isinstance(tensor, torch.Tensor) and bool(tensor.any()):
                raise value_error("path", f"{source(key)} tensor {key!r} {why}")
        return stand_ins

    def read_state_dict(self, model: nn.Module, state: Mapping[str, torch.Tensor],
                        source: str = "state_dict") -> nn.Module:
        """Copy a checkpoint in their layout into ``model``'s weights; returns ``model``.

        Every tensor is checked first (``check``); weights of another floating-point precision
        are converted to the model's with a ``UserWarning`` that says so.
        """
        found = {}
        for key, tensor in state.items():
            name = self.canonical(key)
            if name is not None:
                found[name] = tensor
        stand_ins = self.check(model, found, lambda key: source)
        converted = set()
        with torch.no_grad():
            for hf, parts in self.places(model).items():
                tensor = found[stand_ins.get(hf, hf)]
                pieces = self.split(hf, tensor, [t.shape[0] for _, t in parts])
                for (_, place), piece in zip(parts, pieces, strict=True):
                    if piece.dtype != place.dtype:
                        converted.add(f"{piece.dtype} to {place.dtype}")
                    place.copy_(piece)
        if converted:
            warnings.warn(f"converted {self.title or self.model_type} weights from "
                          f"{', '.join(sorted(converted))}", UserWarning, stacklevel=2)
        return model

    def load(self, model_class: type[nn.Module], files: Iterable[Path], config: Mapping[str, Any],
             **overrides: Any) -> nn.Module:
        """The model that ``config`` (a ``config.json`` dict) and the safetensors ``files``
        describe, checked from the headers first, then streamed in; in eval mode."""
        cfg = self.config_from_hf(config)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cfg)})
        if unknown:
            raise type_error("overrides", f"overrides must be {type(cfg).__name__} fields, got "
                                          f"{unknown}")
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        files = list(files)
        headers = {file: safetensors_header(file) for file in files}
        found, file_of = {}, {}
        for file, header in headers.items():
            for key, entry in header.items():
                name = self.canonical(key)
                if name is not None:
                    found[name], file_of[name] = entry, file
        if self.on_meta:
            with torch.device("meta"):
                model = model_class(cfg).eval()  # eval mode picks the weights' decoding layout
        else:  # a model whose buffers need real data (GPT-2's causal masks): filled in place
            model = model_class(cfg).eval()
        where = (f"file {str(files[0])!r}" if len(files) == 1
                 else f"checkpoint {str(files[0].parent)!r}")  # what holds none of a tensor
        stand_ins = self.check(model, found, lambda key: f"file {str(file_of[key])!r}"
                               if key in file_of else where)
        floats = [entry.dtype for entry in found.values() if entry.dtype.is_floating_point]
        dtype = self.dtype or (floats[0] if floats else torch.get_default_dtype())
        if not self.on_meta:
            model.to(dtype)
        places, zeros, ties = self.places(model), self.zeros(cfg), _ties(model)
        wanted: dict[str, list[str]] = {}
        for hf in places:
            wanted.setdefault(stand_ins.get(hf, hf), []).append(hf)
        state: dict[str, torch.Tensor] = {}
        for file in files:
            for key, tensor in stream_safetensors(file):  # one at a time: never a second copy
                key = self.canonical(key) or ""
                if key in zeros and bool(tensor.any()):
                    raise value_error("path", f"file {str(file)!r} tensor {key!r} {zeros[key][1]}")
                for hf in wanted.get(key, ()):
                    pieces = self.split(hf, tensor, [t.shape[0] for _, t in places[hf]])
                    for (name, place), piece in zip(places[hf], pieces, strict=True):
                        if self.on_meta:
                            state[name] = self._placed(piece.to(dtype), place)
                        else:
                            with torch.no_grad():
                                place.copy_(piece)
        if self.on_meta:
            model.load_state_dict(state, strict=False, assign=True)
            for name, first in ties.items():  # a tied head is the embedding again
                module, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(module), leaf, model.get_parameter(first))
        if floats and floats[0] != dtype:
            warnings.warn(f"converted {self.title or self.model_type} weights from {floats[0]} "
                          f"to {dtype}", UserWarning, stacklevel=3)
        return model.eval()

    @staticmethod
    def _placed(piece: torch.Tensor, place: torch.Tensor) -> torch.Tensor:
        """``piece`` laid out as ``place`` is (the layout eval mode chose for decoding)."""
        if piece.stride() == place.stride():
            return piece
        return torch.empty_strided(place.shape, place.stride(), dtype=piece.dtype).copy_(piece)

    def save(self, model: nn.Module, directory: Path) -> Path:
        """``config.json`` + ``model.safetensors`` as transformers writes them; the directory."""
        state = {k: v.cpu().contiguous() for k, v in self.state_dict(model).items()}
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config_to_hf(model.cfg)
        dtypes = {t.dtype for t in state.values()}
        if len(dtypes) == 1 and "dtype" not in config:
            config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n",
                                               encoding="utf-8")
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory


def _pattern(name: str) -> str:
    """A tensor name with its block and expert indices as ``names`` spells them."""
    name = re.sub(r"^trf_blocks\.\d+\.", "trf_blocks.{i}.", name)
    return re.sub(r"\.experts\.\d+\.", ".experts.{e}.", name)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory: one, or the shards its index names."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_config_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise value_error("path", f"{str(index)!r} has no weight_map object")
        return [directory / name for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"path {str(directory)!r} has no model.safetensors or "
                            "model.safetensors.index.json")


def from_pretrained(path: str | Path, **overrides: Any) -> nn.Module:
    """The model stored at ``path`` in Hugging Face's layout, in eval mode.

    ``overrides`` set config fields that do not change shapes (``attn_kernel``, ``drop_rate``).
    A path without ``config.json`` (a lone GPT-2 file, a GPT-2 hub name) goes to GPT-2's family.
    """
    check_instance("path", path, (str, Path), "a str or Path")
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return FAMILIES["gpt2"].load_pretrained(path, **overrides)
    model_type = read_config_json(config_file).get("model_type", "gpt2")
    return family_for_model_type(model_type).load_pretrained(path, **overrides)


def save_pretrained(model: nn.Module, directory: str | Path) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors``; return the directory."""
    check_instance("model", model, nn.Module, "a torch.nn.Module")
    check_instance("directory", directory, (str, Path), "a str or Path")
    return family_of(model).save_pretrained(model, Path(directory))
