"""GPT-OSS (OpenAI, 2025): attention sinks, banded and full layers in turn, clamped SwiGLU experts.

What GPT-OSS chooses, on top of the modern decoder:

- grouped-query attention with biases on all four projections and an attention sink per head
  (``newest/sinks.py``: a learned logit in every softmax's denominator, so a head may attend
  to nothing);
- layers alternate: even layers see a band of ``sliding_window`` = 128 positions (their KV
  cache is a ring of 128 slots, ``modern/sliding_window.py``), odd layers the whole past;
- every feed-forward is a mixture of experts (``newest/clamped_swiglu.py``): a biased router
  that keeps the top 4 logits and takes the softmax over them, experts with biases and the
  clamped SwiGLU (``alpha`` 1.702, ``limit`` 7.0), their weights stacked;
- RMSNorm (eps 1e-5) before each branch, RoPE base 150,000 stretched by YaRN
  (``modern/rope.py``) from the 4,096 positions of pretraining to 131,072, an untied output head;
- o200k tokens with the harmony special tokens, and the harmony chat format
  (``newest/harmony.py``).

>>> cfg = GptOssConfig.from_name("gpt-oss-20b")
>>> cfg.layer(0).attention, cfg.layer(1).attention, cfg.layer(1).feed_forward
('sink_sliding_gqa', 'sink_gqa', 'clamped_swiglu_moe')
>>> cfg.n_experts, cfg.n_experts_per_token, cfg.sliding_window, cfg.rope_scaling.factor
(32, 4, 128, 32.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..machinery.checks import check_choice, check_float, check_int, value_error
from ..modern.components import ATTENTIONS, FEED_FORWARDS
from ..modern.config import DecoderConfig, LayerSpec
from ..modern.decoder import DecoderModel
from ..modern.family import Family, HFLayout
from ..modern.hf import decoder_fields_from_hf, decoder_fields_to_hf, rope_from_hf, rope_to_hf
from ..modern.llama import LLAMA_HF_NAMES
from ..modern.rope import YarnRopeScaling
from .clamped_swiglu import ClampedSwiGLUMoE
from .harmony import HarmonyChatFormat
from .sinks import SinkAttention

__all__ = ["GptOssConfig", "GPT_OSS_PRESETS", "GPT_OSS_HF_NAMES", "GPT_OSS_YARN",
           "gpt_oss_layer_types"]

SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' names for the two kinds


def gpt_oss_layer_types(n_layers: int) -> tuple[str, ...]:
    """Banded, full, banded, full, ...: GPT-OSS's alternation (layer 0 is banded)."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n_layers))


def _sink_attention(cfg: Any, window: int | None) -> SinkAttention:
    return SinkAttention(cfg.emb_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, window=window,
                         qkv_bias=cfg.attention_bias, out_bias=cfg.attention_bias,
                         dropout=cfg.drop_rate, kernel=cfg.attn_kernel,
                         scale=cfg.attention_scale())


# The components GPT-OSS adds, by name, beside the modern decoder's (``modern/components``).
ATTENTIONS["sink_gqa"] = lambda cfg, spec: _sink_attention(cfg, None)
ATTENTIONS["sink_sliding_gqa"] = lambda cfg, spec: _sink_attention(cfg, cfg.sliding_window)
FEED_FORWARDS["clamped_swiglu_moe"] = lambda cfg, spec: ClampedSwiGLUMoE(
    cfg.emb_dim, cfg.hidden_dim, cfg.n_experts, cfg.n_experts_per_token,
    alpha=cfg.swiglu_alpha, limit=cfg.swiglu_limit)


@dataclass(frozen=True)
class GptOssConfig(DecoderConfig):
    """GPT-OSS's choices and gpt-oss-20b's sizes; ``hidden_dim`` is one expert's inner width.

    ``layer_types`` names each layer's kind (``None``: banded and full in turn, from layer 0).
    """

    vocab_size: int = 201088  # o200k_harmony: 199,998 ranks and the specials after them
    context_length: int = 131072
    emb_dim: int = 2880
    n_layers: int = 24
    n_heads: int = 64
    n_kv_heads: int = 8
    head_dim: int | None = 64
    hidden_dim: int = 2880
    norm_eps: float = 1e-5
    rope_theta: float = 150000.0
    attention: str = "sink_gqa"
    feed_forward: str = "clamped_swiglu_moe"
    attention_bias: bool = True
    n_experts: int = 32  # experts per layer
    n_experts_per_token: int = 4  # experts each token runs (top k)
    swiglu_alpha: float = 1.702  # the gate's sigmoid gain
    swiglu_limit: float = 7.0  # the clamp on the gate (above) and the linear half (both sides)
    sliding_window: int = 128  # positions a banded layer's query sees, itself included
    layer_types: tuple[str, ...] | None = None  # "sliding_attention" / "full_attention"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, wrong in (("qk_norm", self.qk_norm), ("post_norms", self.post_norms),
                            ("scale_embeddings", self.scale_embeddings)):
            if wrong:
                raise value_error(name, f"{name} must be False: GPT-OSS has none")
        if self.aux_loss_coef:
            raise value_error("aux_loss_coef", f"aux_loss_coef must be 0: GPT-OSS trains "
                                               f"without the load-balancing loss (as "
                                               f"transformers does by default), got "
                                               f"{self.aux_loss_coef!r}")
        check_choice("attention", self.attention, ("sink_gqa",))
        check_choice("feed_forward", self.feed_forward, ("clamped_swiglu_moe",))
        check_int("n_experts", self.n_experts, low=1)
        check_int("n_experts_per_token", self.n_experts_per_token, low=1, high=self.n_experts)
        check_float("swiglu_alpha", self.swiglu_alpha, low=0, low_open=True)
        check_float("swiglu_limit", self.swiglu_limit, low=0, low_open=True)
        check_int("sliding_window", self.sliding_window, low=1)
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", gpt_oss_layer_types(self.n_layers))
        if isinstance(self.layer_types, str):
            raise value_error("layer_types", f"layer_types must be a sequence of layer kinds, "
                                             f"got the str {self.layer_types!r}")
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.n_layers:
            raise value_error("layer_types", f"layer_types must name {self.n_layers} layers, "
                                             f"got {len(self.layer_types)}")
        for kind in self.layer_types:
            check_choice("layer_types", kind, (SLIDING, FULL))

    def layer(self, index: int) -> LayerSpec:
        banded = self.layer_types[index] == SLIDING
        return LayerSpec(attention="sink_sliding_gqa" if banded else "sink_gqa",
                         feed_forward=self.feed_forward)


# The published models' YaRN: trained at 4,096 positions, stretched 32 times to 131,072.
GPT_OSS_YARN = YarnRopeScaling(factor=32.0, original_context_length=4096, beta_fast=32.0,
                               beta_slow=1.0, truncate=False)

GPT_OSS_PRESETS: dict[str, GptOssConfig] = {
    # Published sizes (Hugging Face config.json of openai/gpt-oss-20b and gpt-oss-120b).
    "gpt-oss-20b": GptOssConfig(rope_scaling=GPT_OSS_YARN),
    "gpt-oss-120b": GptOssConfig(n_layers=36, n_experts=128, rope_scaling=GPT_OSS_YARN),
    # Small for a laptop CPU (GPT-2's BPE): banded and full layers in turn, 8 experts, 2 run;
    # like the published models, YaRN stretches a shorter original context (16) 4 times.
    "gpt-oss-nano": GptOssConfig(vocab_size=50257, context_length=64, emb_dim=48, n_layers=4,
                                 n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=32,
                                 rope_theta=10000.0, n_experts=8, n_experts_per_token=2,
                                 sliding_window=16,
                                 rope_scaling=YarnRopeScaling(factor=4.0,
                                                              original_context_length=16,
                                                              truncate=False)),
}

# Llama's names for the embedding, norms, attention and head; the sinks, the router and the
# stacked experts (whose tensors keep their names: gate_up_proj, gate_up_proj_bias, ...).
GPT_OSS_HF_NAMES: dict[str, str] = {
    **{ours: theirs for ours, theirs in LLAMA_HF_NAMES.items() if ".ff." not in ours},
    "trf_blocks.{i}.att.sinks": "model.layers.{i}.self_attn.sinks",
    "trf_blocks.{i}.ff.gate": "model.layers.{i}.mlp.router",
    "trf_blocks.{i}.ff.experts": "model.layers.{i}.mlp.experts",
}

# transformers' GptOssConfig defaults (gpt-oss-120b's sizes), for keys a config.json leaves out.
_HF_DEFAULTS = {"num_hidden_layers": 36, "num_local_experts": 128, "vocab_size": 201088,
                "hidden_size": 2880, "intermediate_size": 2880, "head_dim": 64,
                "num_attention_heads": 64, "num_key_value_heads": 8, "sliding_window": 128,
                "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
                "num_experts_per_tok": 4, "swiglu_alpha": 1.702, "swiglu_limit": 7.0,
                "attention_bias": True, "tie_word_embeddings": False}
_ROPE_KEYS = ("rope_parameters", "rope_scaling", "rope_theta")


# transformers' GPT-OSS RoPE when a config.json gives none: YaRN, as the published models.
_HF_YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
            "truncate": False, "original_max_position_embeddings": 4096}


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, YarnRopeScaling | None]:
    """RoPE base and scaling from either spelling (``rope_parameters``, or the published
    ``rope_theta`` + ``rope_scaling``); neither given: transformers' YaRN default."""
    rope = {"rope_theta": 150000.0, **{key: hf[key] for key in _ROPE_KEYS if key in hf}}
    if not (rope.get("rope_parameters") or rope.get("rope_scaling")):
        rope["rope_scaling"] = _HF_YARN
    theta, scaling = rope_from_hf(rope)
    if scaling is not None and not isinstance(scaling, YarnRopeScaling):
        raise value_error("config", "config rope_type must be 'default' or 'yarn' for GPT-OSS, "
                                    "got 'llama3'")
    return theta, scaling


def config_from_hf(hf: Mapping[str, Any]) -> GptOssConfig:
    """A ``GptOssConfig`` from a ``GptOssForCausalLM`` ``config.json``."""
    # An explicit null window: banded layers that see everything, as in transformers.
    unbanded = "sliding_window" in hf and hf["sliding_window"] is None
    hf = {**_HF_DEFAULTS, **{key: value for key, value in hf.items() if value is not None}}
    if unbanded:
        hf["sliding_window"] = hf["max_position_embeddings"]
    theta, scaling = _rope_from_hf(hf)
    fields = decoder_fields_from_hf({k: v for k, v in hf.items() if k not in _ROPE_KEYS})
    n_layers = fields["n_layers"]
    return GptOssConfig(**{**fields, "rope_theta": theta, "rope_scaling": scaling},
                        n_experts=hf["num_local_experts"],
                        n_experts_per_token=hf["num_experts_per_tok"],
                        swiglu_alpha=float(hf["swiglu_alpha"]),
                        swiglu_limit=float(hf["swiglu_limit"]),
                        sliding_window=hf["sliding_window"],
                        layer_types=tuple(hf.get("layer_types") or gpt_oss_layer_types(n_layers)))


def config_to_hf(cfg: GptOssConfig) -> dict[str, Any]:
    """The ``config.json`` of a ``GptOssForCausalLM``, YaRN in the published spelling."""
    shared = {k: v for k, v in decoder_fields_to_hf(cfg, HF_LAYOUT).items()
              if k not in _ROPE_KEYS and k != "mlp_bias"}
    # Default RoPE spelt out: transformers reads a missing (or null) one as YaRN.
    rope = (rope_to_hf(cfg.rope_theta, cfg.rope_scaling) if cfg.rope_scaling is not None else
            {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}})
    return {**shared, **rope,
            "num_local_experts": cfg.n_experts, "num_experts_per_tok": cfg.n_experts_per_token,
            "swiglu_alpha": cfg.swiglu_alpha, "swiglu_limit": cfg.swiglu_limit,
            "sliding_window": cfg.sliding_window, "layer_types": list(cfg.layer_types),
            "router_aux_loss_coef": 0.001, "output_router_logits": False}


HF_LAYOUT = HFLayout(model_type="gpt_oss", architecture="GptOssForCausalLM",
                     names=GPT_OSS_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="GPT-OSS")
FAMILY = Family(name="gpt_oss", config_class=GptOssConfig, model_class=DecoderModel,
                presets=GPT_OSS_PRESETS, layout=HF_LAYOUT, chat_format=HarmonyChatFormat)
