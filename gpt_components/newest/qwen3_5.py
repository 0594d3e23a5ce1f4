"""The Qwen3.5 text model (Alibaba): Qwen3-Next's hybrid with dense feed-forwards.

What Qwen3.5's language model changes from Qwen3-Next (``qwen3_next``): its dense sizes have no
experts (every feed-forward is a SwiGLU of ``hidden_dim``), and its Gated DeltaNet layers keep
four input matrices (``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``) instead of
two fused per key head. The layer pattern (three DeltaNet layers, then gated attention), the
partial RoPE, the zero-centred norms and the cache are Qwen3-Next's. The published models are
multimodal (``Qwen3_5ForConditionalGeneration``); this is the text model ``transformers``
saves as ``qwen3_5_text`` (``Qwen3_5ForCausalLM``), whose RoPE over text positions is plain
partial RoPE (the multimodal sections coincide when every position is a text one).

>>> cfg = Qwen35Config.from_name("qwen3.5-nano")
>>> cfg.n_experts, cfg.layer(0).feed_forward, cfg.deltanet_projections
(0, 'swiglu', 'split')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..modern.chat import Qwen3ChatFormat
from ..modern.decoder import DecoderModel
from ..modern.family import Family, HFLayout
from ..modern.qwen3 import QWEN3_HF_NAMES
from .qwen3_next import (
    Qwen3NextConfig,
    deltanet_hf_names,
    hybrid_fields_from_hf,
    hybrid_fields_to_hf,
    without_mtp,
)

__all__ = ["Qwen35Config", "QWEN3_5_PRESETS", "QWEN3_5_HF_NAMES"]


@dataclass(frozen=True)
class Qwen35Config(Qwen3NextConfig):
    """Qwen3-Next's choices, dense; defaults are ``transformers``' ``Qwen3_5TextConfig``'s
    (which it describes as Qwen3.5-9B's text model)."""

    deltanet_projections: ClassVar[str] = "split"  # four matrices, not two fused

    vocab_size: int = 248320
    context_length: int = 32768
    emb_dim: int = 4096
    n_layers: int = 32
    n_kv_heads: int = 4
    hidden_dim: int = 12288
    n_experts: int = 0  # dense: every layer a SwiGLU


QWEN3_5_PRESETS: dict[str, Qwen35Config] = {
    # transformers' Qwen3_5TextConfig defaults, which its docstring calls "Qwen3.5-9B style".
    "qwen3.5-9b": Qwen35Config(),
    # Small for a laptop CPU (GPT-2's BPE): three DeltaNet layers, then one gated attention.
    "qwen3.5-nano": Qwen35Config(vocab_size=50257, context_length=64, emb_dim=48, n_layers=4,
                                 n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128,
                                 rope_theta=10000.0, linear_key_heads=2, linear_value_heads=4,
                                 linear_key_head_dim=8, linear_value_head_dim=8),
}

# Qwen3's names (Llama's and the QK-norms) and the DeltaNet layers' four input matrices.
QWEN3_5_HF_NAMES: dict[str, str] = {
    **QWEN3_HF_NAMES,
    **deltanet_hf_names(("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")),
}


def config_from_hf(hf: Mapping[str, Any]) -> Qwen35Config:
    """A ``Qwen35Config`` from a ``Qwen3_5ForCausalLM`` (``qwen3_5_text``) ``config.json``."""
    return Qwen35Config(**hybrid_fields_from_hf({"num_key_value_heads": 4, **hf}))


def config_to_hf(cfg: Qwen35Config) -> dict[str, Any]:
    return hybrid_fields_to_hf(cfg, HF_LAYOUT)


HF_LAYOUT = HFLayout(model_type="qwen3_5_text", architecture="Qwen3_5ForCausalLM",
                     names=QWEN3_5_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="Qwen3.5", canonical=without_mtp)
FAMILY = Family(name="qwen3_5_text", config_class=Qwen35Config, model_class=DecoderModel,
                presets=QWEN3_5_PRESETS, layout=HF_LAYOUT, chat_format=Qwen3ChatFormat)
