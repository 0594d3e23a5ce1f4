"""DeepSeek-V3: multi-head latent attention and a mixture of experts with shared experts.

What DeepSeek-V3 chooses, on top of the modern decoder:

- ``MultiHeadLatentAttention`` in every layer: a cache of one latent and one shared RoPE key
  per token; RoPE on ``qk_rope_head_dim`` features only, in interleaved pairs (split halves
  when ``rope_interleave`` is false, as some converted checkpoints have it), stretched by YaRN
  in the published configuration (``factor`` 40 over 4,096 positions), whose magnitude
  correction also scales the softmax (``mscale_all_dim``);
- dense SwiGLU feed-forwards in the first ``first_k_dense_replace`` layers, then mixtures:
  sigmoid router scores with a selection bias (``e_score_correction_bias``), the experts chosen
  within the ``topk_group`` best of ``n_group`` groups, gates renormalised and multiplied by
  ``routed_scaling_factor``, plus ``n_shared_experts`` always-on experts; no auxiliary loss.

>>> cfg = DeepseekV3Config.from_name("deepseek-v3-nano")
>>> cfg.layer(0).feed_forward, cfg.layer(1).feed_forward, cfg.layer(1).attention
('swiglu', 'deepseek_moe', 'mla')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..machinery.checks import check_bool, check_float, check_int, value_error
from .config import DecoderConfig, LayerSpec, RopeSpec
from .decoder import DecoderModel
from .family import Family, HFLayout
from .hf import decoder_fields_from_hf, decoder_fields_to_hf
from .llama import LLAMA_HF_NAMES
from .rope import Llama3RopeScaling, YarnRopeScaling, yarn_mscale

__all__ = ["DeepseekV3Config", "DEEPSEEK_V3_PRESETS", "DEEPSEEK_V3_HF_NAMES"]


@dataclass(frozen=True)
class DeepseekV3Config(DecoderConfig):
    """DeepSeek-V3's choices; ``hidden_dim`` is the dense layers' width, ``head_dim`` unused."""

    vocab_size: int = 129280
    context_length: int = 4096
    norm_eps: float = 1e-6
    attention: str = "mla"
    rope_theta: float = 10000.0
    q_lora_rank: int | None = 1536  # queries' bottleneck (None: one full projection)
    kv_lora_rank: int = 512  # the cached latent's width
    qk_nope_head_dim: int = 128  # per-head key/query features without RoPE
    qk_rope_head_dim: int = 64  # per-head query features with RoPE; one shared key of it
    v_head_dim: int = 128
    n_experts: int = 256  # routed experts per sparse layer
    n_shared_experts: int = 1
    n_experts_per_token: int = 8
    moe_hidden_dim: int = 2048
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 3  # the first layers keep a dense feed-forward
    rope_interleave: bool = True  # RoPE pairs interleaved (x0, x1), (x2, x3)...; False: halves

    def __post_init__(self) -> None:
        object.__setattr__(self, "n_kv_heads", self.n_heads)  # MLA has no key/value heads
        object.__setattr__(self, "head_dim", self.qk_rope_head_dim)  # the RoPE table's width
        super().__post_init__()
        check_int("q_lora_rank", self.q_lora_rank, low=1, optional=True)
        for name in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim", "n_experts",
                     "moe_hidden_dim", "n_group"):
            check_int(name, getattr(self, name), low=1)
        check_int("n_shared_experts", self.n_shared_experts, low=0)
        check_int("first_k_dense_replace", self.first_k_dense_replace, low=0)
        check_int("n_experts_per_token", self.n_experts_per_token, low=1, high=self.n_experts)
        check_int("topk_group", self.topk_group, low=1, high=self.n_group)
        check_float("routed_scaling_factor", self.routed_scaling_factor, low=0, low_open=True)
        check_bool("rope_interleave", self.rope_interleave)
        if self.n_experts % self.n_group:
            raise value_error("n_group", f"n_group ({self.n_group}) must divide n_experts "
                                         f"({self.n_experts})")

    def layer(self, index: int) -> LayerSpec:
        dense = index < self.first_k_dense_replace
        return LayerSpec(attention=self.attention,
                         feed_forward=self.feed_forward if dense else "deepseek_moe")

    def rope_specs(self) -> dict[str, RopeSpec]:
        return {"default": RopeSpec(self.qk_rope_head_dim, self.rope_theta, self.rope_scaling)}

    def attention_scale(self) -> float | None:
        """``(qk_nope + qk_rope) ** -0.5``; under YaRN with ``mscale_all_dim``, times the square
        of its magnitude correction: MLA scales every feature's score, not only the rotated
        ones (DeepSeek's reference code, and transformers')."""
        scale = (self.qk_nope_head_dim + self.qk_rope_head_dim) ** -0.5
        scaling = self.rope_scaling
        if isinstance(scaling, YarnRopeScaling) and scaling.mscale_all_dim:
            scale *= yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2
        return scale


DEEPSEEK_V3_PRESETS: dict[str, DeepseekV3Config] = {
    # The published DeepSeek-V3 (and R1): 671B parameters, 37B active per token, its context
    # stretched by YaRN from 4,096 to 163,840 positions. Build it on the meta device.
    "deepseek-v3": DeepseekV3Config(
        vocab_size=129280, context_length=163840, emb_dim=7168, n_layers=61, n_heads=128,
        hidden_dim=18432, rope_scaling=YarnRopeScaling(
            factor=40.0, original_context_length=4096, beta_fast=32.0, beta_slow=1.0,
            mscale=1.0, mscale_all_dim=1.0)),
    # Small for a laptop CPU (GPT-2's BPE): one dense layer, then 8 experts (2 per token) in
    # 2 groups, one shared expert.
    "deepseek-v3-nano": DeepseekV3Config(
        vocab_size=50257, context_length=64, emb_dim=48, n_layers=3, n_heads=4,
        hidden_dim=128, q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8, n_experts=8, n_experts_per_token=2,
        moe_hidden_dim=32, n_group=2, topk_group=1, first_k_dense_replace=1),
}

_ATTENTION = "model.layers.{i}.self_attn"
DEEPSEEK_V3_HF_NAMES: dict[str, str] = {
    **{key: value for key, value in LLAMA_HF_NAMES.items() if ".att." not in key},
    "trf_blocks.{i}.att.W_query": f"{_ATTENTION}.q_proj",
    "trf_blocks.{i}.att.W_query_down": f"{_ATTENTION}.q_a_proj",
    "trf_blocks.{i}.att.q_norm": f"{_ATTENTION}.q_a_layernorm",
    "trf_blocks.{i}.att.W_query_up": f"{_ATTENTION}.q_b_proj",
    "trf_blocks.{i}.att.W_kv_down": f"{_ATTENTION}.kv_a_proj_with_mqa",
    "trf_blocks.{i}.att.kv_norm": f"{_ATTENTION}.kv_a_layernorm",
    "trf_blocks.{i}.att.W_kv_up": f"{_ATTENTION}.kv_b_proj",
    "trf_blocks.{i}.att.out_proj": f"{_ATTENTION}.o_proj",
    "trf_blocks.{i}.ff.gate": "model.layers.{i}.mlp.gate",
    "trf_blocks.{i}.ff.gate.score_bias": "model.layers.{i}.mlp.gate.e_score_correction_bias",
    # The routed experts, one tensor per expert: slices of our stacked ``SwiGLUExperts``.
    "trf_blocks.{i}.ff.experts.{e}.fc1": "model.layers.{i}.mlp.experts.{e}.gate_proj",
    "trf_blocks.{i}.ff.experts.{e}.fc2": "model.layers.{i}.mlp.experts.{e}.up_proj",
    "trf_blocks.{i}.ff.experts.{e}.fc3": "model.layers.{i}.mlp.experts.{e}.down_proj",
    "trf_blocks.{i}.ff.shared_experts.fc1": "model.layers.{i}.mlp.shared_experts.gate_proj",
    "trf_blocks.{i}.ff.shared_experts.fc2": "model.layers.{i}.mlp.shared_experts.up_proj",
    "trf_blocks.{i}.ff.shared_experts.fc3": "model.layers.{i}.mlp.shared_experts.down_proj",
}


def config_from_hf(hf: Mapping[str, Any]) -> DeepseekV3Config:
    """A ``DeepseekV3Config`` from a ``DeepseekV3ForCausalLM`` ``config.json``."""
    hf = {"head_dim": hf.get("qk_rope_head_dim", 64), **hf}
    fields = decoder_fields_from_hf(hf)
    if isinstance(fields["rope_scaling"], Llama3RopeScaling):
        raise value_error("config", "config rope_parameters must be of rope_type 'default' or "
                                    "'yarn' (DeepSeek-V3's), got 'llama3'")
    for name in ("head_dim", "n_kv_heads"):  # MLA's sizes replace them
        fields.pop(name)
    return DeepseekV3Config(
        **fields, q_lora_rank=hf.get("q_lora_rank"),
        kv_lora_rank=hf["kv_lora_rank"], qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"], v_head_dim=hf["v_head_dim"],
        n_experts=hf.get("n_routed_experts", hf.get("num_local_experts")),
        n_shared_experts=hf["n_shared_experts"], n_experts_per_token=hf["num_experts_per_tok"],
        moe_hidden_dim=hf["moe_intermediate_size"], n_group=hf["n_group"],
        topk_group=hf["topk_group"], routed_scaling_factor=hf["routed_scaling_factor"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        first_k_dense_replace=hf["first_k_dense_replace"],
        rope_interleave=bool(hf.get("rope_interleave", True)))


def config_to_hf(cfg: DeepseekV3Config) -> dict[str, Any]:
    return {**decoder_fields_to_hf(cfg, HF_LAYOUT), "rope_interleave": cfg.rope_interleave,
            "q_lora_rank": cfg.q_lora_rank, "kv_lora_rank": cfg.kv_lora_rank,
            "qk_nope_head_dim": cfg.qk_nope_head_dim, "qk_rope_head_dim": cfg.qk_rope_head_dim,
            "v_head_dim": cfg.v_head_dim, "n_routed_experts": cfg.n_experts,
            "n_shared_experts": cfg.n_shared_experts,
            "num_experts_per_tok": cfg.n_experts_per_token,
            "moe_intermediate_size": cfg.moe_hidden_dim, "n_group": cfg.n_group,
            "topk_group": cfg.topk_group, "routed_scaling_factor": cfg.routed_scaling_factor,
            "norm_topk_prob": cfg.norm_topk_prob,
            "first_k_dense_replace": cfg.first_k_dense_replace}


HF_LAYOUT = HFLayout(model_type="deepseek_v3", architecture="DeepseekV3ForCausalLM",
                     names=DEEPSEEK_V3_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="DeepSeek-V3")
FAMILY = Family(name="deepseek_v3", config_class=DeepseekV3Config, model_class=DecoderModel,
                presets=DEEPSEEK_V3_PRESETS, layout=HF_LAYOUT)
