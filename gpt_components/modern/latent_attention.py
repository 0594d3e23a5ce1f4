"""Multi-head latent attention (MLA, DeepSeek-V2/V3): a KV cache of one small latent per token.

Grouped-query attention shrinks the cache by sharing key/value heads. MLA compresses instead:

- keys and values come from one latent ``c = norm(W_kv_down x)`` of ``kv_lora_rank`` features,
  expanded per head by ``W_kv_up`` into a no-RoPE key part (``qk_nope_head_dim``) and a value
  (``v_head_dim``);
- position enters through a separate RoPE key part (``qk_rope_head_dim``) made from ``x``
  directly and shared by every head, so the latent itself never rotates;
- queries go through their own low-rank bottleneck with a norm (``q_lora_rank``).

The cache holds the latent and the RoPE key: ``kv_lora_rank + qk_rope_head_dim`` numbers per
token and layer (DeepSeek-V3: 576, where its 128 heads of full keys and values would be 40,960).

Decoding needs no expanded keys at all: ``q_nope . (W_uk c) = (W_uk^T q_nope) . c`` and
``sum_j p_j W_uv c_j = W_uv sum_j p_j c_j``, so ``absorb=True`` folds the up-projections into
the query and the output and attends over the latents themselves (one 576-wide "key head"
shared by all heads, multi-query attention in disguise). The spec proves both paths equal.

DeepSeek's RoPE pairs are interleaved (``x0, x1``, ``x2, x3``...); ``interleaved=True`` takes
the even then the odd features, which turns them into the split-halves pairs ``apply_rope``
rotates (the same permutation for queries and keys leaves every score unchanged).

>>> import torch
>>> mla = MultiHeadLatentAttention(emb_dim=16, n_heads=2, q_lora_rank=8, kv_lora_rank=6,
...                                qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=3)
>>> mla(torch.zeros(1, 5, 16)).shape
torch.Size([1, 5, 16])
>>> cache = mla.new_cache(batch_size=1, max_tokens=8)
>>> tuple(cache.latents.shape), tuple(cache.rope_keys.shape)  # what is kept per token
((1, 8, 6), (1, 8, 2))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ATTENTION_KERNELS, check_features
from ..kv_cache import LayerCache
from ..machinery.checks import check_bool, check_choice, check_float, check_int, value_error
from .attention import first_position
from .norms import RMSNorm
from .rope import apply_rope

__all__ = ["LatentKVCache", "MultiHeadLatentAttention"]


class LatentKVCache(LayerCache):
    """One MLA layer's cache: the latents (B, T, kv_lora_rank) and RoPE keys (B, T, rope_dim).

    ``store(latents, rope_keys)`` is the protocol's ``store(k, v)``: positions on axis 1.
    """

    token_dim = 1

    def __init__(self, batch_size: int, max_tokens: int, kv_lora_rank: int,
                 qk_rope_head_dim: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(batch_size, max_tokens)
        check_int("kv_lora_rank", kv_lora_rank, low=1)
        check_int("qk_rope_head_dim", qk_rope_head_dim, low=1)
        self.register_buffer("latents", torch.zeros(batch_size, max_tokens, kv_lora_rank,
                                                    device=device, dtype=dtype),
                             persistent=False)
        self.register_buffer("rope_keys", torch.zeros(batch_size, max_tokens, qk_rope_head_dim,
                                                      device=device, dtype=dtype),
                             persistent=False)

    def _write(self, latents: torch.Tensor, rope_keys: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' (B, T, .) at ``start ..``; return everything held so far."""
        end = start + latents.shape[1]
        self.latents[:, start:end] = latents
        self.rope_keys[:, start:end] = rope_keys
        return self.latents[:, :end], self.rope_keys[:, :end]


class MultiHeadLatentAttention(nn.Module):
    """Causal attention whose keys and values are expanded from a cached low-rank latent.

    Weight names follow the book's style, with DeepSeek's in ``deepseek_v3``'s mapping:
    ``W_query_down``/``q_norm``/``W_query_up`` (or ``W_query`` when ``q_lora_rank`` is None),
    ``W_kv_down`` (latent and RoPE key together), ``kv_norm``, ``W_kv_up``, ``out_proj``. The
    latent norms use ``latent_eps`` (DeepSeek fixes it at 1e-6, whatever ``rms_norm_eps``).
    ``scale`` defaults to ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``.
    """

    def __init__(self, emb_dim: int, n_heads: int, *, q_lora_rank: int | None,
                 kv_lora_rank: int, qk_nope_head_dim: int, qk_rope_head_dim: int,
                 v_head_dim: int, latent_eps: float = 1e-6, scale: float | None = None,
                 interleaved: bool = True, kernel: str = "sdpa", bias: bool = False) -> None:
        super().__init__()
        for name, value in (("emb_dim", emb_dim), ("n_heads", n_heads),
                            ("kv_lora_rank", kv_lora_rank),
                            ("qk_nope_head_dim", qk_nope_head_dim),
                            ("qk_rope_head_dim", qk_rope_head_dim), ("v_head_dim", v_head_dim)):
            check_int(name, value, low=1)
        check_int("q_lora_rank", q_lora_rank, low=1, optional=True)
        if qk_rope_head_dim % 2:
            raise value_error("qk_rope_head_dim", f"qk_rope_head_dim must be even (RoPE turns "
                                                  f"pairs), got {qk_rope_head_dim}")
        check_choice("kernel", kernel, ATTENTION_KERNELS)
        check_float("latent_eps", latent_eps, low=0.0, low_open=True)
        check_float("scale", scale, low=0.0, low_open=True, optional=True)
        check_bool("interleaved", interleaved)
        check_bool("bias", bias)
        self.emb_dim = emb_dim
        self.n_heads, self.kv_lora_rank = n_heads, kv_lora_rank
        self.nope, self.rope_dim, self.v_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.interleaved, self.kernel = interleaved, kernel
        qk = qk_nope_head_dim + qk_rope_head_dim
        self.scale = qk**-0.5 if scale is None else float(scale)
        if q_lora_rank is None:
            self.W_query = nn.Linear(emb_dim, n_heads * qk, bias=False)
        else:
            self.W_query_down = nn.Linear(emb_dim, q_lora_rank, bias=bias)
            self.q_norm = RMSNorm(q_lora_rank, eps=latent_eps)
            self.W_query_up = nn.Linear(q_lora_rank, n_heads * qk, bias=False)
        self.W_kv_down = nn.Linear(emb_dim, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_norm = RMSNorm(kv_lora_rank, eps=latent_eps)
        self.W_kv_up = nn.Linear(kv_lora_rank, n_heads * (qk_nope_head_dim + v_head_dim),
                                 bias=False)
        self.out_proj = nn.Linear(n_heads * v_head_dim, emb_dim, bias=bias)

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> LatentKVCache:
        """An empty cache of latents and RoPE keys, nothing per head."""
        return LatentKVCache(batch_size, max_tokens, self.kv_lora_rank, self.rope_dim,
                             device=device, dtype=dtype)

    def _rotate(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        if rope is None:
            return x
        if self.interleaved:  # pairs (0, 1), (2, 3)... -> halves (0, 2, ..), (1, 3, ..)
            x = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
        return apply_rope(x, *rope)

    def _queries(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """No-RoPE and rotated query parts, (B, nh, T, nope) and (B, nh, T, rope_dim)."""
        b, t, _ = x.shape
        if hasattr(self, "W_query"):
            q = self.W_query(x)
        else:
            q = self.W_query_up(self.q_norm(self.W_query_down(x)))
        q = q.view(b, t, self.n_heads, self.nope + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope, self.rope_dim], dim=-1)
        return q_nope, self._rotate(q_rope, rope)

    def _latents(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """The normed latents (B, T, r) and the rotated shared RoPE keys (B, T, rope_dim)."""
        latent, k_rope = self.W_kv_down(x).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        return self.kv_norm(latent), self._rotate(k_rope[:, None], rope)[:, 0]

    def _up_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_kv_up`` per head: the key part (nh, nope, r) and the value part (nh, v, r)."""
        w = self.W_kv_up.weight.view(self.n_heads, self.nope + self.v_dim, self.kv_lora_rank)
        return w[:, :self.nope], w[:, self.nope:]

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LatentKVCache | None = None, start: int | None = None,
                need_weights: bool = False, absorb: bool = False):
        """Attend over ``x`` (B, T, emb) at positions ``start ..``, like ``GroupedQueryAttention``
        (``start`` defaults to the cache's length, 0 without one).

        ``absorb=True`` attends over the latents with the up-projections folded into the query
        and the output (the decoding path); ``need_weights`` returns the probabilities too.
        """
        check_features(x, self.emb_dim, (3,), next(self.parameters()))
        start = first_position(cache, start)
        b, t, _ = x.shape
        q_nope, q_rope = self._queries(x, rope)
        latents, k_rope = self._latents(x, rope)
        if cache is not None and cache.attends and self.kernel == "sdpa" and not need_weights:
            # Serving's paged cache attends each row over its own latents: the absorbed form.
            w_uk, w_uv = self._up_weights()
            q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # (B, nh, T, r)
            mixed = cache.attend(torch.cat([q_latent, q_rope], dim=-1), latents, k_rope,
                                 scale=self.scale)  # (B, nh, T, r)
            context = torch.einsum("bhtr,hvr->bhtv", mixed, w_uv)  # (B, nh, T, v)
            return self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads
                                                                  * self.v_dim))
        visible = None
        if cache is not None:
            latents, k_rope = cache.store(latents, k_rope)  # (B, S, r), (B, S, rope)
            visible = cache.visible()  # a paged cache's rows differ: (B, 1, T, S)
        s = latents.shape[1]
        future = torch.arange(s, device=x.device)[None, :] > \
            torch.arange(start, start + t, device=x.device)[:, None]  # (T, S)
        if visible is not None:
            future = ~visible
        if absorb:
            context, weights = self._absorbed(q_nope, q_rope, latents, k_rope, future)
        else:
            context, weights = self._expanded(q_nope, q_rope, latents, k_rope, future,
                                              need_weights)
        out = self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads * self.v_dim))
        return (out, weights) if need_weights else out

    def _expanded(self, q_nope, q_rope, latents, k_rope, future, need_weights):
        """The plain path: expand every cached latent to per-head keys and values."""
        b, s, _ = latents.shape
        kv = self.W_kv_up(latents).view(b, s, self.n_heads, self.nope + self.v_dim)
        k_nope, v = kv.transpose(1, 2).split([self.nope, self.v_dim], dim=-1)  # (B, nh, S, .)
        q = torch.cat([q_nope, q_rope], dim=-1)  # (B, nh, T, qk)
        k = torch.cat([k_nope, k_rope[:, None].expand(-1, self.n_heads, -1, -1)], dim=-1)
        if self.kernel == "sdpa" and not need_weights:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=~future,
                                                  scale=self.scale), None
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, nh, T, S)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return weights @ v, weights

    def _absorbed(self, q_nope, q_rope, latents, k_rope, future):
        """The decoding path: scores and values computed on the latents themselves."""
        w_uk, w_uv = self._up_weights()
        q_latent = torch.einsum("bhtn,hnr->bhtr", q_nope, w_uk)  # W_uk^T q_nope: (B, nh, T, r)
        scores = (q_latent @ latents[:, None].transpose(-2, -1)
                  + q_rope @ k_rope[:, None].transpose(-2, -1)) * self.scale  # (B, nh, T, S)
        weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        mixed = weights @ latents[:, None]  # sum_j p_j c_j: (B, nh, T, r)
        return torch.einsum("bhtr,hvr->bhtv", mixed, w_uv), weights  # W_uv (.): (B, nh, T, v)
