"""Qwen3-MoE (Alibaba): Qwen3 with its feed-forwards replaced by mixtures of experts.

Everything but the feed-forward is Qwen3's (GQA with QK-norm, RoPE base 1,000,000). A sparse
layer's feed-forward is ``MoEFeedForward``: a softmax router over ``n_experts`` SwiGLU experts
of width ``moe_hidden_dim``, the ``n_experts_per_token`` best run for each token, their gates
renormalised to sum to one (``norm_topk_prob``). Which layers are sparse follows
``transformers``: every ``decoder_sparse_step``-th layer, except those in
``mlp_only_layers``, which keep a dense SwiGLU of ``hidden_dim``. Training adds the routers'
load-balancing loss times ``aux_loss_coef`` (``router_aux_loss_coef``, 0.001).

>>> cfg = Qwen3MoeConfig.from_name("qwen3-30b-a3b")
>>> cfg.n_experts, cfg.n_experts_per_token, cfg.layer(0).feed_forward
(128, 8, 'moe')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..machinery.checks import check_int, value_error
from .chat import Qwen3ChatFormat
from .config import LayerSpec
from .decoder import DecoderModel
from .family import Family, HFLayout
from .hf import decoder_fields_from_hf, decoder_fields_to_hf
from .moe import MoEFeedForward
from .qwen3 import QWEN3_HF_NAMES, Qwen3Config

__all__ = ["Qwen3MoeConfig", "QWEN3_MOE_PRESETS", "QWEN3_MOE_HF_NAMES", "active_parameters"]


@dataclass(frozen=True)
class Qwen3MoeConfig(Qwen3Config):
    """Qwen3's choices with mixture-of-experts feed-forwards; ``hidden_dim`` is the dense one."""

    n_experts: int = 128  # experts per sparse layer
    n_experts_per_token: int = 8  # experts each token runs (top k)
    moe_hidden_dim: int = 768  # inner width of one expert
    norm_topk_prob: bool = True  # renormalise the k chosen gates to sum to one
    decoder_sparse_step: int = 1  # every this-many-th layer is sparse
    mlp_only_layers: tuple[int, ...] = ()  # layers that stay dense whatever the step
    aux_loss_coef: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        for name in ("n_experts", "moe_hidden_dim", "decoder_sparse_step"):
            check_int(name, getattr(self, name), low=1)
        check_int("n_experts_per_token", self.n_experts_per_token, low=1, high=self.n_experts)
        for index in self.mlp_only_layers:
            check_int("mlp_only_layers", index, low=0, high=self.n_layers - 1)

    def is_sparse(self, index: int) -> bool:
        """Whether block ``index`` has a mixture of experts (transformers' rule)."""
        return index not in self.mlp_only_layers and (index + 1) % self.decoder_sparse_step == 0

    def layer(self, index: int) -> LayerSpec:
        return LayerSpec(attention=self.attention,
                         feed_forward="moe" if self.is_sparse(index) else self.feed_forward)


QWEN3_MOE_PRESETS: dict[str, Qwen3MoeConfig] = {
    # Published size (Hugging Face config.json of Qwen/Qwen3-30B-A3B).
    "qwen3-30b-a3b": Qwen3MoeConfig(emb_dim=2048, n_layers=48, n_heads=32, n_kv_heads=4,
                                    head_dim=128, hidden_dim=6144, moe_hidden_dim=768),
    # Small for a laptop CPU (GPT-2's BPE): 8 experts of which 2 run, every layer sparse.
    "qwen3-moe-nano": Qwen3MoeConfig(vocab_size=50257, context_length=64, emb_dim=48,
                                     n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16,
                                     hidden_dim=128, rope_theta=10000.0, n_experts=8,
                                     n_experts_per_token=2, moe_hidden_dim=32),
}

# Qwen3's names; a sparse layer's router and experts (saved one tensor per expert, the slices
# of our stacked ``SwiGLUExperts``: ``experts.fc1[e]`` is expert e's ``gate_proj``).
QWEN3_MOE_HF_NAMES: dict[str, str] = {
    **QWEN3_HF_NAMES,
    "trf_blocks.{i}.ff.gate": "model.layers.{i}.mlp.gate",
    "trf_blocks.{i}.ff.experts.{e}.fc1": "model.layers.{i}.mlp.experts.{e}.gate_proj",
    "trf_blocks.{i}.ff.experts.{e}.fc2": "model.layers.{i}.mlp.experts.{e}.up_proj",
    "trf_blocks.{i}.ff.experts.{e}.fc3": "model.layers.{i}.mlp.experts.{e}.down_proj",
}


def active_parameters(model: nn.Module) -> int:
    """Parameters one token runs through: all, less the experts its routers leave out."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, MoEFeedForward):
            per_expert = sum(p.numel() for p in module.experts.parameters()) // len(
                module.experts)
            total -= (len(module.experts) - module.gate.top_k) * per_expert
    return total


def config_from_hf(hf: Mapping[str, Any]) -> Qwen3MoeConfig:
    """A ``Qwen3MoeConfig`` from a ``Qwen3MoeForCausalLM`` ``config.json``."""
    if hf.get("use_sliding_window", False):
        raise value_error("config", "config use_sliding_window must be false: Qwen3-MoE "
                                    "attends to the whole context")
    # transformers' Qwen3-MoE defaults, where they differ from Llama's; transformers 5 writes
    # num_experts as num_local_experts.
    hf = {"num_experts": hf.get("num_local_experts", 128), "head_dim": 128,
          "num_key_value_heads": 4, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
          "decoder_sparse_step": 1, **hf}
    return Qwen3MoeConfig(
        **decoder_fields_from_hf(hf), n_experts=hf["num_experts"],
        n_experts_per_token=hf["num_experts_per_tok"],
        moe_hidden_dim=hf["moe_intermediate_size"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        decoder_sparse_step=hf["decoder_sparse_step"],
        mlp_only_layers=tuple(hf.get("mlp_only_layers") or ()),
        aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)))


def config_to_hf(cfg: Qwen3MoeConfig) -> dict[str, Any]:
    return {**decoder_fields_to_hf(cfg, HF_LAYOUT), "use_sliding_window": False,
            "num_experts": cfg.n_experts, "num_experts_per_tok": cfg.n_experts_per_token,
            "moe_intermediate_size": cfg.moe_hidden_dim, "norm_topk_prob": cfg.norm_topk_prob,
            "decoder_sparse_step": cfg.decoder_sparse_step,
            "mlp_only_layers": list(cfg.mlp_only_layers),
            "router_aux_loss_coef": cfg.aux_loss_coef}


HF_LAYOUT = HFLayout(model_type="qwen3_moe", architecture="Qwen3MoeForCausalLM",
                     names=QWEN3_MOE_HF_NAMES, config_from_hf=config_from_hf,
                     config_to_hf=config_to_hf, title="Qwen3-MoE")
FAMILY = Family(name="qwen3_moe", config_class=Qwen3MoeConfig, model_class=DecoderModel,
                presets=QWEN3_MOE_PRESETS, layout=HF_LAYOUT, chat_format=Qwen3ChatFormat)
