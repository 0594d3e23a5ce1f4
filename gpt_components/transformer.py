"""The transformer block (chapter 4): layer norm, GELU, feed-forward, causal self-attention.

Exports ``LayerNorm``, ``GELU``, ``FeedForward``, ``CausalSelfAttention`` (the chapter-3
``MultiHeadAttention`` with a choice of kernel and a KV-cache path) and ``TransformerBlock``
(pre-norm; attention and feed-forward each inside a residual connection). ``cfg`` is a
``GPTConfig`` or the book's dict with the same keys.

``LayerNorm`` and ``GELU`` are written as the book writes them (mean, variance, square root; the
tanh formula) and also take ``kernel="fused"``, which calls ``F.layer_norm`` and
``F.gelu(approximate="tanh")``: one pass over the data instead of a chain of elementwise ops
(and their saved intermediates) for the backward. The classes default to the book's
``"textbook"`` form; the blocks of a ``GPTConfig`` model follow its ``layer_kernel`` field, fused
by default. Both forms compute the same function and gradients; the spec checks it.

>>> import torch
>>> cfg = {"emb_dim": 8, "context_length": 4, "n_heads": 2, "drop_rate": 0.0, "qkv_bias": False}
>>> block = TransformerBlock(cfg)
>>> block(torch.zeros(2, 3, 8)).shape
torch.Size([2, 3, 8])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import ATTENTION_KERNELS, MultiHeadAttention, _a_weight, check_features
from .kv_cache import CacheStack, LayerCache
from .machinery.checks import (
    check_choice,
    check_float,
    check_instance,
    check_int,
    check_tensor,
    type_error,
    value_error,
)

__all__ = [
    "LAYER_KERNELS",
    "LayerNorm",
    "GELU",
    "FeedForward",
    "CausalSelfAttention",
    "TransformerBlock",
]

LAYER_KERNELS = ("fused", "textbook")  # LayerNorm and GELU: torch's fused op or the book's math


_MISSING = object()


def _cfg(cfg: Any, key: str, default: Any = _MISSING) -> Any:
    """One field of a ``GPTConfig`` or of the book's plain dict; a missing one is named."""
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    if value is _MISSING:
        raise type_error("cfg", f"cfg must give {key}, got {type(cfg).__name__} without it")
    return value


class LayerNorm(nn.Module):
    """Normalize the last dimension to mean 0 and (biased) variance 1, then ``scale``/``shift``.

    ``kernel="fused"`` computes the same with ``F.layer_norm`` (faster, above all backward).
    """

    def __init__(self, emb_dim: int, eps: float = 1e-5, kernel: str = "textbook") -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, low=1)
        check_float("eps", eps, low=0, low_open=True)
        self.kernel = check_choice("kernel", kernel, LAYER_KERNELS)
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating")
        if x.dim() < 1 or x.shape[-1] != self.scale.shape[0]:
            raise value_error("x", f"x must have emb_dim={self.scale.shape[0]} features in its "
                                   f"last dim, got shape {tuple(x.shape)}")
        if self.kernel == "fused":
            return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)
        mean = x.mean(dim=-1, keepdim=True)
        # Biased variance (divide by n), as GPT-2 and torch.nn.LayerNorm do.
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift


class GELU(nn.Module):
    """GELU in the tanh approximation GPT-2 was trained with.

    ``kernel="fused"`` computes the same with ``F.gelu(x, approximate="tanh")``.
    """

    def __init__(self, kernel: str = "textbook") -> None:
        super().__init__()
        self.kernel = check_choice("kernel", kernel, LAYER_KERNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "fused":
            return F.gelu(x, approximate="tanh")
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class FeedForward(nn.Module):
    """Position-wise MLP: ``emb_dim -> 4 * emb_dim -> emb_dim`` with a GELU between."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        emb_dim = _cfg(cfg, "emb_dim")
        self.layers = nn.Sequential(
            nn.Linear(emb_dim, 4 * emb_dim),
            GELU(_cfg(cfg, "layer_kernel", "fused")),
            nn.Linear(4 * emb_dim, emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CausalSelfAttention(MultiHeadAttention):
    """``MultiHeadAttention`` with a selectable kernel and an optional KV cache.

    ``kernel="sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention`` (flash or
    memory-efficient kernels on CUDA); ``kernel="textbook"`` is chapter 3's explicit softmax of
    masked scores. Both compute the same function; the spec checks it.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False, kernel: str = "sdpa") -> None:
        super().__init__(d_in, d_out, context_length, dropout, num_heads, qkv_bias)
        self.kernel = check_choice("kernel", kernel, ATTENTION_KERNELS)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        # (B, T, d_out) -> (B, nh, T, hd)
        q = self.W_query(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, kv_cache: LayerCache | CacheStack | None = None,
                layer: int = 0) -> torch.Tensor:
        """Attend over ``x`` (B, T, d_in), after the cached tokens when ``kv_cache`` is given.

        ``kv_cache`` is this layer's cache, or a whole ``KVCache`` whose ``layers[layer]`` it
        is. The new keys and values are stored after its ``length`` positions and the queries
        attend to every cached token.
        """
        if kv_cache is None and self.kernel == "textbook":
            return super().forward(x)
        x = check_features(x, self.d_in, (3,), _a_weight(self))
        kv_cache = _layer_cache(kv_cache, layer)
        b, t, _ = x.shape
        start = 0 if kv_cache is None else kv_cache.length
        if start + t > self.context_length:
            raise value_error("x", f"x has {t} tokens after {start} cached ones, more than "
                                   f"context_length={self.context_length}")
        q, k, v = self._heads(x)
        visible = None
        if (kv_cache is not None and kv_cache.attends and self.kernel == "sdpa"
                and not (self.training and self.dropout.p)):
            # Serving's paged cache reads each row's own keys and attends them itself.
            context = kv_cache.attend(q, k, v)
            return self.out_proj(context.transpose(1, 2).reshape(b, t, self.d_out))
        if kv_cache is not None:
            k, v = kv_cache.store(k, v)  # (B, nh, start + T, hd)
            visible = kv_cache.visible()  # a paged cache's rows differ: (B, 1, T, S)
        # Query i sits at absolute position start + i: it sees keys 0 .. start + i.
        future = self.mask[start:start + t, :start + t] if visible is None else ~visible
        if visible is not None and self.kernel == "sdpa":
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=visible,
                                                     dropout_p=self.dropout.p if self.training
                                                     else 0.0)
        elif self.kernel == "textbook":
            scores = q @ k.transpose(2, 3)  # (B, nh, T, start + T)
            scores = scores.masked_fill(future, float("-inf"))
            weights = self.dropout(torch.softmax(scores / self.head_dim**0.5, dim=-1))
            context = weights @ v  # (B, nh, T, hd)
        else:
            dropout_p = self.dropout.p if self.training else 0.0
            if start == 0:
                context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                         is_causal=True)
            elif t == 1:
                # One new token may see everything cached: no mask needed.
                context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            else:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=~future,
                                                         dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(b, t, self.d_out)  # (B, T, d_out)
        return self.out_proj(context)


def _layer_cache(kv_cache: Any, layer: int) -> LayerCache | None:
    """The layer cache meant: ``kv_cache`` itself, or a stack's ``layers[layer]``."""
    if kv_cache is None or isinstance(kv_cache, LayerCache):
        return kv_cache
    check_instance("kv_cache", kv_cache, CacheStack, "a KVCache, a LayerCache or None")
    return kv_cache.layers[check_int("layer", layer, low=0, high=len(kv_cache.layers) - 1)]


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + drop(att(norm1(x)))``, then ``x + drop(ff(norm2(x)))``."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        emb_dim = _cfg(cfg, "emb_dim")
        drop_rate = _cfg(cfg, "drop_rate", 0.0)
        self.att = CausalSelfAttention(
            d_in=emb_dim,
            d_out=emb_dim,
            context_length=_cfg(cfg, "context_length"),
            dropout=drop_rate,
            num_heads=_cfg(cfg, "n_heads"),
            qkv_bias=_cfg(cfg, "qkv_bias", False),
            kernel=_cfg(cfg, "attn_kernel", "sdpa"),
        )
        self.ff = FeedForward(cfg)
        layer_kernel = _cfg(cfg, "layer_kernel", "fused")
        self.norm1 = LayerNorm(emb_dim, kernel=layer_kernel)
        self.norm2 = LayerNorm(emb_dim, kernel=layer_kernel)
        self.drop_shortcut = nn.Dropout(drop_rate)

    def forward(self, x: torch.Tensor, kv_cache: LayerCache | CacheStack | None = None,
                layer: int = 0) -> torch.Tensor:
        """``x`` (B, T, emb) through attention and feed-forward; ``kv_cache`` as attention's."""
        check_features(x, self.norm1.scale.shape[0], (3,), _a_weight(self))
        x = x + self.drop_shortcut(self.att(self.norm1(x), kv_cache=kv_cache, layer=layer))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x)`` through chapter 3's explicit attention, and its weights [B, nh, T, T].

        Whatever ``attn_kernel`` the block has, this computes the same function (the spec
        proves the kernels agree), so the weights returned are the ones that made the output.
        """
        check_features(x, self.norm1.scale.shape[0], (3,), _a_weight(self))
        attended, weights = self.att.forward_with_weights(self.norm1(x))
        x = x + self.drop_shortcut(attended)
        return x + self.drop_shortcut(self.ff(self.norm2(x))), weights
