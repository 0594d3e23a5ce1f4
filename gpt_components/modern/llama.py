"""Llama 3 / 3.1 / 3.2 (Meta): what the family chooses, its presets, its Hugging Face names.

Llama 3 is GPT-2 with four changes, each a component chosen here: ``RMSNorm`` for LayerNorm,
rotary positions (base 500,000, with Llama 3.1's long-context frequency scaling) for the
position embedding, the ``SwiGLU`` feed-forward for the GELU MLP, and grouped-query attention
(8 key/value heads) for multi-head attention. No biases, no dropout; Llama 3.2 ties the output
head to the embedding.

>>> cfg = LlamaConfig.from_name("llama3.2-1b")
>>> cfg.n_kv_heads, cfg.head_dim, cfg.rope_scaling.factor
(8, 64, 32.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .chat import Llama3ChatFormat
from .config import DecoderConfig
from .decoder import DecoderModel
from .family import Family, HFLayout
from .hf import decoder_fields_from_hf, decoder_fields_to_hf
from .rope import Llama3RopeScaling

__all__ = ["LlamaConfig", "LLAMA_PRESETS", "LLAMA_HF_NAMES"]


@dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
    """Llama 3's choices: RMSNorm (eps 1e-5), RoPE base 500,000, SwiGLU, GQA, no QK-norm."""

    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    feed_forward: str = "swiglu"
    attention: str = "gqa"
    rope_theta: float = 500000.0
    qk_norm: bool = False


_LLAMA_3_1_SCALING = Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_context_length=8192)
_LLAMA_3_2_SCALING = Llama3RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_context_length=8192)
_SMALL = {"vocab_size": 50257, "n_kv_heads": 2, "rope_theta": 10000.0}  # GPT-2's BPE, CPU sizes

LLAMA_PRESETS: dict[str, LlamaConfig] = {
    # Published sizes (Meta's params.json / Hugging Face config.json).
    "llama3-8b": LlamaConfig(context_length=8192, emb_dim=4096, n_layers=32, n_heads=32,
                             n_kv_heads=8, hidden_dim=14336),
    "llama3.1-8b": LlamaConfig(context_length=131072, emb_dim=4096, n_layers=32, n_heads=32,
                               n_kv_heads=8, hidden_dim=14336, rope_scaling=_LLAMA_3_1_SCALING),
    "llama3.2-1b": LlamaConfig(context_length=131072, emb_dim=2048, n_layers=16, n_heads=32,
                               n_kv_heads=8, hidden_dim=8192, rope_scaling=_LLAMA_3_2_SCALING,
                               tie_weights=True),
    "llama3.2-3b": LlamaConfig(context_length=131072, emb_dim=3072, n_layers=28, n_heads=24,
                               n_kv_heads=8, hidden_dim=8192, rope_scaling=_LLAMA_3_2_SCALING,
                               tie_weights=True),
    # Small ones for a laptop CPU, the shapes of GPT-2's gpt-nano/micro/mini.
    "llama3-nano": LlamaConfig(context_length=64, emb_dim=48, n_layers=3, n_heads=4,
                               hidden_dim=128, **_SMALL),
    "llama3-micro": LlamaConfig(context_length=128, emb_dim=128, n_layers=4, n_heads=4,
                                hidden_dim=352, **_SMALL),
    "llama3-mini": LlamaConfig(context_length=256, emb_dim=192, n_layers=6, n_heads=6,
                               hidden_dim=512, **_SMALL),
}

# Our module -> LlamaForCausalLM's; ".weight"/".bias" carry over.
LLAMA_HF_NAMES: dict[str, str] = {
    "tok_emb": "model.embed_tokens",
    "trf_blocks.{i}.norm1": "model.layers.{i}.input_layernorm",
    "trf_blocks.{i}.att.W_query": "model.layers.{i}.self_attn.q_proj",
    "trf_blocks.{i}.att.W_key": "model.layers.{i}.self_attn.k_proj",
    "trf_blocks.{i}.att.W_value": "model.layers.{i}.self_attn.v_proj",
    "trf_blocks.{i}.att.out_proj": "model.layers.{i}.self_attn.o_proj",
    "trf_blocks.{i}.norm2": "model.layers.{i}.post_attention_layernorm",
    "trf_blocks.{i}.ff.fc1": "model.layers.{i}.mlp.gate_proj",
    "trf_blocks.{i}.ff.fc2": "model.layers.{i}.mlp.up_proj",
    "trf_blocks.{i}.ff.fc3": "model.layers.{i}.mlp.down_proj",
    "final_norm": "model.norm",
    "out_head": "lm_head",
}


def config_from_hf(hf: Mapping[str, Any]) -> LlamaConfig:
    """A ``LlamaConfig`` from a ``LlamaForCausalLM`` ``config.json``."""
    return LlamaConfig(**decoder_fields_from_hf(hf))


def config_to_hf(cfg: LlamaConfig) -> dict[str, Any]:
    return decoder_fields_to_hf(cfg, HF_LAYOUT)


HF_LAYOUT = HFLayout(model_type="llama", architecture="LlamaForCausalLM", names=LLAMA_HF_NAMES,
                     config_from_hf=config_from_hf, config_to_hf=config_to_hf, title="Llama")
FAMILY = Family(name="llama", config_class=LlamaConfig, model_class=DecoderModel,
                presets=LLAMA_PRESETS, layout=HF_LAYOUT, chat_format=Llama3ChatFormat)
