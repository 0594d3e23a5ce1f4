"""Gated attention with partial RoPE (Qwen3-Next, Qwen3.5): the hybrids' full-attention layers.

Two changes to grouped-query attention with QK-norm (``modern.attention``):

- **an output gate**: ``W_query`` projects each head to twice its width, its query and a gate,
  and each head's attention output is multiplied by ``sigmoid(gate)`` before ``out_proj``
  (Qiu et al., "Gated Attention for Large Language Models", 2025: the gate lets a head say
  nothing, which removes the attention sinks that softmax otherwise needs);
- **partial RoPE**: only the first ``rotary_dim`` features of each query and key head turn with
  position (a quarter in the published models); the others carry no position at all.

The KV cache is grouped-query attention's; the RoPE table the layer is given is
``rotary_dim`` wide (``RopeSpec(rotary_dim, ...)``).

>>> import torch
>>> att = GatedAttention(emb_dim=16, n_heads=4, n_kv_heads=2, head_dim=8, rotary_dim=2)
>>> att.W_query.weight.shape  # 4 heads of 8 query features and 8 gate features
torch.Size([64, 16])
>>> att(torch.zeros(2, 3, 16)).shape
torch.Size([2, 3, 16])
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import check_features
from ..kv_cache import LayerCache
from ..machinery.checks import check_int, value_error
from ..modern.attention import GroupedQueryAttention, first_position
from ..modern.rope import apply_rope

__all__ = ["GatedAttention", "apply_partial_rope"]


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` features of ``x`` (..., tokens, head_dim); keep the
    rest as they are."""
    width = cos.shape[-1]
    if width > x.shape[-1]:
        raise value_error("cos", f"cos must be at most head_dim={x.shape[-1]} wide, got "
                                 f"{width}")
    return torch.cat([apply_rope(x[..., :width], cos, sin), x[..., width:]], dim=-1)


class GatedAttention(GroupedQueryAttention):
    """Grouped-query attention whose heads' outputs are gated by ``sigmoid(gate)``, with RoPE
    on the first ``rotary_dim`` features (default: all); the other arguments are
    ``GroupedQueryAttention``'s."""

    def __init__(self, emb_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 rotary_dim: int | None = None, **options: object) -> None:
        super().__init__(emb_dim, n_heads, n_kv_heads, head_dim, **options)
        self.rotary_dim = head_dim if rotary_dim is None else check_int(
            "rotary_dim", rotary_dim, low=2, high=head_dim)
        if self.rotary_dim % 2:
            raise value_error("rotary_dim", f"rotary_dim must be even (RoPE turns pairs), got "
                                            f"{rotary_dim}")
        # Each head's query then its gate, side by side: [h0 query | h0 gate | h1 query | ...].
        self.W_query = nn.Linear(emb_dim, 2 * n_heads * head_dim,
                                 bias=self.W_key.bias is not None)

    def forward(self, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None, start: int | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """As ``GroupedQueryAttention.forward``; ``rope``'s tables are ``rotary_dim`` wide."""
        check_features(x, self.emb_dim, (3,), self.out_proj.weight)
        start = first_position(cache, start)
        b, t, _ = x.shape
        hd = self.head_dim
        q, gate = self.W_query(x).view(b, t, self.n_heads, 2 * hd).split([hd, hd], dim=-1)
        k = self.W_key(x).view(b, t, self.n_kv_heads, hd)  # (B, T, nkv, hd)
        v = self.W_value(x).view(b, t, self.n_kv_heads, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if rope is not None:
            cos, sin = rope
            q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        context, weights = self._attend(q, k, v, cache, start, need_weights)
        context = context.transpose(1, 2) * torch.sigmoid(gate)  # (B, T, nh, hd), gated
        out = self.out_proj(context.reshape(b, t, self.n_heads * hd))
        return (out, weights) if need_weights else out
