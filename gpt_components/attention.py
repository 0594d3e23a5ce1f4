"""Attention mechanisms (chapter 3): from weightless self-attention to multi-head attention.

The book builds attention in six steps, each kept here so it can be read beside the book:

- ``simple_self_attention(x)``: dot-product scores, softmax, weighted sum; no trainable weights.
- ``SelfAttentionV1``: trainable ``nn.Parameter`` matrices ``W_query``, ``W_key``, ``W_value``
  and scores scaled by ``sqrt(d_out)``.
- ``SelfAttentionV2``: the same function with ``nn.Linear`` projections.
- ``CausalAttention``: a mask hides future tokens; dropout acts on the attention weights.
- ``MultiHeadAttentionWrapper``: ``num_heads`` independent ``CausalAttention`` heads, concatenated.
- ``MultiHeadAttention``: one set of projections split into heads, then ``out_proj``.

Shapes: ``B`` batch, ``T`` tokens, ``nh`` heads, ``hd`` head size (``d_out // num_heads``).

>>> import torch
>>> from gpt_components.attention import MultiHeadAttention
>>> _ = torch.manual_seed(0)
>>> mha = MultiHeadAttention(d_in=4, d_out=6, context_length=8, dropout=0.0, num_heads=2)
>>> mha(torch.randn(2, 5, 4)).shape
torch.Size([2, 5, 6])
>>> weights = mha.attention_weights(torch.randn(1, 3, 4))  # (B, nh, T, T)
>>> bool(weights[0, 0, 0, 1] == 0), torch.allclose(weights.sum(-1), torch.ones(1, 2, 3))
(True, True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .machinery.checks import (
    check_bool,
    check_float,
    check_int,
    check_tensor,
    type_error,
    value_error,
)

__all__ = [
    "ATTENTION_KERNELS",
    "simple_self_attention",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "CausalAttention",
    "MultiHeadAttentionWrapper",
    "MultiHeadAttention",
]


#: How an attention layer computes ``softmax(q k^T / sqrt(d)) v``: ``"sdpa"`` calls
#: ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels), ``"textbook"`` writes the
#: scores, mask and softmax out as this chapter does. Every attention module takes one of these.
ATTENTION_KERNELS = ("sdpa", "textbook")


def _autocasting(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know, such as meta
        return False


def _a_weight(module: nn.Module) -> torch.Tensor | None:
    """One of the module's parameters (any: they share a device and dtype), or None."""
    return next(module.parameters(), None)


def _check_like(x: torch.Tensor, weight: torch.Tensor, name: str = "x") -> None:
    """``x`` sits on the weights' device in their dtype (autocast may lower the dtype)."""
    if x.device != weight.device:
        raise value_error(name, f"{name} is on device {x.device}, but the module's weights are "
                                f"on {weight.device}: move one to the other ({name}.to(...) or "
                                f"module.to(...))")
    if x.dtype != weight.dtype and not _autocasting(x.device.type):
        raise type_error(name, f"{name} has dtype {x.dtype}, but the module's weights are "
                               f"{weight.dtype}: convert one to the other "
                               f"({name}.to({weight.dtype}) or module.to({x.dtype}))")


def check_features(x: object, d_in: int | None, dims: tuple[int, ...],
                    like: torch.Tensor | None = None, name: str = "x") -> torch.Tensor:
    """``x`` is a floating tensor with ``len(x.shape)`` in ``dims`` and ``d_in`` features.

    With ``like`` (a weight of the module), ``x`` must also share its device and dtype. Every
    attention module checks its input with this, the modern ones too: one mistake, one error.
    """
    check_tensor(name, x, kind="floating")
    if like is not None:
        _check_like(x, like, name)
    if x.dim() not in dims:
        allowed = " or ".join(f"{d}-D" for d in dims)
        raise value_error(name, f"{name} must be {allowed} [..., tokens, d_in], got shape "
                                f"{tuple(x.shape)}")
    if d_in is not None and x.shape[-1] != d_in:
        raise value_error(name, f"{name} must have d_in={d_in} features in its last dim, got "
                                f"{x.shape[-1]}")
    return x


def _check_tokens(x: object, d_in: int, context_length: int,
                  like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` is ``[batch, tokens, d_in]`` floating point with ``tokens <= context_length``."""
    x = check_features(x, d_in, (3,), like)
    if x.shape[1] > context_length:
        raise value_error("x", f"x has {x.shape[1]} tokens, more than context_length="
                               f"{context_length} (tokens must be <= context_length)")
    return x


def _causal_mask(context_length: int) -> torch.Tensor:
    """``[context_length, context_length]`` bool, True strictly above the diagonal (the future)."""
    ones = torch.ones(context_length, context_length, dtype=torch.bool)
    return torch.triu(ones, diagonal=1)


def simple_self_attention(x: torch.Tensor) -> torch.Tensor:
    """Section 3.3.1: each token's context vector is the softmax(x x^T)-weighted sum of all tokens.

    ``x`` is ``[T, d]`` or ``[B, T, d]``; the result has the same shape. No scaling, no weights.
    """
    x = check_features(x, None, (2, 3))
    scores = x @ x.transpose(-2, -1)  # (..., T, T)
    weights = torch.softmax(scores, dim=-1)
    return weights @ x  # (..., T, d)


class SelfAttentionV1(nn.Module):
    """Section 3.4.2: scaled dot-product self-attention with ``nn.Parameter`` weight matrices.

    ``W_query``, ``W_key`` and ``W_value`` are ``[d_in, d_out]`` matrices (``x @ W``), drawn
    uniformly in ``[0, 1)`` as in the book; pass ``generator`` for reproducible weights.
    ``forward`` takes ``[T, d_in]`` or ``[B, T, d_in]``; no mask: every token sees every token.
    """

    def __init__(self, d_in: int, d_out: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.d_in = check_int("d_in", d_in, low=1)
        self.d_out = check_int("d_out", d_out, low=1)
        self.W_query = nn.Parameter(torch.rand(d_in, d_out, generator=generator))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out, generator=generator))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_features(x, self.d_in, (2, 3), self.W_query)
        # (..., T, d_in) @ (d_in, d_out) -> (..., T, d_out)
        queries, keys, values = x @ self.W_query, x @ self.W_key, x @ self.W_value
        scores = queries @ keys.transpose(-2, -1)  # (..., T, T)
        weights = torch.softmax(scores / math.sqrt(self.d_out), dim=-1)
        return weights @ values  # (..., T, d_out)


class SelfAttentionV2(nn.Module):
    """Section 3.4.2: ``SelfAttentionV1``'s function with ``nn.Linear`` projections.

    ``nn.Linear`` stores the transposed matrix: ``V1.W_query == V2.W_query.weight.T``.
    """

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.d_in = check_int("d_in", d_in, low=1)
        self.d_out = check_int("d_out", d_out, low=1)
        self.W_query = nn.Linear(d_in, d_out, bias=check_bool("qkv_bias", qkv_bias))
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_features(x, self.d_in, (2, 3), _a_weight(self))
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)  # (..., T, d_out)
        scores = queries @ keys.transpose(-2, -1)  # (..., T, T)
        weights = torch.softmax(scores / math.sqrt(self.d_out), dim=-1)
        return weights @ values  # (..., T, d_out)


class CausalAttention(nn.Module):
    """Section 3.5: single-head self-attention that cannot look ahead, with dropout on the weights.

    ``mask`` is a non-persistent bool buffer ``[context_length, context_length]``, True above
    the diagonal: it follows ``.to(device)`` but is neither a parameter nor in the state dict.
    ``forward`` takes ``[B, T, d_in]`` with ``T <= context_length`` and returns ``[B, T, d_out]``.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 qkv_bias: bool = False) -> None:
        super().__init__()
        self.d_in = check_int("d_in", d_in, low=1)
        self.d_out = check_int("d_out", d_out, low=1)
        self.context_length = check_int("context_length", context_length, low=1)
        self.W_query = nn.Linear(d_in, d_out, bias=check_bool("qkv_bias", qkv_bias))
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(check_float("dropout", dropout, low=0.0, high=1.0,
                                              high_open=True))
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, T, T]`` causal attention weights (before dropout): rows sum to 1."""
        x = _check_tokens(x, self.d_in, self.context_length, _a_weight(self))
        return self._weights(self.W_query(x), self.W_key(x))

    def _weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        t = queries.shape[-2]
        scores = queries @ keys.transpose(-2, -1)  # (B, T, T)
        scores = scores.masked_fill(self.mask[:t, :t], float("-inf"))
        return torch.softmax(scores / math.sqrt(self.d_out), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _check_tokens(x, self.d_in, self.context_length, _a_weight(self))
        weights = self.dropout(self._weights(self.W_query(x), self.W_key(x)))
        return weights @ self.W_value(x)  # (B, T, d_out)


class MultiHeadAttentionWrapper(nn.Module):
    """Section 3.6.1: ``num_heads`` independent ``CausalAttention`` heads, concatenated.

    As in the book, *each* head has ``d_out`` outputs, so the result is ``num_heads * d_out``
    wide (12 heads of ``d_out=768`` give 9216 features). To match a ``MultiHeadAttention`` of
    width ``D``, build the wrapper with ``d_out = D // num_heads``. There is no ``out_proj``.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out, context_length, dropout, qkv_bias)
            for _ in range(num_heads)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (B, T, nh * d_out)


class MultiHeadAttention(nn.Module):
    """Section 3.6.2: causal multi-head self-attention with the book's weight names.

    One ``nn.Linear`` each for ``W_query``, ``W_key``, ``W_value`` (``d_in -> d_out``) is split
    into ``num_heads`` heads of ``head_dim = d_out // num_heads``; each head computes
    ``softmax(q k^T / sqrt(head_dim))`` under the causal ``mask`` (a non-persistent bool buffer,
    True above the diagonal), dropout acts on those weights, and the heads' outputs are
    concatenated and mixed by ``out_proj`` (``d_out -> d_out``).
    ``forward`` takes ``[B, T, d_in]`` with ``T <= context_length`` and returns ``[B, T, d_out]``.
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float,
                 num_heads: int, qkv_bias: bool = False) -> None:
        super().__init__()
        self.d_in = check_int("d_in", d_in, low=1)
        self.d_out = check_int("d_out", d_out, low=1)
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.context_length = check_int("context_length", context_length, low=1)
        if d_out % num_heads != 0:
            raise value_error("d_out", f"d_out ({d_out}) must be divisible by num_heads "
                                       f"({num_heads}): each head gets d_out // num_heads "
                                       f"features")
        self.head_dim = d_out // num_heads
        self.W_query = nn.Linear(d_in, d_out, bias=check_bool("qkv_bias", qkv_bias))
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)
        self.dropout = nn.Dropout(check_float("dropout", dropout, low=0.0, high=1.0,
                                              high_open=True))
        self.register_buffer("mask", _causal_mask(context_length), persistent=False)

    def _split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        b, t, _ = projected.shape
        # (B, T, d_out) -> (B, T, nh, hd) -> (B, nh, T, hd)
        return projected.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _weights(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        t = queries.shape[-2]
        scores = queries @ keys.transpose(2, 3)  # (B, nh, T, T)
        scores = scores.masked_fill(self.mask[:t, :t], float("-inf"))
        return torch.softmax(scores / math.sqrt(self.head_dim), dim=-1)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The ``[B, nh, T, T]`` causal attention weights (before dropout): rows sum to 1."""
        x = _check_tokens(x, self.d_in, self.context_length, _a_weight(self))
        return self._weights(self._split_heads(self.W_query(x)), self._split_heads(self.W_key(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_weights(x)[0]

    def forward_with_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(x)`` and the ``[B, nh, T, T]`` weights it multiplied the values by.

        The weights are taken after dropout, so in eval mode they are ``attention_weights(x)``:
        what an attention map should draw is what the layer used.
        """
        x = _check_tokens(x, self.d_in, self.context_length, _a_weight(self))
        b, t, _ = x.shape
        queries = self._split_heads(self.W_query(x))  # (B, nh, T, hd)
        keys = self._split_heads(self.W_key(x))
        values = self._split_heads(self.W_value(x))
        weights = self.dropout(self._weights(queries, keys))  # (B, nh, T, T)
        # (B, nh, T, hd) -> (B, T, nh, hd) -> (B, T, d_out)
        context = (weights @ values).transpose(1, 2).reshape(b, t, self.d_out)
        return self.out_proj(context), weights
