"""Qwen3 (dense; Alibaba): Llama 3's decoder plus QK-norm, with its own sizes and names.

Qwen3 changes two things from Llama 3: an ``RMSNorm`` over each head's queries and keys before
the rotation (``qk_norm``), and a ``head_dim`` of 128 set on its own (not ``emb_dim /
n_heads``: the 0.6B model has 16 heads of 128 in a 1024-wide stream). RoPE base 1,000,000,
RMSNorm eps 1e-6, no scaling; the small models tie the head to the embedding.

>>> cfg = Qwen3Config.from_name("qwen3-0.6b")
>>> cfg.emb_dim, cfg.n_heads * cfg.head_dim, cfg.qk_norm
(1024, 2048, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..machinery.checks import value_error
from .chat import Qwen3ChatFormat
from .config import DecoderConfig
from .decoder import DecoderModel
from .family import Family, HFLayout
from .hf import decoder_fields_from_hf, decoder_fields_to_hf
from .llama import LLAMA_HF_NAMES

__all__ = ["Qwen3Config", "QWEN3_PRESETS", "QWEN3_HF_NAMES"]


@dataclass(frozen=True)
class Qwen3Config(DecoderConfig):
    """Qwen3's choices: Llama 3's, plus QK-norm; RMSNorm eps 1e-6, RoPE base 1,000,000."""

    vocab_size: int = 151936
    context_length: int = 40960
    norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    qk_norm: bool = True


_SMALL = {"vocab_size": 50257, "n_kv_heads": 2, "rope_theta": 10000.0}  # GPT-2's BPE, CPU sizes

QWEN3_PRESETS: dict[str, Qwen3Config] = {
    # Published sizes (Hugging Face config.json of Qwen/Qwen3-*).
    "qwen3-0.6b": Qwen3Config(emb_dim=1024, n_layers=28, n_heads=16, n_kv_heads=8,
                              head_dim=128, hidden_dim=3072, tie_weights=True),
    "qwen3-1.7b": Qwen3Config(emb_dim=2048, n_layers=28, n_heads=16, n_kv_heads=8,
                              head_dim=128, hidden_dim=6144, tie_weights=True),
    "qwen3-4b": Qwen3Config(emb_dim=2560, n_layers=36, n_heads=32, n_kv_heads=8,
                            head_dim=128, hidden_dim=9728, tie_weights=True),
    "qwen3-8b": Qwen3Config(emb_dim=4096, n_layers=36, n_heads=32, n_kv_heads=8,
                            head_dim=128, hidden_dim=12288),
    # Small ones for a laptop CPU; head_dim is not emb_dim / n_heads, as in the real ones.
    "qwen3-nano": Qwen3Config(context_length=64, emb_dim=48, n_layers=3, n_heads=4,
                              head_dim=16, hidden_dim=128, **_SMALL),
    "qwen3-micro": Qwen3Config(context_length=128, emb_dim=128, n_layers=4, n_heads=4,
                               head_dim=48, hidden_dim=352, **_SMALL),
    "qwen3-mini": Qwen3Config(context_length=256, emb_dim=192, n_layers=6, n_heads=6,
                              head_dim=48, hidden_dim=512, **_SMALL),
}

# Llama's names, plus the two QK-norms.
QWEN3_HF_NAMES: dict[str, str] = {
    **LLAMA_HF_NAMES,
    "trf_blocks.{i}.att.q_norm": "model.layers.{i}.self_attn.q_norm",
    "trf_blocks.{i}.att.k_norm": "model.layers.{i}.self_attn.k_norm",
}


def config_from_hf(hf: Mapping[str, Any]) -> Qwen3Config:
    """A ``Qwen3Config`` from a ``Qwen3ForCausalLM`` ``config.json``."""
    if hf.get("use_sliding_window", False):
        raise value_error("config", "config use_sliding_window must be false: dense Qwen3 "
                                    "attends to the whole context")
    # transformers' Qwen3 defaults, where they differ from Llama's.
    hf = {"head_dim": 128, "num_key_value_heads": 32, **hf}
    return Qwen3Config(**decoder_fields_from_hf(hf))


def config_to_hf(cfg: Qwen3Config) -> dict[str, Any]:
    return {**decoder_fields_to_hf(cfg, HF_LAYOUT), "use_sliding_window": False}


HF_LAYOUT = HFLayout(model_type="qwen3", architecture="Qwen3ForCausalLM", names=QWEN3_HF_NAMES,
                     config_from_hf=config_from_hf, config_to_hf=config_to_hf, title="Qwen3")
FAMILY = Family(name="qwen3", config_class=Qwen3Config, model_class=DecoderModel,
                presets=QWEN3_PRESETS, layout=HF_LAYOUT, chat_format=Qwen3ChatFormat)
