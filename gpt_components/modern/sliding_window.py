"""Sliding-window attention (past the book, Gemma 3's local layers): each query sees ``W`` keys.

A query at position ``p`` attends to the keys at ``p - W + 1 .. p``: the last ``W`` positions,
itself included (the convention of Gemma 3 and ``transformers``). With ``W >= T`` it is plain
causal attention. Because a windowed layer never looks further back than ``W - 1`` positions,
its KV cache only needs ``W`` slots, whatever the length generated: ``WindowLayerCache`` is that
ring buffer (a global layer keeps the usual growing cache).

Exports:

- ``window_mask(query_positions, key_positions, window)``: which key each query may see.
- ``windowed_attention(q, k, v, window, ...)``: the SDPA path and the textbook path side by side,
  with grouped-query keys and values (``n_kv_heads`` dividing ``n_heads``).
- ``windowed_attention_weights(...)``: the textbook path's probabilities (for ``trace``).
- ``SlidingWindowAttention``: ``GroupedQueryAttention`` whose queries see ``window`` keys and
  whose cache is a ``WindowLayerCache``; everything else (QK-norm, RoPE, kernels) is GQA's.
- ``WindowLayerCache``: one windowed layer's ring buffer, with the interface of a layer cache
  (``store(k, v, start)`` returns the keys and values the new queries attend to, oldest first).

The mask is built from positions, so keys that start later than position 0 (a cache's last
``window`` positions) are masked by where they are, not by their index.

>>> import torch
>>> window_mask(torch.arange(4), torch.arange(4), window=2).int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1]], dtype=torch.int32)
>>> q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 1, 6, 4)
>>> windowed_attention(q, k, k, window=3).shape
torch.Size([1, 2, 6, 4])
>>> cache = WindowLayerCache(batch_size=1, n_kv_heads=1, head_dim=4, window=3)
>>> for step in range(6):
...     keys, values = cache.store(k[:, :, step:step + 1], k[:, :, step:step + 1], start=step)
>>> torch.equal(keys, k[:, :, 3:6]), tuple(cache.keys.shape)  # positions 3, 4, 5; 3 slots
(True, (1, 1, 3, 4))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GroupedQueryAttention

__all__ = [
    "window_mask",
    "windowed_attention",
    "windowed_attention_weights",
    "WindowLayerCache",
    "SlidingWindowAttention",
]

KERNELS = ("sdpa", "textbook")


def _check_window(window: object) -> int | None:
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int >= 1 or None, got {window!r}")
    if window < 1:
        raise ValueError(f"window must be an int >= 1 or None, got {window}")
    return window


def window_mask(query_positions: torch.Tensor, key_positions: torch.Tensor,
                window: int | None) -> torch.Tensor:
    """``[Tq, Tk]`` bool, True where the query may see the key.

    A key is visible when it is not in the future and at most ``window - 1`` positions back
    (``window=None``: no limit, plain causal attention). Negative key positions mark empty
    cache slots and are never visible.
    """
    window = _check_window(window)
    distance = query_positions[:, None] - key_positions[None, :]  # (Tq, Tk)
    visible = (distance >= 0) & (key_positions[None, :] >= 0)
    if window is not None:
        visible &= distance < window
    return visible


def _positions(q: torch.Tensor, k: torch.Tensor, query_positions: torch.Tensor | None,
               key_positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Default positions: keys at ``0 .. Tk - 1``, queries the last ``Tq`` of them."""
    tq, tk = q.shape[-2], k.shape[-2]
    if key_positions is None:
        key_positions = torch.arange(tk, device=k.device)
    if query_positions is None:
        query_positions = torch.arange(tk - tq, tk, device=q.device)
    return query_positions, key_positions


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k and v must be 4-D [batch, heads, tokens, head_dim], got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    n_heads, n_kv = q.shape[1], k.shape[1]
    if v.shape[1] != n_kv or n_heads % n_kv != 0:
        raise ValueError(f"k and v must have the same number of heads, dividing q's {n_heads}; "
                         f"got {n_kv} and {v.shape[1]}")
    return n_heads // n_kv


def windowed_attention_weights(q: torch.Tensor, k: torch.Tensor, window: int | None, *,
                               scale: float | None = None,
                               query_positions: torch.Tensor | None = None,
                               key_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The textbook path's ``[B, n_heads, Tq, Tk]`` probabilities: zero outside the window."""
    group = _check_heads(q, k, k)
    query_positions, key_positions = _positions(q, k, query_positions, key_positions)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    keys = k.repeat_interleave(group, dim=1)  # (B, nkv, Tk, hd) -> (B, nh, Tk, hd)
    scores = (q @ keys.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    hidden = ~window_mask(query_positions, key_positions, window)
    return torch.softmax(scores.masked_fill(hidden, float("-inf")), dim=-1)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None,
                       *, scale: float | None = None,
                       query_positions: torch.Tensor | None = None,
                       key_positions: torch.Tensor | None = None,
                       kernel: str = "sdpa", dropout: float = 0.0) -> torch.Tensor:
    """Attention of ``q`` [B, nh, Tq, hd] over ``k`` [B, nkv, Tk, hd], ``v`` [B, nkv, Tk, hd_v].

    Each query sees the keys of ``window_mask``; ``scale`` defaults to ``1 / sqrt(hd)``. The
    result is [B, nh, Tq, hd_v]. ``kernel="sdpa"`` calls PyTorch's fused attention with the
    mask, ``"textbook"`` writes out scores, mask, softmax and the weighted sum. ``dropout``
    drops attention probabilities (pass 0 outside training).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "textbook":
        weights = windowed_attention_weights(q, k, window, scale=scale,
                                             query_positions=query_positions,
                                             key_positions=key_positions)
        weights = F.dropout(weights, dropout) if dropout else weights
        group = q.shape[1] // k.shape[1]
        return weights @ v.repeat_interleave(group, dim=1)  # (B, nh, Tq, hd_v)
    group = _check_heads(q, k, v)
    query_positions, key_positions = _positions(q, k, query_positions, key_positions)
    mask = window_mask(query_positions, key_positions, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          scale=scale, enable_gqa=group > 1)


class WindowLayerCache(nn.Module):
    """One windowed layer's keys and values: a ring buffer of ``window`` slots per head.

    Position ``p`` lives in slot ``p % window``, so the memory held is ``window`` positions
    whatever the length generated. ``store(k, v, start)`` takes the keys and values of the
    positions ``start .. start + T - 1`` and returns, oldest first, the keys and values those
    queries may see: the held positions from ``start - window + 1`` on, then the new ones. The
    ring needs no state beyond its buffers: which slot holds what follows from ``start``.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, head_dim: int, window: int, *,
                 value_dim: int | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.window = _check_window(window)
        value_dim = head_dim if value_dim is None else value_dim
        self.register_buffer("keys", torch.zeros(batch_size, n_kv_heads, window, head_dim,
                                                 device=device, dtype=dtype), persistent=False)
        self.register_buffer("values", torch.zeros(batch_size, n_kv_heads, window, value_dim,
                                                   device=device, dtype=dtype),
                             persistent=False)  # each (B, nkv, W, hd)

    def store(self, k: torch.Tensor, v: torch.Tensor,
              start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` (B, nkv, T, hd) at ``start ..``; return what those queries see."""
        t = k.shape[2]
        held = torch.arange(max(0, start - self.window + 1), start, device=k.device)
        keys = torch.cat([self.keys[:, :, held % self.window], k], dim=2)  # (B, nkv, S, hd)
        values = torch.cat([self.values[:, :, held % self.window], v], dim=2)
        kept = slice(max(0, t - self.window), t)  # only the last window positions stay
        slots = torch.arange(start, start + t, device=k.device)[kept] % self.window
        self.keys[:, :, slots] = k[:, :, kept]
        self.values[:, :, slots] = v[:, :, kept]
        return keys, values


class SlidingWindowAttention(GroupedQueryAttention):
    """Grouped-query attention in which a query sees only the last ``window`` positions.

    Changes two things of ``GroupedQueryAttention``: the mask (the band of ``window_mask``
    instead of the causal triangle; the textbook path reads it through ``_future``) and the
    cache (a ring buffer of ``window`` positions). Keys arrive oldest first and end at the
    newest query, so their positions follow from how many there are.
    """

    def __init__(self, emb_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 window: int, **options: object) -> None:
        super().__init__(emb_dim, n_heads, n_kv_heads, head_dim, **options)
        self.window = _check_window(window)
        if self.window is None:
            raise TypeError("window must be an int >= 1, got None")

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> WindowLayerCache:
        """A ring buffer of ``window`` positions, whatever ``max_tokens`` is."""
        return WindowLayerCache(batch_size, self.n_kv_heads, self.head_dim, self.window,
                                device=device, dtype=dtype)

    def _positions(self, t: int, s: int, start: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + t  # the s keys are the positions end - s .. end - 1
        return torch.arange(start, end, device=device), torch.arange(end - s, end, device=device)

    def _future(self, t: int, s: int, start: int, device: torch.device) -> torch.Tensor:
        """True where a query must not see a key: ahead of it, or ``window`` or more behind."""
        return ~window_mask(*self._positions(t, s, start, device), self.window)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              start: int) -> torch.Tensor:
        queries, keys = self._positions(q.shape[2], k.shape[2], start, q.device)
        return windowed_attention(q, k, v, self.window, scale=self.scale,
                                  query_positions=queries, key_positions=keys,
                                  dropout=self.dropout if self.training else 0.0)
