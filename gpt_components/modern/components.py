"""The components a ``DecoderConfig`` chooses from, by name: the one place that builds them.

``NORMS[cfg.norm](cfg, dim)``, ``FEED_FORWARDS[spec.feed_forward](cfg, spec)`` and
``ATTENTIONS[spec.attention](cfg, spec)`` make a block's parts from the config and the block's
``LayerSpec``. A new family adds an entry here (one line and its module) and names it in its
config; ``decoder.DecoderBlock`` never changes.

>>> from gpt_components.modern.config import DecoderConfig
>>> cfg = DecoderConfig(vocab_size=64, context_length=16, emb_dim=32, n_layers=1, n_heads=4,
...                     n_kv_heads=1, hidden_dim=64, qk_norm=True)
>>> type(ATTENTIONS["gqa"](cfg, cfg.layer(0)).q_norm).__name__
'RMSNorm'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..machinery.checks import check_choice
from .attention import GroupedQueryAttention
from .feedforward import SwiGLU
from .latent_attention import MultiHeadLatentAttention
from .moe import MoEFeedForward
from .norms import RMSNorm
from .sliding_window import SlidingWindowAttention

__all__ = ["NORMS", "FEED_FORWARDS", "ATTENTIONS", "make_norm"]

NORMS: dict[str, Callable[[Any, int], nn.Module]] = {
    "rmsnorm": lambda cfg, dim: RMSNorm(dim, eps=cfg.norm_eps),
    "gemma_rmsnorm": lambda cfg, dim: RMSNorm(dim, eps=cfg.norm_eps, offset=1.0),
}


def make_norm(cfg: Any, dim: int) -> nn.Module:
    """The config's norm over ``dim`` features (``cfg.norm`` names it in ``NORMS``)."""
    return NORMS[check_choice("norm", getattr(cfg, "norm", None), NORMS)](cfg, dim)


FEED_FORWARDS: dict[str, Callable[[Any, Any], nn.Module]] = {
    "swiglu": lambda cfg, spec: SwiGLU(cfg.emb_dim, cfg.hidden_dim),
    "geglu": lambda cfg, spec: SwiGLU(cfg.emb_dim, cfg.hidden_dim, activation="gelu_tanh"),
    # Qwen3-MoE: softmax router over cfg.n_experts SwiGLU experts, top cfg.n_experts_per_token.
    "moe": lambda cfg, spec: MoEFeedForward(
        cfg.emb_dim, cfg.moe_hidden_dim, cfg.n_experts, cfg.n_experts_per_token,
        norm_topk_prob=cfg.norm_topk_prob),
    # DeepSeek-V3: biased sigmoid routing within the best groups, scaled gates, shared experts.
    "deepseek_moe": lambda cfg, spec: MoEFeedForward(
        cfg.emb_dim, cfg.moe_hidden_dim, cfg.n_experts, cfg.n_experts_per_token,
        scoring="sigmoid", norm_topk_prob=cfg.norm_topk_prob, n_group=cfg.n_group,
        topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
        n_shared_experts=cfg.n_shared_experts),
}


def _grouped_query(cfg: Any, spec: Any) -> nn.Module:
    return GroupedQueryAttention(
        cfg.emb_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
        qk_norm=(lambda dim: make_norm(cfg, dim)) if cfg.qk_norm else False,
        qkv_bias=cfg.attention_bias, out_bias=cfg.attention_bias,
        dropout=cfg.drop_rate, kernel=cfg.attn_kernel,
        scale=cfg.attention_scale())


def _sliding_window(cfg: Any, spec: Any) -> nn.Module:
    return SlidingWindowAttention(
        cfg.emb_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, window=cfg.sliding_window,
        qk_norm=(lambda dim: make_norm(cfg, dim)) if cfg.qk_norm else False,
        qkv_bias=cfg.attention_bias, out_bias=cfg.attention_bias,
        dropout=cfg.drop_rate, kernel=cfg.attn_kernel,
        scale=cfg.attention_scale())


def _latent(cfg: Any, spec: Any) -> nn.Module:
    return MultiHeadLatentAttention(
        cfg.emb_dim, cfg.n_heads, q_lora_rank=cfg.q_lora_rank, kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim, qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim, scale=cfg.attention_scale(), kernel=cfg.attn_kernel,
        bias=cfg.attention_bias, interleaved=getattr(cfg, "rope_interleave", True))


ATTENTIONS: dict[str, Callable[[Any, Any], nn.Module]] = {
    "gqa": _grouped_query,
    "sliding_gqa": _sliding_window,  # needs cfg.sliding_window (Gemma 3's local layers)
    "mla": _latent,  # DeepSeek-V3's latent attention; needs the config's latent sizes
}
