"""Hugging Face's layout for the modern decoder families: ``config.json`` and safetensors.

A family gives an ``HFLayout``: its ``model_type``, its architecture name, its weight names
(``names``: our module path -> theirs, ``{i}`` for the block index, ``{e}`` for an expert's;
``.weight``/``.bias`` carry over) and two functions between ``config.json`` and its config.
``decoder_family`` turns that into a registry ``Family`` whose ``load_pretrained`` builds the
model on the meta device and assigns each tensor as it is read from the safetensors file(s), so
the weights are never held twice, in the file's dtype; ``save_pretrained`` writes what
``transformers`` loads.

``rope_from_hf`` reads both spellings of RoPE settings: ``rope_parameters`` (transformers 5)
and ``rope_theta`` + ``rope_scaling`` (the published checkpoints).

>>> rope_from_hf({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
(1000000.0, None)
>>> rope_from_hf({"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
...     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
...     "original_max_position_embeddings": 8192}})[1].factor
32.0
>>> from gpt_components.modern.llama import LLAMA_HF_NAMES
>>> hf_param_name(LLAMA_HF_NAMES, "trf_blocks.3.ff.fc1.weight")
'model.layers.3.mlp.gate_proj.weight'
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..machinery.tensor_files import TensorFileError, _header_problem
from .family import Family
from .rope import Llama3RopeScaling

__all__ = ["HFLayout", "decoder_family", "stream_safetensors", "rope_from_hf", "rope_to_hf",
           "decoder_fields_from_hf", "decoder_fields_to_hf", "hf_param_name"]


@dataclass(frozen=True)
class HFLayout:
    """How one family's models are stored in Hugging Face's layout."""

    model_type: str  # config.json "model_type"
    architecture: str  # config.json "architectures"[0], the transformers class
    names: Mapping[str, str]  # our module path -> HF module path, "{i}" = block index
    config_from_hf: Callable[[Mapping[str, Any]], Any]  # config.json dict -> our config
    config_to_hf: Callable[[Any], dict[str, Any]]  # our config -> config.json dict


def rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, Llama3RopeScaling | None]:
    """``(rope_theta, rope_scaling)`` from either spelling of a config.json's RoPE settings."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    rope = scaling or params
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"config rope_type must be 'default' or 'llama3', got {kind!r}")
    return float(theta), Llama3RopeScaling(
        factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_context_length=int(rope["original_max_position_embeddings"]))


def rope_to_hf(theta: float, scaling: Llama3RopeScaling | None) -> dict[str, Any]:
    """The published spelling (``rope_theta``, ``rope_scaling``), read by transformers 4 and 5."""
    if scaling is None:
        return {"rope_theta": theta, "rope_scaling": None}
    return {"rope_theta": theta, "rope_scaling": {
        "rope_type": "llama3", "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor, "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_context_length}}


def decoder_fields_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The ``DecoderConfig`` fields of a Llama-style ``config.json`` (Llama, Qwen3, ...)."""
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config hidden_act must be 'silu', got {hf['hidden_act']!r}")
    if hf.get("mlp_bias", False):
        raise ValueError("config mlp_bias must be false: the feed-forward has no biases")
    n_heads = hf["num_attention_heads"]
    theta, scaling = rope_from_hf(hf)
    return {
        "vocab_size": hf["vocab_size"],
        "context_length": hf["max_position_embeddings"],
        "emb_dim": hf["hidden_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_heads": n_heads,
        "n_kv_heads": hf.get("num_key_value_heads") or n_heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // n_heads,
        "hidden_dim": hf["intermediate_size"],
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "rope_theta": theta,
        "rope_scaling": scaling,
        "attention_bias": bool(hf.get("attention_bias", False)),
        "tie_weights": bool(hf.get("tie_word_embeddings", False)),
        "drop_rate": float(hf.get("attention_dropout", 0.0) or 0.0),
    }


def decoder_fields_to_hf(cfg: Any, layout: HFLayout) -> dict[str, Any]:
    """A Llama-style ``config.json`` for ``cfg``."""
    return {
        "architectures": [layout.architecture],
        "model_type": layout.model_type,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.context_length,
        "hidden_size": cfg.emb_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.hidden_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        **rope_to_hf(cfg.rope_theta, cfg.rope_scaling),
        "attention_bias": cfg.attention_bias,
        "mlp_bias": False,
        "attention_dropout": cfg.drop_rate,
        "tie_word_embeddings": cfg.tie_weights,
    }


def hf_param_name(names: Mapping[str, str], name: str) -> str:
    """The HF name of one of our parameters, e.g. ``trf_blocks.0.att.W_query.weight``."""
    module, _, leaf = name.rpartition(".")
    match = re.fullmatch(r"trf_blocks\.(\d+)\.(.+)", module)
    key, index = (f"trf_blocks.{{i}}.{match.group(2)}", match.group(1)) if match else (module, "")
    expert = re.fullmatch(r"(.+\.experts)\.(\d+)(\..+)", key)  # "{e}": a mixture's expert
    if expert:
        key, e = f"{expert.group(1)}.{{e}}{expert.group(3)}", expert.group(2)
    else:
        e = ""
    if f"{key}.{leaf}" in names:  # a tensor renamed as a whole (a buffer)
        return names[f"{key}.{leaf}"].format(i=index, e=e)
    if key not in names:
        raise ValueError(f"parameter {name!r} has no Hugging Face name in this family's layout "
                         "(merge LoRA adapters before saving)")
    return f"{names[key].format(i=index, e=e)}.{leaf}"


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """What a checkpoint holds: the parameters and the persistent buffers (a router's bias)."""
    persistent = set(model.state_dict(keep_vars=True))
    return [*model.named_parameters(),
            *((name, b) for name, b in model.named_buffers() if name in persistent)]


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def stream_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for each tensor of a safetensors file, read straight into its memory.

    The file is read with plain reads into each tensor's own storage, one tensor at a time (no
    memory map, whose touched pages would count as a second copy while the file is open).
    The format: an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
    byte offsets into the data that follows), the data.
    """
    path = Path(path)
    problem = _header_problem(path)  # a pickle or zip under this name is named, never opened
    if problem is not None:
        raise TensorFileError(f"{str(path)!r} is not a safetensors file: {problem}; give the "
                              "model.safetensors that save_pretrained, transformers or "
                              "`hf download` wrote")
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            header = json.loads(f.read(size)) if 0 < size < 100_000_000 else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
        if not isinstance(header, dict):
            raise ValueError(f"{str(path)!r} is not a safetensors file (no readable header)")
        header.pop("__metadata__", None)
        start = 8 + size
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{str(path)!r}: tensor {name!r} has dtype {info['dtype']}, "
                                 f"which this reader does not know")
            dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            count = math.prod(info["shape"])
            if end - begin != count * dtype.itemsize:
                raise ValueError(f"{str(path)!r}: tensor {name!r} has {end - begin} bytes for "
                                 f"shape {info['shape']}")
            raw = torch.empty(end - begin, dtype=torch.uint8)  # the tensor's own memory
            f.seek(start + begin)
            if count and f.readinto(raw.numpy()) != end - begin:
                raise TensorFileError(f"{str(path)!r} is truncated or corrupted (tensor "
                                      f"{name!r} is incomplete): download or write it again")
            tensor = raw.view(dtype).reshape(info["shape"])
            yield name, tensor


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    raise FileNotFoundError(f"path {str(directory)!r} has no model.safetensors or "
                            "model.safetensors.index.json")


def _load(layout: HFLayout, model_class: type[nn.Module], path: str | Path,
          **overrides: Any) -> nn.Module:
    directory = Path(path)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    cfg = layout.config_from_hf(config)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    with torch.device("meta"):
        model = model_class(cfg).eval()  # eval mode chooses the decoding layout of the weights
    wanted = {hf_param_name(layout.names, name): name
              for name, _ in _tensors(model)}  # a tied head appears once, as tok_emb
    places = dict(_tensors(model))
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(directory):
        for key, tensor in stream_safetensors(file):  # one tensor at a time: no second copy
            if key not in wanted:
                if key == "lm_head.weight" and cfg.tie_weights:
                    continue  # some tied checkpoints store the head as well
                raise ValueError(f"checkpoint tensor {key!r} has no place in the model: "
                                 "config.json does not match the weights")
            place = places[wanted[key]]
            expected = tuple(place.shape)
            if tuple(tensor.shape) != expected:
                raise ValueError(f"checkpoint tensor {key!r} has shape "
                                 f"{tuple(tensor.shape)}, the config needs {expected}")
            if tensor.stride() != place.stride():  # laid out as it is read: one copy at a time
                tensor = torch.empty_strided(place.shape, place.stride(),
                                             dtype=tensor.dtype).copy_(tensor)
            state[wanted[key]] = tensor
    missing = sorted(hf for hf, ours in wanted.items() if ours not in state)
    if missing:
        raise ValueError(f"checkpoint has no tensor {missing[0]!r}")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_weights:
        model.out_head.weight = model.tok_emb.weight
    return model.eval()


def _save(layout: HFLayout, model: nn.Module, directory: str | Path) -> Path:
    state = {hf_param_name(layout.names, name): param.detach().cpu().contiguous()
             for name, param in _tensors(model)}  # a tied head is stored once
    dtypes = {t.dtype for t in state.values()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = layout.config_to_hf(model.cfg)
    if len(dtypes) == 1:
        config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n",
                                           encoding="utf-8")
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def decoder_family(name: str, config_class: type, model_class: type[nn.Module],
                   presets: Mapping[str, Any], layout: HFLayout) -> Family:
    """A registry ``Family`` whose weights are stored in ``layout``."""
    return Family(
        name=name, config_class=config_class, model_class=model_class, presets=presets,
        hf_model_types=(layout.model_type,),
        load_pretrained=lambda path, **overrides: _load(layout, model_class, path, **overrides),
        save_pretrained=lambda model, directory: _save(layout, model, directory))
