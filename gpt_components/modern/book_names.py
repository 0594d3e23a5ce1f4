"""The book's bonus-chapter names for Llama 3 and Qwen3: its config dicts, models and RoPE tables.

The book's bonus notebooks and package build ``Llama3Model(cfg)`` and ``Qwen3Model(cfg)`` from
dicts (``LLAMA32_CONFIG_1B``, ``QWEN_CONFIG_06_B``) with their own keys (``n_kv_groups`` for the
key/value heads, ``rope_base``, ``rope_freq``, ``dtype``, ``num_experts`` ...), and precompute
RoPE with ``compute_rope_params``. Here each is a translation onto this package's pieces, with no
second implementation: the dict becomes a ``LlamaConfig`` / ``Qwen3Config`` /
``Qwen3MoeConfig`` and the model a ``DecoderModel``.

One choice follows the book rather than Llama's recipe: these two constructors initialise the
weights as the book's model does, by PyTorch's defaults drawn in the book's order (embedding
``N(0, 1)``, each linear layer's own uniform range), in the dict's ``dtype``, so a reader who
seeds as the book does gets the book's weights. ``DecoderModel(LlamaConfig(...))`` keeps
Llama's ``N(0, 0.02)``, the better start for training.

>>> model = Qwen3Model({"vocab_size": 100, "context_length": 16, "emb_dim": 32, "n_heads": 4,
...                     "n_layers": 1, "hidden_dim": 64, "head_dim": 8, "qk_norm": True,
...                     "n_kv_groups": 2, "rope_base": 1e6, "dtype": torch.float32})
>>> type(model.cfg).__name__, model.cfg.n_kv_heads
('Qwen3Config', 2)
>>> cos, sin = compute_rope_params(head_dim=8, theta_base=10_000, context_length=5)
>>> cos.shape
torch.Size([5, 8])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..machinery.checks import check_instance, type_error, value_error
from .decoder import DecoderModel
from .llama import LlamaConfig
from .qwen3 import Qwen3Config
from .qwen3_moe import Qwen3MoeConfig
from .rope import Llama3RopeScaling, RotaryEmbedding

__all__ = ["Llama3Model", "Qwen3Model", "compute_rope_params", "LLAMA32_CONFIG_1B",
           "QWEN_CONFIG_06_B"]

LLAMA32_CONFIG_1B: dict[str, Any] = {
    "vocab_size": 128_256, "context_length": 131_072, "emb_dim": 2048, "n_heads": 32,
    "n_layers": 16, "hidden_dim": 8192, "n_kv_groups": 8, "rope_base": 500_000.0,
    "dtype": torch.bfloat16,
    "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_context_length": 8192},
}
QWEN_CONFIG_06_B: dict[str, Any] = {
    "vocab_size": 151_936, "context_length": 40_960, "emb_dim": 1024, "n_heads": 16,
    "n_layers": 28, "hidden_dim": 3072, "head_dim": 128, "qk_norm": True, "n_kv_groups": 8,
    "rope_base": 1_000_000.0, "dtype": torch.bfloat16,
}

_SIZES = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "hidden_dim")
# Keys some family of the book reads; each family ignores the others' (as the book's do).
_BOOK_KEYS = {*_SIZES, "n_kv_groups", "rope_base", "rope_freq", "dtype", "head_dim", "qk_norm",
              "num_experts", "num_experts_per_tok", "moe_intermediate_size", "drop_rate",
              "qkv_bias"}


def _fields(cfg: Any) -> dict[str, Any]:
    check_instance("cfg", cfg, Mapping, "a dict with the book's keys")
    unknown = sorted(set(cfg) - _BOOK_KEYS)
    if unknown:
        raise type_error("cfg", f"cfg has keys the book's models do not read: {unknown} "
                                f"(known: {sorted(_BOOK_KEYS)})")
    missing = [key for key in (*_SIZES, "n_kv_groups") if key not in cfg]
    if missing:
        raise value_error("cfg", f"cfg must give {missing}")
    return {**{key: cfg[key] for key in _SIZES}, "n_kv_heads": cfg["n_kv_groups"]}


def _with_book_init(config: Any, dtype: torch.dtype | None,
                    attention_order: tuple[str, ...]) -> DecoderModel:
    """``DecoderModel(config)`` whose weights are PyTorch's defaults, drawn in the book's order.

    The book's constructor draws each layer as it is created: the token embedding, then per
    block the attention's projections (in ``attention_order``: the book's Llama 3 makes W_key
    and W_value before W_query, its Qwen3 W_query first) and the feed-forward, then the head.
    The model is built, the generator set back to where it was and each layer redrawn in that
    order, in ``dtype``: the same draws, and the generator left where the book leaves it.
    """
    state = torch.get_rng_state()
    model = DecoderModel(config)
    if dtype is not None:
        model.to(dtype)
    torch.set_rng_state(state)
    layers = [model.tok_emb]
    for block in model.trf_blocks:
        layers += [getattr(block.att, name) for name in attention_order]
        layers += [m for m in block.ff.modules() if isinstance(m, nn.Linear)]
    layers.append(model.out_head)
    with torch.no_grad():
        for layer in layers:
            if not layer.weight.is_meta:  # nothing to draw (and meta's normal_ is slow)
                layer.reset_parameters()
    return model


def Llama3Model(cfg: Mapping[str, Any]) -> DecoderModel:  # noqa: N802 (the book's class name)
    """The book's ``Llama3Model(cfg)``: a Llama 3 ``DecoderModel`` from a dict with its keys."""
    fields = _fields(cfg)
    config = LlamaConfig(**fields, rope_theta=cfg.get("rope_base", 500_000.0),
                         rope_scaling=cfg.get("rope_freq"))
    return _with_book_init(config, cfg.get("dtype"), ("W_key", "W_value", "W_query", "out_proj"))


def Qwen3Model(cfg: Mapping[str, Any]) -> DecoderModel:  # noqa: N802 (the book's class name)
    """The book's ``Qwen3Model(cfg)``: dense Qwen3, or Qwen3-MoE when ``num_experts`` > 0."""
    fields = _fields(cfg)
    fields.update(head_dim=cfg.get("head_dim"), qk_norm=cfg.get("qk_norm", False),
                  rope_theta=cfg.get("rope_base", 10_000.0))
    if cfg.get("num_experts", 0):
        config = Qwen3MoeConfig(**fields, n_experts=cfg["num_experts"],
                                n_experts_per_token=cfg["num_experts_per_tok"],
                                moe_hidden_dim=cfg["moe_intermediate_size"])
    else:
        config = Qwen3Config(**fields)
    return _with_book_init(config, cfg.get("dtype"), ("W_query", "W_key", "W_value", "out_proj"))


def compute_rope_params(head_dim: int, theta_base: float = 10_000, context_length: int = 4096,
                        freq_config: Mapping[str, float] | None = None,
                        dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's RoPE tables: ``cos`` and ``sin`` [context_length, head_dim] for positions
    0 .. context_length - 1, with Llama 3's ``freq_config`` scaling when given."""
    scaling = None if freq_config is None else Llama3RopeScaling(**freq_config)
    return RotaryEmbedding(head_dim, theta_base, scaling)(torch.arange(context_length), dtype)
