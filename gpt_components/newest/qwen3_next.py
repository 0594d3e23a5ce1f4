"""Qwen3-Next (Alibaba, 2025): a hybrid of Gated DeltaNet and gated attention, with 512 experts.

Three of every four layers are linear attention (``gated_deltanet.GatedDeltaNet``: a state of
fixed size, no KV cache that grows), the fourth is full attention (``gated_attention``: GQA with
QK-norm, an output gate per head and RoPE on a quarter of each head's features). Every
feed-forward is a mixture of 512 experts of which 10 run, plus one shared expert behind a
sigmoid gate (``shared_expert_moe``). Every RMSNorm of the residual stream and the QK-norms are
zero-centred (``(1 + weight)``, Gemma's form, weight initialised at zero), so weight decay pulls
them towards one. The layer pattern is ``layer_types`` (or, left None, full attention at every
``full_attention_interval``-th layer); a model's cache is one ``CacheStack`` holding the full
layers' keys and values and the linear layers' states.

The components this family adds are registered in ``modern.components``' tables by importing
this file, as declaring a family registers it: ``gated_attention``, ``gated_deltanet`` and
``shared_expert_moe``.

>>> cfg = Qwen3NextConfig.from_name("qwen3-next-80b-a3b")
>>> [cfg.layer(i).attention for i in range(4)], cfg.rotary_dim
(['gated_deltanet', 'gated_deltanet', 'gated_deltanet', 'gated_attention'], 64)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..machinery.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    type_error,
    value_error,
)
from ..modern.chat import Qwen3ChatFormat
from ..modern.components import ATTENTIONS, FEED_FORWARDS, make_norm
from ..modern.config import DecoderConfig, LayerSpec, RopeSpec
from ..modern.decoder import DecoderModel
from ..modern.family import Family, HFLayout
from ..modern.hf import decoder_fields_from_hf, decoder_fields_to_hf
from ..modern.qwen3_moe import QWEN3_MOE_HF_NAMES
from .gated_attention import GatedAttention
from .gated_deltanet import DELTA_RULE_KERNELS, GatedDeltaNet
from .shared_expert_moe import GatedSharedExpertMoE

__all__ = ["QWEN3_NEXT_LAYER_KINDS", "Qwen3NextConfig", "QWEN3_NEXT_PRESETS",
           "QWEN3_NEXT_HF_NAMES", "deltanet_hf_names", "hybrid_fields_from_hf",
           "hybrid_fields_to_hf", "without_mtp"]

QWEN3_NEXT_LAYER_KINDS = ("linear_attention", "full_attention")


def _gated_attention(cfg: Any, spec: LayerSpec) -> GatedAttention:
    return GatedAttention(cfg.emb_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                          rotary_dim=cfg.rotary_dim,
                          qk_norm=(lambda dim: make_norm(cfg, dim)) if cfg.qk_norm else False,
                          qkv_bias=cfg.attention_bias, out_bias=cfg.attention_bias,
                          dropout=cfg.drop_rate, kernel=cfg.attn_kernel,
                          scale=cfg.attention_scale())


def _gated_deltanet(cfg: Any, spec: LayerSpec) -> GatedDeltaNet:
    return GatedDeltaNet(cfg.emb_dim, cfg.linear_key_heads, cfg.linear_value_heads,
                         cfg.linear_key_head_dim, cfg.linear_value_head_dim,
                         conv_kernel=cfg.linear_conv_kernel, norm_eps=cfg.norm_eps,
                         chunk_size=cfg.chunk_size, kernel=cfg.deltanet_kernel,
                         projections=cfg.deltanet_projections)


def _shared_expert_moe(cfg: Any, spec: LayerSpec) -> GatedSharedExpertMoE:
    return GatedSharedExpertMoE(cfg.emb_dim, cfg.moe_hidden_dim, cfg.n_experts,
                                cfg.n_experts_per_token,
                                shared_hidden_dim=cfg.shared_expert_hidden_dim,
                                norm_topk_prob=cfg.norm_topk_prob)


ATTENTIONS["gated_attention"] = _gated_attention
ATTENTIONS["gated_deltanet"] = _gated_deltanet
FEED_FORWARDS["shared_expert_moe"] = _shared_expert_moe


@dataclass(frozen=True)
class Qwen3NextConfig(DecoderConfig):
    """Qwen3-Next's choices and fields; defaults are Qwen3-Next-80B-A3B's."""

    # How the DeltaNet's input projections are stored: fused per key head (Qwen3-Next's).
    deltanet_projections: ClassVar[str] = "grouped"

    vocab_size: int = 151936
    context_length: int = 262144
    emb_dim: int = 2048
    n_layers: int = 48
    n_heads: int = 16
    n_kv_heads: int = 2
    head_dim: int | None = 256
    hidden_dim: int = 5120  # the dense feed-forward's width (layers without experts)
    norm: str = "gemma_rmsnorm"  # zero-centred: (1 + weight)
    norm_eps: float = 1e-6
    rope_theta: float = 10000000.0
    qk_norm: bool = True
    attention: str = "gated_attention"  # the full layers'
    partial_rotary_factor: float = 0.25  # the share of each head's features RoPE turns
    layer_types: tuple[str, ...] | None = None  # per layer, a kind; None: the interval's
    full_attention_interval: int = 4  # with layer_types None: every this-many-th layer is full
    linear_key_heads: int = 16  # Gated DeltaNet's query/key heads
    linear_value_heads: int = 32  # its value heads (and states), a multiple of the key heads
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel: int = 4  # the short convolution's width
    chunk_size: int = 64  # tokens the chunked rule takes at once
    deltanet_kernel: str = "chunked"  # or "recurrent" (the textbook, one token at a time)
    n_experts: int = 512  # experts per sparse layer; 0: every layer dense
    n_experts_per_token: int = 10
    moe_hidden_dim: int = 512  # inner width of one expert
    shared_expert_hidden_dim: int = 512  # inner width of the gated shared expert
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    aux_loss_coef: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float("partial_rotary_factor", self.partial_rotary_factor, low=0, high=1,
                    low_open=True)
        rotary = int(self.head_dim * self.partial_rotary_factor)
        if rotary < 2 or rotary % 2:
            raise value_error("partial_rotary_factor", f"partial_rotary_factor must turn an "
                                                       f"even number >= 2 of head_dim="
                                                       f"{self.head_dim} features, got "
                                                       f"{self.partial_rotary_factor!r} "
                                                       f"({rotary})")
        check_int("full_attention_interval", self.full_attention_interval, low=1)
        if self.layer_types is not None:
            if isinstance(self.layer_types, str) or not isinstance(self.layer_types,
                                                                   (list, tuple)):
                raise type_error("layer_types", f"layer_types must be a sequence of "
                                                f"{list(QWEN3_NEXT_LAYER_KINDS)} or None, got "
                                                f"{self.layer_types!r}")
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            for kind in self.layer_types:
                check_choice("layer_types", kind, QWEN3_NEXT_LAYER_KINDS)
            if len(self.layer_types) != self.n_layers:
                raise value_error("layer_types", f"layer_types must give one kind per layer "
                                                 f"(n_layers={self.n_layers}), got "
                                                 f"{len(self.layer_types)}")
        for name in ("linear_key_heads", "linear_value_heads", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_conv_kernel", "chunk_size",
                     "moe_hidden_dim", "shared_expert_hidden_dim", "decoder_sparse_step"):
            check_int(name, getattr(self, name), low=1)
        if self.linear_value_heads % self.linear_key_heads:
            raise value_error("linear_value_heads", f"linear_value_heads must be a multiple of "
                                                    f"linear_key_heads={self.linear_key_heads},"
                                                    f" got {self.linear_value_heads}")
        check_choice("deltanet_kernel", self.deltanet_kernel, DELTA_RULE_KERNELS)
        check_int("n_experts", self.n_experts, low=0)
        if self.n_experts:
            check_int("n_experts_per_token", self.n_experts_per_token, low=1,
                      high=self.n_experts)
        check_bool("norm_topk_prob", self.norm_topk_prob)
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        for index in self.mlp_only_layers:
            check_int("mlp_only_layers", index, low=0, high=self.n_layers - 1)

    @property
    def rotary_dim(self) -> int:
        """The features of each head RoPE turns (the first ones)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def layer_kind(self, index: int) -> str:
        """``"linear_attention"`` or ``"full_attention"``, for block ``index``."""
        if self.layer_types is not None:
            return self.layer_types[index]
        return "full_attention" if (index + 1) % self.full_attention_interval == 0 \
            else "linear_attention"

    def is_sparse(self, index: int) -> bool:
        """Whether block ``index`` has a mixture of experts (transformers' rule)."""
        return (self.n_experts > 0 and index not in self.mlp_only_layers
                and (index + 1) % self.decoder_sparse_step == 0)

    def layer(self, index: int) -> LayerSpec:
        linear = self.layer_kind(index) == "linear_attention"
        return LayerSpec(attention="gated_deltanet" if linear else self.attention,
                         feed_forward="shared_expert_moe" if self.is_sparse(index)
                         else self.feed_forward,
                         rope=None if linear else "default")

    def rope_specs(self) -> dict[str, RopeSpec]:
        return {"default": RopeSpec(self.rotary_dim, self.rope_theta, self.rope_scaling)}


_NANO = {"vocab_size": 50257, "context_length": 64, "emb_dim": 48, "n_layers": 4, "n_heads": 4,
         "n_kv_heads": 2, "head_dim": 16, "hidden_dim": 128, "rope_theta": 10000.0,
         "linear_key_heads": 2, "linear_value_heads": 4, "linear_key_head_dim": 8,
         "linear_value_head_dim": 8}

QWEN3_NEXT_PRESETS: dict[str, Qwen3NextConfig] = {
    # Published size (config.json of Qwen/Qwen3-Next-80B-A3B-Instruct): the defaults.
    "qwen3-next-80b-a3b": Qwen3NextConfig(),
    # Small for a laptop CPU (GPT-2's BPE): three DeltaNet layers, then one gated attention;
    # 8 experts of which 2 run, and the shared one.
    "qwen3-next-nano": Qwen3NextConfig(**_NANO, n_experts=8, n_experts_per_token=2,
                                       moe_hidden_dim=32, shared_expert_hidden_dim=32),
}


def deltanet_hf_names(matrices: tuple[str, ...]) -> dict[str, str]:
    """Our DeltaNet layers' names to the Hub's (``linear_attn``), for its input ``matrices``.

    The output projection is ``W_out`` here: the hybrid's attention layers already give
    ``out_proj`` its Hub name (``self_attn.o_proj``).
    """
    ours = "trf_blocks.{i}.att"
    theirs = "model.layers.{i}.linear_attn"
    return {**{f"{ours}.{m}": f"{theirs}.{m}" for m in (*matrices, "conv1d", "norm")},
            f"{ours}.W_out": f"{theirs}.out_proj",
            f"{ours}.dt_bias": f"{theirs}.dt_bias", f"{ours}.A_log": f"{theirs}.A_log"}


# Qwen3-MoE's names (Llama's, QK-norms, router, experts), the DeltaNet layers', the shared expert.
QWEN3_NEXT_HF_NAMES: dict[str, str] = {
    **QWEN3_MOE_HF_NAMES,
    **deltanet_hf_names(("in_proj_qkvz", "in_proj_ba")),
    "trf_blocks.{i}.ff.shared_expert.fc1": "model.layers.{i}.mlp.shared_expert.gate_proj",
    "trf_blocks.{i}.ff.shared_expert.fc2": "model.layers.{i}.mlp.shared_expert.up_proj",
    "trf_blocks.{i}.ff.shared_expert.fc3": "model.layers.{i}.mlp.shared_expert.down_proj",
    "trf_blocks.{i}.ff.shared_expert_gate": "model.layers.{i}.mlp.shared_expert_gate",
}


def hybrid_fields_from_hf(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The fields Qwen3-Next and Qwen3.5 share, from a ``config.json`` (transformers' defaults
    where a key is missing)."""
    hf = {"head_dim": 256, "num_key_value_heads": 2, **hf}
    fields = decoder_fields_from_hf(hf)
    rope = hf.get("rope_parameters") or {}
    interval = hf.get("full_attention_interval", 4)
    layer_types = hf.get("layer_types")
    if layer_types is not None:
        layer_types = tuple(layer_types)
        if layer_types == tuple("full_attention" if (i + 1) % interval == 0
                                else "linear_attention" for i in range(len(layer_types))):
            layer_types = None  # the interval's own pattern, spelled out by transformers
    return {**fields, "partial_rotary_factor": float(rope.get(
                "partial_rotary_factor", hf.get("partial_rotary_factor", 0.25))),
            "layer_types": layer_types, "full_attention_interval": interval,
            "linear_key_heads": hf.get("linear_num_key_heads", 16),
            "linear_value_heads": hf.get("linear_num_value_heads", 32),
            "linear_key_head_dim": hf.get("linear_key_head_dim", 128),
            "linear_value_head_dim": hf.get("linear_value_head_dim", 128),
            "linear_conv_kernel": hf.get("linear_conv_kernel_dim", 4)}


def hybrid_fields_to_hf(cfg: Qwen3NextConfig, layout: HFLayout) -> dict[str, Any]:
    """The ``config.json`` keys Qwen3-Next and Qwen3.5 share."""
    pattern = ({"layer_types": list(cfg.layer_types)} if cfg.layer_types is not None
               else {"full_attention_interval": cfg.full_attention_interval})
    return {**decoder_fields_to_hf(cfg, layout), **pattern,
            "partial_rotary_factor": cfg.partial_rotary_factor,
            "linear_num_key_heads": cfg.linear_key_heads,
            "linear_num_value_heads": cfg.linear_value_heads,
            "linear_key_head_dim": cfg.linear_key_head_dim,
            "linear_value_head_dim": cfg.linear_value_head_dim,
            "linear_conv_kernel_dim": cfg.linear_conv_kernel}


def without_mtp(key: str) -> str | None:
    """A checkpoint's tensor name, or None for the multi-token-prediction head (``mtp.*``),
    which the published checkpoints carry for speculative decoding and the model never runs."""
    return None if key.startswith("mtp.") else key


def config_from_hf(hf: Mapping[str, Any]) -> Qwen3NextConfig:
    """A ``Qwen3NextConfig`` from a ``Qwen3NextForCausalLM`` ``config.json``."""
    return Qwen3NextConfig(
        **hybrid_fields_from_hf(hf), n_experts=hf.get("num_experts", 512),
        n_experts_per_token=hf.get("num_experts_per_tok", 10),
        moe_hidden_dim=hf.get("moe_intermediate_size", 512),
        shared_expert_hidden_dim=hf.get("shared_expert_intermediate_size", 512),
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        decoder_sparse_step=hf.get("decoder_sparse_step", 1),
        mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
        aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))


def config_to_hf(cfg: Qwen3NextConfig) -> dict[str, Any]:
    return {**hybrid_fields_to_hf(cfg, HF_LAYOUT), "num_experts": cfg.n_experts,
            "num_experts_per_tok": cfg.n_experts_per_token,
            "moe_intermediate_size": cfg.moe_hidden_dim,
            "shared_expert_intermediate_size": cfg.shared_expert_hidden_dim,
            "norm_topk_prob": cfg.norm_topk_prob, "decoder_sparse_step": cfg.decoder_sparse_step,
            "mlp_only_layers": list(cfg.mlp_only_layers),
            "router_aux_loss_coef": cfg.aux_loss_coef}


HF_LAYOUT = HFLayout(model_type="qwen3_next", architecture="Qwen3NextForCausalLM",
                     names=QWEN3_NEXT_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="Qwen3-Next", canonical=without_mtp)
FAMILY = Family(name="qwen3_next", config_class=Qwen3NextConfig, model_class=DecoderModel,
                presets=QWEN3_NEXT_PRESETS, layout=HF_LAYOUT, chat_format=Qwen3ChatFormat)
