"""GPT-2 weights in and out (chapter 5): Hugging Face's layout to ``GPTModel`` and back.

OpenAI's GPT-2 checkpoints, as Hugging Face ``transformers`` stores them, name the book's parts
differently (``wte`` for ``tok_emb``, ``h.N.attn.c_attn`` for ``W_query``/``W_key``/``W_value``
fused into one matrix) and keep linear weights as ``Conv1D`` matrices, transposed relative to
``nn.Linear``. ``BOOK_TO_HF`` is the one mapping between the two; ``load_hf_state_dict`` and
``to_hf_state_dict`` apply it both ways, ``save_pretrained`` writes ``config.json`` +
``model.safetensors`` as ``transformers`` does, and ``load_pretrained`` (also
``GPTModel.from_pretrained``) reads such a directory, a lone ``model.safetensors``, or downloads
a GPT-2 size by name when ``huggingface_hub`` and a network are there.

>>> hf_name("trf_blocks.3.att.W_key.bias")
'transformer.h.3.attn.c_attn.bias'
>>> hf_name("out_head.weight")
'lm_head.weight'
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .machinery.tensor_files import read_safetensors
from .model import GPTConfig, GPTModel

__all__ = [
    "BOOK_TO_HF",
    "WeightsNotFoundError",
    "hf_name",
    "load_hf_state_dict",
    "to_hf_state_dict",
    "config_from_hf",
    "hf_config",
    "save_pretrained",
    "load_pretrained",
    "download_command",
    "GPT2_NAMES",
]

# Book parameter name -> Hugging Face GPT2LMHeadModel name; "{i}" is the block index.
BOOK_TO_HF: dict[str, str] = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "trf_blocks.{i}.norm1.scale": "transformer.h.{i}.ln_1.weight",
    "trf_blocks.{i}.norm1.shift": "transformer.h.{i}.ln_1.bias",
    "trf_blocks.{i}.att.W_query.weight": "transformer.h.{i}.attn.c_attn.weight",
    "trf_blocks.{i}.att.W_key.weight": "transformer.h.{i}.attn.c_attn.weight",
    "trf_blocks.{i}.att.W_value.weight": "transformer.h.{i}.attn.c_attn.weight",
    "trf_blocks.{i}.att.W_query.bias": "transformer.h.{i}.attn.c_attn.bias",
    "trf_blocks.{i}.att.W_key.bias": "transformer.h.{i}.attn.c_attn.bias",
    "trf_blocks.{i}.att.W_value.bias": "transformer.h.{i}.attn.c_attn.bias",
    "trf_blocks.{i}.att.out_proj.weight": "transformer.h.{i}.attn.c_proj.weight",
    "trf_blocks.{i}.att.out_proj.bias": "transformer.h.{i}.attn.c_proj.bias",
    "trf_blocks.{i}.norm2.scale": "transformer.h.{i}.ln_2.weight",
    "trf_blocks.{i}.norm2.shift": "transformer.h.{i}.ln_2.bias",
    "trf_blocks.{i}.ff.layers.0.weight": "transformer.h.{i}.mlp.c_fc.weight",
    "trf_blocks.{i}.ff.layers.0.bias": "transformer.h.{i}.mlp.c_fc.bias",
    "trf_blocks.{i}.ff.layers.2.weight": "transformer.h.{i}.mlp.c_proj.weight",
    "trf_blocks.{i}.ff.layers.2.bias": "transformer.h.{i}.mlp.c_proj.bias",
    "final_norm.scale": "transformer.ln_f.weight",
    "final_norm.shift": "transformer.ln_f.bias",
    "out_head.weight": "lm_head.weight",
}
# Which third of the fused c_attn projection holds each of the book's matrices.
_QKV_PART = {"W_query": 0, "W_key": 1, "W_value": 2}
# Causal-mask buffers some checkpoints carry; they hold no weights.
_HF_BUFFERS = re.compile(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)")
# The four published sizes: (emb_dim, n_layers) -> (hub repository, n_heads).
_GPT2_SIZES = {
    (768, 12): ("openai-community/gpt2", 12),
    (1024, 24): ("openai-community/gpt2-medium", 16),
    (1280, 36): ("openai-community/gpt2-large", 20),
    (1600, 48): ("openai-community/gpt2-xl", 25),
}
_HUB_NAMES = {
    "gpt2": "openai-community/gpt2",
    "gpt2-small": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}


# The config.json fields that fix a GPT-2's shapes.
_HF_REQUIRED = ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer")


# The names load_pretrained downloads (or finds in the hub's cache).
GPT2_NAMES = tuple(_HUB_NAMES)


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """No weights at the given path, and none could be downloaded."""


def _pattern(book_name: str) -> tuple[str, str | None]:
    """The ``BOOK_TO_HF`` key for a concrete name, and its block index (None outside blocks)."""
    match = re.fullmatch(r"trf_blocks\.(\d+)\.(.+)", book_name)
    if match:
        return f"trf_blocks.{{i}}.{match.group(2)}", match.group(1)
    return book_name, None


def hf_name(book_name: str) -> str:
    """The Hugging Face name of one of the book's parameters."""
    if not isinstance(book_name, str):
        raise TypeError(f"book_name must be a str, got {type(book_name).__name__}")
    key, block = _pattern(book_name)
    if key not in BOOK_TO_HF:
        raise ValueError(f"book_name must name a GPTModel parameter, got {book_name!r}")
    return BOOK_TO_HF[key].format(i=block)


def _is_conv1d(hf: str) -> bool:
    return hf.endswith(".weight") and (".attn." in hf or ".mlp." in hf)


def _qkv_part(book_name: str) -> int | None:
    match = re.search(r"\.att\.(W_query|W_key|W_value)\.", book_name)
    return _QKV_PART[match.group(1)] if match else None


def _hf_shape(book_name: str, shape: torch.Size) -> tuple[int, ...]:
    """The shape of the HF tensor that holds a book parameter of ``shape``."""
    hf_shape = tuple(shape)
    if _qkv_part(book_name) is not None:
        hf_shape = (3 * hf_shape[0], *hf_shape[1:])  # fused along the out dimension
    return hf_shape[::-1] if _is_conv1d(hf_name(book_name)) else hf_shape


def _from_hf(book_name: str, tensor: torch.Tensor) -> torch.Tensor:
    """An HF tensor converted to the book's layout: Conv1D transposed, c_attn split."""
    part = _qkv_part(book_name)
    if part is not None:
        tensor = tensor.chunk(3, dim=-1)[part]  # the out dimension is the last in Conv1D
    return tensor.t() if _is_conv1d(hf_name(book_name)) else tensor


def _normalized(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys in GPT2LMHeadModel's spelling (OpenAI's own files drop ``transformer.``)."""
    out = {}
    for key, tensor in state_dict.items():
        if _HF_BUFFERS.fullmatch(key):
            continue
        out[key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"] = tensor
    return out


def load_hf_state_dict(model: GPTModel,
                       state_dict: Mapping[str, torch.Tensor]) -> GPTModel:
    """Copy a GPT-2 checkpoint in Hugging Face's layout into ``model``; return ``model``.

    Shapes and dtypes are checked before anything is copied; a mismatch or an integer tensor
    raises ``ValueError`` naming the first such tensor, and floating-point weights of another
    precision (float16, bfloat16) are converted to the model's with a ``UserWarning`` saying so.
    A missing ``lm_head.weight`` means the head is tied to ``wte``.
    """
    if not isinstance(model, GPTModel):
        raise TypeError(f"model must be a GPTModel, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors, got "
                        f"{type(state_dict).__name__}")
    hf = _normalized(state_dict)
    targets = dict(model.named_parameters())  # a tied head appears once, as tok_emb
    converted, precisions = {}, set()
    for name, param in targets.items():
        source = hf_name(name)
        if source == "lm_head.weight" and source not in hf:
            source = "transformer.wte.weight"
        if source not in hf:
            raise ValueError(f"state_dict has no tensor {source!r} (for {name!r})")
        tensor = hf[source]
        expected = _hf_shape(name, param.shape)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"state_dict tensor {source!r} has shape {tuple(tensor.shape)}, "
                             f"but {name!r} needs {tuple(expected)}: the config does not match")
        if not tensor.is_floating_point():
            raise ValueError(f"state_dict tensor {source!r} has dtype {tensor.dtype}, but "
                             f"{name!r} needs floating-point weights ({param.dtype})")
        if tensor.dtype != param.dtype:
            precisions.add(f"{tensor.dtype} to {param.dtype}")
        converted[name] = _from_hf(name, tensor)
    used = {hf_name(name) for name in targets} | {"lm_head.weight"}
    unexpected = sorted(set(hf) - used)
    if not model.cfg.qkv_bias:
        biases = [key for key in unexpected if key.endswith("attn.c_attn.bias")]
        nonzero = [key for key in biases if bool(hf[key].any())]
        if nonzero:
            raise ValueError(f"state_dict tensor {nonzero[0]!r} holds query/key/value biases, "
                             "but the model has none: build it with qkv_bias=True")
        unexpected = [key for key in unexpected if key not in biases]
    if unexpected:
        raise ValueError(f"state_dict has tensor {unexpected[0]!r}, which the model has no place "
                         f"for: the config does not match")
    if precisions:
        warnings.warn(f"converted GPT-2 weights from {', '.join(sorted(precisions))}",
                      UserWarning, stacklevel=2)
    with torch.no_grad():
        for name, param in targets.items():
            param.copy_(converted[name])
    return model


def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s weights named and shaped as a ``transformers`` ``GPT2LMHeadModel``'s.

    A model without query/key/value biases exports zero biases (GPT-2 always has them).
    """
    if not isinstance(model, GPTModel):
        raise TypeError(f"model must be a GPTModel, got {type(model).__name__}")
    params = dict(model.named_parameters(remove_duplicate=False))
    out: dict[str, torch.Tensor] = {}
    for i in range(model.cfg.n_layers):
        att = model.trf_blocks[i].att
        weights = [getattr(att, w).weight for w in _QKV_PART]
        out[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(weights, dim=0).t()
        biases = [getattr(att, w).bias for w in _QKV_PART]
        out[f"transformer.h.{i}.attn.c_attn.bias"] = (
            torch.cat(biases) if model.cfg.qkv_bias
            else torch.zeros(3 * model.cfg.emb_dim, dtype=weights[0].dtype,
                             device=weights[0].device)
        )
    for name, param in params.items():
        target = hf_name(name)
        if target not in out:
            out[target] = param.t() if _is_conv1d(target) else param
    return {key: tensor.detach().clone().contiguous() for key, tensor in out.items()}


def hf_config(cfg: GPTConfig) -> dict[str, Any]:
    """The ``config.json`` of a ``transformers`` GPT-2 with ``cfg``'s sizes."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "tie_word_embeddings": cfg.tie_weights,
        # Not read by transformers; lets this package restore a model without qkv biases.
        "qkv_bias": cfg.qkv_bias,
    }


def config_from_hf(config: Mapping[str, Any] | Any, **overrides: Any) -> GPTConfig:
    """A ``GPTConfig`` from a GPT-2 ``config.json`` dict or a ``transformers.GPT2Config``."""
    if not isinstance(config, Mapping):
        config = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    absent = [key for key in _HF_REQUIRED if key not in config]
    if absent:
        raise ValueError(f"config must give {', '.join(_HF_REQUIRED)}; it has no "
                         f"{', '.join(absent)}")
    emb_dim = config["n_embd"]
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"config activation_function must be GPT-2's tanh GELU ('gelu_new'), "
                         f"got {config['activation_function']!r}")
    if config.get("n_inner") not in (None, 4 * emb_dim):
        raise ValueError(f"config n_inner must be None or 4 * n_embd = {4 * emb_dim}, "
                         f"got {config['n_inner']!r}")
    if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise ValueError(f"config layer_norm_epsilon must be 1e-5, got "
                         f"{config['layer_norm_epsilon']!r}")
    fields = {
        "vocab_size": config["vocab_size"],
        "context_length": config["n_positions"],
        "emb_dim": emb_dim,
        "n_heads": config["n_head"],
        "n_layers": config["n_layer"],
        "drop_rate": config.get("resid_pdrop", 0.1),
        "qkv_bias": config.get("qkv_bias", True),
        "tie_weights": config.get("tie_word_embeddings", True),
    }
    return GPTConfig(**{**fields, **overrides})


def save_pretrained(model: GPTModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` as ``transformers`` does; return the dir.

    ``transformers.GPT2LMHeadModel.from_pretrained(directory)`` loads the result.
    """
    state = to_hf_state_dict(model)
    if model.cfg.tie_weights:
        del state["lm_head.weight"]  # tied: transformers rebuilds it from wte
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config(model.cfg), indent=2) + "\n")
    save_file({k: v.cpu() for k, v in state.items()}, directory / "model.safetensors",
              metadata={"format": "pt"})
    return directory


def _config_from_shapes(state: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The ``config.json`` of one of the four GPT-2 sizes, recognized from tensor shapes."""
    hf = _normalized(state)
    if "transformer.wte.weight" not in hf or "transformer.wpe.weight" not in hf:
        raise ValueError(f"{str(path)!r} holds no wte/wpe embeddings: it is not GPT-2 weights "
                         "(put the config.json of its model beside it)")
    vocab_size, emb_dim = hf["transformer.wte.weight"].shape
    n_layers = len({key.split(".")[2] for key in hf if key.startswith("transformer.h.")})
    if (emb_dim, n_layers) not in _GPT2_SIZES:
        raise ValueError(f"{path} is not one of the four GPT-2 sizes (emb_dim={emb_dim}, "
                         f"{n_layers} layers): put its config.json beside it")
    head = hf.get("lm_head.weight")
    tied = head is None or torch.equal(head, hf["transformer.wte.weight"])
    return {"vocab_size": vocab_size, "n_positions": hf["transformer.wpe.weight"].shape[0],
            "n_embd": emb_dim, "n_layer": n_layers,
            "n_head": _GPT2_SIZES[(emb_dim, n_layers)][1], "tie_word_embeddings": tied}


def download_command(name: str) -> str:
    """The shell command that fetches GPT-2 size ``name`` into a directory of that name."""
    if name not in _HUB_NAMES:
        raise ValueError(f"name must be one of {sorted(_HUB_NAMES)}, got {name!r}")
    return (f"hf download {_HUB_NAMES[name]} config.json model.safetensors "
            f"--local-dir {name}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection quickly: its own retries take ~25 s offline."""
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the hub try
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout).close()
    except OSError:
        return False
    return True


def _download(name: str) -> Path:
    """GPT-2 size ``name`` from the hub's local cache, else downloaded when the hub answers.

    Offline (``HF_HUB_OFFLINE`` set, or the hub unreachable) this fails at once, with the one
    shell command that fetches the files.
    """
    repo, how = _HUB_NAMES[name], download_command(name)
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsNotFoundError(
            f"name_or_path {name!r} is not on this machine and huggingface_hub is not installed: "
            f"pip install huggingface_hub, then run: {how}") from None
    files = ("config.json", "model.safetensors")
    try:
        for file in files:
            found = Path(hf_hub_download(repo, file, local_files_only=True))
        return found.parent
    except Exception:  # not in the cache (or an older hub without local_files_only)
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co cannot be reached"
        raise WeightsNotFoundError(f"name_or_path {name!r} is not on this machine and {why}: "
                                   f"where there is a network, run: {how}")
    try:
        for file in files:
            found = Path(hf_hub_download(repo, file))
        return found.parent
    except Exception as exc:  # the hub raises many kinds: DNS, HTTP, auth, disk
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise WeightsNotFoundError(
            f"name_or_path {name!r} could not be downloaded ({type(exc).__name__}: {reason}): "
            f"run: {how}") from None


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{str(config_file)!r} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{str(config_file)!r} must hold a JSON object, got "
                         f"{type(config).__name__}")
    return config


def load_pretrained(name_or_path: str | Path, **overrides: Any) -> GPTModel:
    """A ``GPTModel`` (in eval mode) with GPT-2 weights in Hugging Face's layout.

    ``name_or_path``: a directory holding ``model.safetensors`` (and ``config.json``, as
    ``save_pretrained`` writes it), a lone ``model.safetensors`` of one of the four GPT-2 sizes,
    or a name (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) to download.
    ``overrides`` set ``GPTConfig`` fields that do not change shapes, e.g. ``attn_kernel``.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"name_or_path must be a str or Path, got {type(name_or_path).__name__}")
    path = Path(name_or_path)
    if not path.exists():
        if str(name_or_path) not in _HUB_NAMES:
            raise WeightsNotFoundError(
                f"name_or_path {str(name_or_path)!r} does not exist (nor is it a GPT-2 size to "
                f"download: {', '.join(sorted(_HUB_NAMES))})")
        path = _download(str(name_or_path))
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise WeightsNotFoundError(f"name_or_path {str(name_or_path)!r} has no model.safetensors")
    state = read_safetensors(weights)
    config_file = weights.parent / "config.json"
    config = (_read_config(config_file) if config_file.is_file()
              else _config_from_shapes(state, weights))
    model = GPTModel(config_from_hf(config, **overrides))
    return load_hf_state_dict(model, state).eval()
