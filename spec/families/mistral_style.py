"""A Mistral-style family, declared in this one file: the proof that a family is one file.

Mistral 7B is Llama's decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention) with a sliding
window on every layer: each query sees the last ``sliding_window`` positions, itself included,
and the KV cache of every layer stays that long. Nothing here is new code: the config picks the
existing ``sliding_gqa`` attention, the weights keep Llama's names, ``config.json`` is the shared
decoder mapping plus ``sliding_window``, and ``transformers``' ``mistral`` model type reads it.
Importing this file is all it takes: the ``Family`` below registers it, and
``spec/test_families.py`` then runs the whole conformance suite on it.

>>> from gpt_components.machinery.registry import FAMILIES, preset_config
>>> preset_config("mistral-style-nano").family, "mistral_style" in FAMILIES
('mistral_style', True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpt_components.machinery.checks import check_int
from gpt_components.modern.config import DecoderConfig
from gpt_components.modern.decoder import DecoderModel
from gpt_components.modern.family import Family, HFLayout
from gpt_components.modern.hf import decoder_fields_from_hf, decoder_fields_to_hf
from gpt_components.modern.llama import LLAMA_HF_NAMES


@dataclass(frozen=True)
class MistralStyleConfig(DecoderConfig):
    """Llama's choices with windowed attention in every layer; Mistral 7B's sizes."""

    vocab_size: int = 32768
    context_length: int = 32768
    emb_dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    hidden_dim: int = 14336
    rope_theta: float = 1000000.0
    attention: str = "sliding_gqa"  # every layer windowed
    sliding_window: int = 4096  # keys a query sees, itself included

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("sliding_window", self.sliding_window, low=1)


PRESETS = {
    # Small for a laptop CPU (GPT-2's BPE); a window of 8 in a context of 64.
    "mistral-style-nano": MistralStyleConfig(vocab_size=50257, context_length=64, emb_dim=48,
                                             n_layers=3, n_heads=4, n_kv_heads=2,
                                             hidden_dim=128, rope_theta=10000.0,
                                             sliding_window=8),
}


def config_from_hf(hf: Mapping[str, Any]) -> MistralStyleConfig:
    """A ``MistralStyleConfig`` from a ``MistralForCausalLM`` ``config.json``."""
    fields = decoder_fields_from_hf(hf)  # null: no window (it spans the whole context)
    return MistralStyleConfig(**fields,
                              sliding_window=hf.get("sliding_window") or fields["context_length"])


def config_to_hf(cfg: MistralStyleConfig) -> dict[str, Any]:
    return {**decoder_fields_to_hf(cfg, HF_LAYOUT), "sliding_window": cfg.sliding_window}


HF_LAYOUT = HFLayout(model_type="mistral", architecture="MistralForCausalLM",
                     names=LLAMA_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="Mistral")
FAMILY = Family(name="mistral_style", config_class=MistralStyleConfig, model_class=DecoderModel,
                presets=PRESETS, layout=HF_LAYOUT)
