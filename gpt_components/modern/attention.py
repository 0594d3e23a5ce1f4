"""Grouped-query attention (GQA), in place of GPT-2's multi-head attention.

Multi-head attention gives every query head its own key and value head. Grouped-query
attention lets ``n_heads / n_kv_heads`` query heads share one key/value head: ``W_key`` and
``W_value`` project to ``n_kv_heads * head_dim`` features only, and the KV cache shrinks by the
same factor. ``n_kv_heads == n_heads`` is multi-head attention, ``n_kv_heads == 1`` multi-query
attention. ``head_dim`` is explicit (Qwen3's is not ``emb_dim / n_heads``). Optional QK-norm
(Qwen3, Gemma 3) normalises each head's query and key before the rotation, and RoPE rotates
them by position (``rope``). Query head ``h`` uses key/value head ``h // (n_heads /
n_kv_heads)``, as ``transformers``' ``repeat_kv`` does.

``kernel="sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention`` (which shares the
key/value heads itself, ``enable_gqa``); ``kernel="textbook"`` writes the softmax of masked
scores out, folding each group of query heads onto its key head instead of copying keys.

>>> import torch
>>> att = GroupedQueryAttention(emb_dim=16, n_heads=4, n_kv_heads=2, head_dim=8)
>>> att(torch.zeros(2, 3, 16)).shape
torch.Size([2, 3, 16])
>>> att.W_key.weight.shape  # 2 key heads of 8 features, not 4
torch.Size([16, 16])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ATTENTION_KERNELS, check_features  # (config reads the kernels here)
from ..kv_cache import LayerCache, LayerKVCache
from ..machinery.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    type_error,
    value_error,
)
from .norms import RMSNorm
from .rope import apply_rope

__all__ = ["GroupedQueryAttention"]

def first_position(cache: LayerCache | None, start: int | None) -> int:
    """The position of the first new token: after the cache's, or ``start`` (0) without one."""
    if cache is None:
        return 0 if start is None else check_int("start", start, low=0)
    if start is not None and start != cache.length:
        raise value_error("start", f"start must be the cache's length {cache.length} (the next "
                                   f"position), got {start!r}")
    return cache.length


class GroupedQueryAttention(nn.Module):
    """Causal attention with ``n_kv_heads`` key/value heads shared by ``n_heads`` query heads.

    A cache whose rows differ (serving's paged cache) supplies the mask itself
    (``LayerCache.visible``), for this attention's ``window`` (None: causal).

    ``qk_norm``: False, True (an ``RMSNorm(head_dim, norm_eps)`` on queries and on keys) or a
    function ``head_dim -> nn.Module`` making the norm. ``qkv_bias``/``out_bias``: biases on
    the three input projections / on ``out_proj``. ``scale`` multiplies the scores (default
    ``head_dim ** -0.5``).
    """

    def __init__(self, emb_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 qk_norm: bool | Callable[[int], nn.Module] = False, norm_eps: float = 1e-6,
                 qkv_bias: bool = False, out_bias: bool = False, dropout: float = 0.0,
                 kernel: str = "sdpa", scale: float | None = None) -> None:
        super().__init__()
        self.window: int | None = None  # how far back a query sees (None: every earlier key)
        self.emb_dim = check_int("emb_dim", emb_dim, low=1)
        self.n_heads = check_int("n_heads", n_heads, low=1)
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads, low=1)
        self.head_dim = check_int("head_dim", head_dim, low=1)
        if n_heads % n_kv_heads:
            raise value_error("n_kv_heads", f"n_kv_heads ({n_kv_heads}) must divide n_heads "
                                            f"({n_heads})")
        self.kernel = check_choice("kernel", kernel, ATTENTION_KERNELS)
        check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        check_float("norm_eps", norm_eps, low=0.0, low_open=True)
        check_float("scale", scale, low=0.0, low_open=True, optional=True)
        check_bool("qkv_bias", qkv_bias)
        check_bool("out_bias", out_bias)
        if not isinstance(qk_norm, bool) and not callable(qk_norm):
            raise type_error("qk_norm", f"qk_norm must be True, False or a function head_dim -> "
                                        f"nn.Module, got {qk_norm!r}")
        self.group = n_heads // n_kv_heads  # query heads per key/value head
        self.scale = head_dim**-0.5 if scale is None else float(scale)
        self.dropout = float(dropout)
        self.W_query = nn.Linear(emb_dim, n_heads * head_dim, bias=qkv_bias)
        self.W_key = nn.Linear(emb_dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.W_value = nn.Linear(emb_dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.out_proj = nn.Linear(n_heads * head_dim, emb_dim, bias=out_bias)
        make_norm = (lambda dim: RMSNorm(dim, eps=norm_eps)) if qk_norm is True else qk_norm
        self.q_norm = make_norm(head_dim) if make_norm else None
        self.k_norm = make_norm(head_dim) if make_norm else None

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> LayerKVCache:
        """An empty cache for this layer: ``n_kv_heads`` heads of ``head_dim``."""
        return LayerKVCache(batch_size, self.n_kv_heads, self.head_dim, max_tokens,
                            device=device, dtype=dtype)

    def forward(self, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None, start: int | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over ``x`` (B, T, emb), whose first token sits at position ``start``.

        ``rope``: ``(cos, sin)`` [T, head_dim] for those positions, or None (no rotation).
        ``cache``: the tokens before ``start`` (which defaults to its ``length``, and to 0
        without a cache); the new keys and values are stored in it.
        ``need_weights``: also return the probabilities (B, n_heads, T, start + T).
        """
        check_features(x, self.emb_dim, (3,), next(self.parameters()))
        start = first_position(cache, start)
        b, t, _ = x.shape
        q = self.W_query(x).view(b, t, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.W_key(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.W_value(x).view(b, t, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        context, weights = self._attend(q, k, v, cache, start, need_weights)
        out = self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        return (out, weights) if need_weights else out

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                cache: LayerCache | None, start: int,
                need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The new keys and values stored in ``cache``, then the context (B, nh, T, hd) of the
        queries over every key they may see, and the weights when asked for (else None)."""
        if cache is not None and self._cache_attends(cache, need_weights):
            # Serving's paged cache reads each row's own keys and attends them itself.
            return cache.attend(q, k, v, scale=self.scale, window=self.window,
                                **self._cache_attention()), None
        visible = None
        if cache is not None:
            k, v = cache.store(k, v)  # what the queries see: (B, nkv, start + T, hd) here
            visible = cache.visible(self.window)  # a paged cache's rows differ: (B, 1, T, S)
        if need_weights or self.kernel == "textbook":
            return self._textbook(q, k, v, start, visible)
        return self._sdpa(q, k, v, start, visible), None

    def _cache_attends(self, cache: LayerCache, need_weights: bool) -> bool:
        """Whether ``cache`` may compute this attention itself (``attends``: serving's paged
        cache, which then reads each row's own keys): with the SDPA kernel, no weights asked
        for, no dropout, and an attention the cache knows (``_cache_attention``)."""
        return (cache.attends and self._cache_attention() is not None
                and self.kernel == "sdpa" and not need_weights
                and not (self.training and self.dropout))

    def _cache_attention(self) -> dict | None:
        """What ``LayerCache.attend`` needs besides the queries, keys, values, scale and
        window to compute this attention (a softmax over the keys: nothing); None for an
        attention it cannot compute. ``SinkAttention`` hands it its sinks."""
        return {}

    def _future(self, t: int, s: int, start: int, device: torch.device) -> torch.Tensor:
        """True where query ``i`` (position ``start + i``) must not see key ``j``: (T, S)."""
        queries = torch.arange(start, start + t, device=device)
        return torch.arange(s, device=device)[None, :] > queries[:, None]

    def _textbook(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
                  visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, t, hd = q.shape
        s = k.shape[2]
        # Fold each group of query heads onto the key/value head it shares:
        # (B, nh, T, hd) -> (B, nkv, group * T, hd); no copy of the keys is made.
        folded = q.reshape(b, self.n_kv_heads, self.group * t, hd)
        scores = (folded @ k.transpose(2, 3)).view(b, self.n_heads, t, s)  # (B, nh, T, S)
        hidden = self._future(t, s, start, q.device) if visible is None else ~visible
        scores = scores.masked_fill(hidden, float("-inf"))
        weights = torch.softmax(scores * self.scale, dim=-1)
        dropped = F.dropout(weights, self.dropout, self.training) if self.dropout else weights
        context = dropped.view(b, self.n_kv_heads, self.group * t, s) @ v  # (B, nkv, g*T, hd)
        return context.view(b, self.n_heads, t, hd), weights

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
              visible: torch.Tensor | None = None) -> torch.Tensor:
        t, s = q.shape[2], k.shape[2]
        dropout_p = self.dropout if self.training else 0.0
        mask, causal = None, False
        if visible is not None:
            mask = visible
        elif start == 0 and t == s:
            causal = True
        elif t > 1:
            mask = ~self._future(t, s, start, q.device)  # True where a key may be seen
        # With one new token and a cache, every stored key is in the past: no mask.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=causal, scale=self.scale,
                                              enable_gqa=self.group > 1)
