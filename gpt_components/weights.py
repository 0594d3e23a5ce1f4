"""GPT-2 weights in and out (chapter 5): Hugging Face's layout to ``GPTModel`` and back.

OpenAI's GPT-2 checkpoints, as Hugging Face ``transformers`` stores them, name the book's parts
differently (``wte`` for ``tok_emb``, ``h.N.attn.c_attn`` for ``W_query``/``W_key``/``W_value``
fused into one matrix) and keep linear weights as ``Conv1D`` matrices, transposed relative to
``nn.Linear``. ``BOOK_TO_HF`` is the one mapping between the two, and ``GPT2_LAYOUT`` says the
rest (the fused and transposed tensors, OpenAI's older spelling, the head read from ``wte`` when a
file has none); the loading itself is ``machinery.pretrained``'s, the same for every family.
``load_hf_state_dict`` and ``to_hf_state_dict`` apply the layout both ways, ``save_pretrained``
writes ``config.json`` + ``model.safetensors`` as ``transformers`` does, and ``load_pretrained``
(also ``GPTModel.from_pretrained``) reads such a directory, a lone ``model.safetensors``, or
downloads a GPT-2 size by name when ``huggingface_hub`` and a network are there. The module ends
with GPT-2's ``Family`` declaration: GPT-2 is registered as every other family is.

>>> hf_name("trf_blocks.3.att.W_key.bias")
'transformer.h.3.attn.c_attn.bias'
>>> hf_name("out_head.weight")
'lm_head.weight'
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .machinery.checks import ArgumentError, check_instance, value_error
from .machinery.pretrained import HFLayout, read_config_json
from .machinery.registry import Family
from .machinery.tensor_files import safetensors_header
from .model import MODEL_PRESETS, GPTConfig, GPTModel

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
    "GPT2_LAYOUT",
]

# Book parameter name -> Hugging Face GPT2LMHeadModel name; "{i}" is the block index. The three
# names mapped to c_attn are fused into it in this order (query, key, value).
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


class WeightsNotFoundError(ArgumentError, FileNotFoundError, ValueError):
    """No weights at ``name_or_path``, and none could be downloaded (its ``parameter``)."""


def hf_name(book_name: str) -> str:
    """The Hugging Face name of one of the book's parameters."""
    check_instance("book_name", book_name, str, "a str")
    try:
        return GPT2_LAYOUT.hf_name(book_name)
    except ValueError:
        raise value_error("book_name", f"book_name must name a GPTModel parameter, got "
                                       f"{book_name!r}") from None


def _is_conv1d(hf: str) -> bool:
    """Whether transformers keeps this tensor as a ``Conv1D`` matrix, transposed."""
    return hf.endswith(".weight") and (".attn." in hf or ".mlp." in hf)


def _canonical(key: str) -> str | None:
    """A checkpoint key in GPT2LMHeadModel's spelling (OpenAI's own files drop
    ``transformer.``); None for the causal-mask buffers, which hold no weights."""
    if _HF_BUFFERS.fullmatch(key):
        return None
    return key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"


def _absent_biases(cfg: GPTConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """GPT-2 always has query/key/value biases: a model without them saves zeros there."""
    if cfg.qkv_bias:
        return {}
    why = "holds query/key/value biases, but the model has none: build it with qkv_bias=True"
    return {f"transformer.h.{i}.attn.c_attn.bias": ((3 * cfg.emb_dim,), why)
            for i in range(cfg.n_layers)}


def load_hf_state_dict(model: GPTModel,
                       state_dict: Mapping[str, torch.Tensor]) -> GPTModel:
    """Copy a GPT-2 checkpoint in Hugging Face's layout into ``model``; return ``model``.

    Shapes and dtypes are checked before anything is copied; a mismatch or an integer tensor
    raises ``ValueError`` naming the first such tensor, and floating-point weights of another
    precision (float16, bfloat16) are converted to the model's with a ``UserWarning`` saying so.
    A missing ``lm_head.weight`` means the head is tied to ``wte``.
    """
    check_instance("model", model, GPTModel, "a GPTModel")
    check_instance("state_dict", state_dict, Mapping, "a mapping of names to tensors")
    return GPT2_LAYOUT.read_state_dict(model, state_dict)


def to_hf_state_dict(model: GPTModel) -> dict[str, torch.Tensor]:
    """``model``'s weights named and shaped as a ``transformers`` ``GPT2LMHeadModel``'s.

    A model without query/key/value biases exports zero biases (GPT-2 always has them).
    """
    check_instance("model", model, GPTModel, "a GPTModel")
    state = GPT2_LAYOUT.state_dict(model)
    if model.cfg.tie_weights:  # transformers' state dict names the tied head as well
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return {key: tensor.clone().contiguous() for key, tensor in state.items()}


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
        raise value_error("config", f"config must give {', '.join(_HF_REQUIRED)}; it has no "
                                    f"{', '.join(absent)}")
    emb_dim = config["n_embd"]
    if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise value_error("config", f"config activation_function must be GPT-2's tanh GELU "
                                    f"('gelu_new'), got {config['activation_function']!r}")
    if config.get("n_inner") not in (None, 4 * emb_dim):
        raise value_error("config", f"config n_inner must be None or 4 * n_embd = "
                                    f"{4 * emb_dim}, got {config['n_inner']!r}")
    if config.get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise value_error("config", f"config layer_norm_epsilon must be 1e-5, got "
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
    check_instance("model", model, GPTModel, "a GPTModel")
    return FAMILY.save_pretrained(model, Path(directory))


def _config_from_shapes(path: Path) -> dict[str, Any]:
    """The ``config.json`` of one of the four GPT-2 sizes, recognized from the tensor shapes in
    the file's header; a file with a head of its own is read as untied."""
    hf = {_canonical(key): entry.shape for key, entry in safetensors_header(path).items()}
    if "transformer.wte.weight" not in hf or "transformer.wpe.weight" not in hf:
        raise value_error("name_or_path",
            f"{str(path)!r} holds no wte/wpe embeddings: it is "
                                          "not GPT-2 weights (put the config.json of its model "
                                          "beside it)")
    vocab_size, emb_dim = hf["transformer.wte.weight"]
    n_layers = len({key.split(".")[2] for key in hf if key and key.startswith("transformer.h.")})
    if (emb_dim, n_layers) not in _GPT2_SIZES:
        raise value_error("name_or_path",
            f"{path} is not one of the four GPT-2 sizes "
                                          f"(emb_dim={emb_dim}, {n_layers} layers): put its "
                                          "config.json beside it")
    return {"vocab_size": vocab_size, "n_positions": hf["transformer.wpe.weight"][0],
            "n_embd": emb_dim, "n_layer": n_layers,
            "n_head": _GPT2_SIZES[(emb_dim, n_layers)][1],
            "tie_word_embeddings": "lm_head.weight" not in hf}


def download_command(name: str) -> str:
    """The shell command that fetches GPT-2 size ``name`` into a directory of that name."""
    if name not in _HUB_NAMES:
        raise value_error("name", f"name must be one of {sorted(_HUB_NAMES)}, got {name!r}")
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
            "name_or_path",
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
        raise WeightsNotFoundError(
            "name_or_path", f"name_or_path {name!r} is not on this machine and {why}: where "
                            f"there is a network, run: {how}")
    try:
        for file in files:
            found = Path(hf_hub_download(repo, file))
        return found.parent
    except Exception as exc:  # the hub raises many kinds: DNS, HTTP, auth, disk
        reason = (str(exc).strip().splitlines() or [""])[0][:200]
        raise WeightsNotFoundError(
            "name_or_path",
            f"name_or_path {name!r} could not be downloaded ({type(exc).__name__}: {reason}): "
            f"run: {how}") from None


def _locate(name_or_path: str | Path) -> tuple[list[Path], dict[str, Any]]:
    """The weights file and ``config.json`` of a directory, a lone file, or a size's name."""
    check_instance("name_or_path", name_or_path, (str, Path), "a str or Path")
    path = Path(name_or_path)
    if not path.exists():
        if str(name_or_path) not in _HUB_NAMES:
            raise WeightsNotFoundError(
                "name_or_path",
                f"name_or_path {str(name_or_path)!r} does not exist (nor is it a GPT-2 size to "
                f"download: {', '.join(sorted(_HUB_NAMES))})")
        path = _download(str(name_or_path))
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise WeightsNotFoundError(
            "name_or_path", f"name_or_path {str(name_or_path)!r} has no model.safetensors")
    config_file = weights.parent / "config.json"
    config = (read_config_json(config_file) if config_file.is_file()
              else _config_from_shapes(weights))
    return [weights], config


def load_pretrained(name_or_path: str | Path, **overrides: Any) -> GPTModel:
    """A ``GPTModel`` (in eval mode) with GPT-2 weights in Hugging Face's layout.

    ``name_or_path``: a directory holding ``model.safetensors`` (and ``config.json``, as
    ``save_pretrained`` writes it), a lone ``model.safetensors`` of one of the four GPT-2 sizes,
    or a name (``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``) to download.
    ``overrides`` set ``GPTConfig`` fields that do not change shapes, e.g. ``attn_kernel``.
    """
    return FAMILY.load_pretrained(name_or_path, **overrides)


GPT2_LAYOUT = HFLayout(
    model_type="gpt2", architecture="GPT2LMHeadModel", names=BOOK_TO_HF,
    config_from_hf=config_from_hf, config_to_hf=hf_config, title="GPT-2",
    transposed=_is_conv1d, canonical=_canonical,
    stand_ins={"lm_head.weight": "transformer.wte.weight"},  # OpenAI's files hold no head
    zeros=_absent_biases,
    dtype=torch.float32,  # the book's model computes in float32; other precisions converted
    on_meta=False,  # its causal masks are buffers computed when it is built
    locate=_locate)

FAMILY = Family(name="gpt2", config_class=GPTConfig, model_class=GPTModel,
                presets=MODEL_PRESETS, layout=GPT2_LAYOUT, tokenizer="gpt2")
