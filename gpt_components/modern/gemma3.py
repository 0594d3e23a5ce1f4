"""Gemma 3 (Google, text): sliding-window layers between global ones, and sandwich norms.

What Gemma 3 chooses, on top of the modern decoder:

- five sliding-window layers (each query sees the last ``sliding_window`` = 512 positions,
  RoPE base 10,000) to one global layer (the whole context, RoPE base 1,000,000): the KV cache
  of the local layers stays 512 positions long however long the text;
- four norms per block: before and after attention, before and after the feed-forward
  (``post_norms``), each an RMSNorm in Gemma's ``(1 + weight)`` form, plus QK-norm;
- the gated feed-forward with GELU (tanh approximation) instead of SiLU;
- scores scaled by ``query_pre_attn_scalar ** -0.5`` rather than ``head_dim ** -0.5``;
- token embeddings multiplied by ``sqrt(emb_dim)``, rounded to the weights' dtype; the output
  head is tied to them.

>>> cfg = Gemma3Config.from_name("gemma3-1b")
>>> cfg.layer(0).attention, cfg.layer(5).attention, cfg.layer(5).rope
('sliding_gqa', 'gqa', 'default')
>>> cfg.sliding_window, cfg.attention_scale()
(512, 0.0625)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..machinery.checks import check_choice, check_float, check_int, value_error
from .chat import Gemma3ChatFormat
from .config import DecoderConfig, LayerSpec, RopeSpec
from .decoder import DecoderModel
from .family import Family, HFLayout
from .hf import decoder_fields_from_hf, decoder_fields_to_hf, rope_from_hf
from .llama import LLAMA_HF_NAMES

__all__ = ["Gemma3Config", "GEMMA3_PRESETS", "GEMMA3_HF_NAMES"]

SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' names for the two kinds


def gemma3_layer_types(n_layers: int, pattern: int = 6) -> tuple[str, ...]:
    """Every ``pattern``-th layer global, the others sliding (Gemma 3's 5:1)."""
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(n_layers))


@dataclass(frozen=True)
class Gemma3Config(DecoderConfig):
    """Gemma 3's choices; ``rope_theta`` is the global layers' base, ``rope_local_theta`` the
    sliding layers'. ``layer_types`` names each layer's kind (``None``: 5 sliding, 1 global)."""

    vocab_size: int = 262144
    context_length: int = 32768
    norm: str = "gemma_rmsnorm"
    norm_eps: float = 1e-6
    feed_forward: str = "geglu"
    rope_theta: float = 1000000.0
    qk_norm: bool = True
    tie_weights: bool = True
    post_norms: bool = True
    scale_embeddings: bool = True
    sliding_window: int = 512  # keys a local layer's query sees, itself included
    rope_local_theta: float = 10000.0  # RoPE base of the sliding layers
    query_pre_attn_scalar: int = 256  # scores are scaled by its inverse square root
    layer_types: tuple[str, ...] | None = None  # "sliding_attention" / "full_attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention_bias:
            raise value_error("attention_bias", "attention_bias must be False: Gemma 3 has no "
                                                "attention biases")
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", gemma3_layer_types(self.n_layers))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.n_layers:
            raise value_error("layer_types", f"layer_types must name {self.n_layers} layers, "
                                             f"got {len(self.layer_types)}")
        for kind in self.layer_types:
            check_choice("layer_types", kind, (SLIDING, FULL))
        check_int("sliding_window", self.sliding_window, low=1)
        check_float("rope_local_theta", self.rope_local_theta, low=1, low_open=True)
        # transformers' Gemma3TextConfig takes an int only: a whole float becomes one.
        scalar = self.query_pre_attn_scalar
        if isinstance(scalar, float) and scalar.is_integer():
            object.__setattr__(self, "query_pre_attn_scalar", int(scalar))
        check_int("query_pre_attn_scalar", self.query_pre_attn_scalar, low=1)

    def layer(self, index: int) -> LayerSpec:
        if self.layer_types[index] == SLIDING:
            return LayerSpec(attention="sliding_gqa", feed_forward=self.feed_forward,
                             rope="local")
        return LayerSpec(attention=self.attention, feed_forward=self.feed_forward)

    def attention_scale(self) -> float:
        return self.query_pre_attn_scalar**-0.5

    def rope_specs(self) -> dict[str, RopeSpec]:
        return {"default": RopeSpec(self.head_dim, self.rope_theta, self.rope_scaling),
                "local": RopeSpec(self.head_dim, self.rope_local_theta)}


GEMMA3_PRESETS: dict[str, Gemma3Config] = {
    # Published sizes (Hugging Face config.json of google/gemma-3-270m and gemma-3-1b-pt).
    "gemma3-270m": Gemma3Config(emb_dim=640, n_layers=18, n_heads=4, n_kv_heads=1,
                                head_dim=256, hidden_dim=2048),
    "gemma3-1b": Gemma3Config(emb_dim=1152, n_layers=26, n_heads=4, n_kv_heads=1,
                              head_dim=256, hidden_dim=6912),
    # Small ones for a laptop CPU (GPT-2's BPE): one global layer after five local ones.
    "gemma3-nano": Gemma3Config(vocab_size=50257, context_length=64, emb_dim=48, n_layers=6,
                                n_heads=4, n_kv_heads=1, head_dim=16, hidden_dim=128,
                                sliding_window=16, query_pre_attn_scalar=16),
    "gemma3-micro": Gemma3Config(vocab_size=50257, context_length=128, emb_dim=128,
                                 n_layers=6, n_heads=4, n_kv_heads=1, head_dim=32,
                                 hidden_dim=384, sliding_window=32,
                                 query_pre_attn_scalar=32),
}

# Llama's names, with Gemma's four norms per block and the two QK-norms.
GEMMA3_HF_NAMES: dict[str, str] = {
    **LLAMA_HF_NAMES,
    "trf_blocks.{i}.post_norm1": "model.layers.{i}.post_attention_layernorm",
    "trf_blocks.{i}.norm2": "model.layers.{i}.pre_feedforward_layernorm",
    "trf_blocks.{i}.post_norm2": "model.layers.{i}.post_feedforward_layernorm",
    "trf_blocks.{i}.att.q_norm": "model.layers.{i}.self_attn.q_norm",
    "trf_blocks.{i}.att.k_norm": "model.layers.{i}.self_attn.k_norm",
}


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, Any, float]:
    """Global base, global scaling and local base, from either spelling of config.json."""
    params = hf.get("rope_parameters") or {}
    if FULL in params or SLIDING in params:  # transformers 5: nested by layer kind
        theta, scaling = rope_from_hf({"rope_parameters": params.get(FULL) or {}})
        local, local_scaling = rope_from_hf({"rope_parameters": params.get(SLIDING) or {}})
        if local_scaling is not None:
            raise value_error("config", "config rope_parameters of sliding_attention must be "
                                        "'default'")
        return theta, scaling, local
    theta, scaling = rope_from_hf({"rope_theta": hf.get("rope_theta", 1000000.0),
                                   "rope_scaling": hf.get("rope_scaling")})
    return theta, scaling, float(hf.get("rope_local_base_freq", 10000.0))


def config_from_hf(hf: Mapping[str, Any]) -> Gemma3Config:
    """A ``Gemma3Config`` from a ``Gemma3ForCausalLM`` (``gemma3_text``) ``config.json``: the
    shared decoder fields, with Gemma's defaults, RoPE bases and layer kinds layered on."""
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if hf.get(name) is not None:
            raise value_error("config", f"config {name} must be null (Gemma 2's soft-capping "
                                        f"is not Gemma 3's), got {hf[name]!r}")
    if hf.get("use_bidirectional_attention"):
        raise value_error("config", "config use_bidirectional_attention must be false: a "
                                    "causal model")
    theta, scaling, local = _rope_from_hf(hf)
    rope_keys = ("rope_parameters", "rope_scaling", "rope_theta")
    shared = {"head_dim": 256, "tie_word_embeddings": True,  # transformers' Gemma 3 defaults
              **{key: value for key, value in hf.items() if key not in rope_keys}}
    fields = decoder_fields_from_hf(shared, activation="gelu_pytorch_tanh")
    layer_types = hf.get("layer_types") or gemma3_layer_types(
        fields["n_layers"], hf.get("sliding_window_pattern", 6))
    return Gemma3Config(**{**fields, "rope_theta": theta, "rope_scaling": scaling},
                        rope_local_theta=local, sliding_window=hf.get("sliding_window") or 4096,
                        query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
                        layer_types=tuple(layer_types))


def config_to_hf(cfg: Gemma3Config) -> dict[str, Any]:
    """The ``config.json`` of a ``Gemma3ForCausalLM``: the shared fields, and Gemma's."""
    return {**decoder_fields_to_hf(cfg, HF_LAYOUT,
                                   activation=("hidden_activation", "gelu_pytorch_tanh")),
            "rope_local_base_freq": cfg.rope_local_theta, "sliding_window": cfg.sliding_window,
            "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
            "layer_types": list(cfg.layer_types), "final_logit_softcapping": None,
            "attn_logit_softcapping": None}


HF_LAYOUT = HFLayout(model_type="gemma3_text", architecture="Gemma3ForCausalLM",
                     names=GEMMA3_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="Gemma 3")
FAMILY = Family(name="gemma3", config_class=Gemma3Config, model_class=DecoderModel,
                presets=GEMMA3_PRESETS, layout=HF_LAYOUT, chat_format=Gemma3ChatFormat)
