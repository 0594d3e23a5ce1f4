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
- ``WindowLayerCache``: one windowed layer's ring buffer, a ``LayerCache`` like any other
  (``store(k, v)`` returns the keys and values the new queries attend to, oldest first).

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
>>> cache = WindowLayerCache(batch_size=1, n_kv_heads=1, head_dim=4, window=3, max_tokens=6)
>>> for step in range(6):
...     keys, values = cache.store(k[:, :, step:step + 1], k[:, :, step:step + 1])
...     cache.advance(1)
>>> torch.equal(keys, k[:, :, 3:6]), tuple(cache.keys.shape)  # positions 3, 4, 5; 3 slots
(True, (1, 1, 3, 4))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..attention import ATTENTION_KERNELS
from ..kv_cache import LayerCache
from ..machinery.checks import check_choice, check_int, check_tensor, value_error
from .attention import GroupedQueryAttention

__all__ = [
    "window_mask",
    "windowed_attention",
    "windowed_attention_weights",
    "WindowLayerCache",
    "SlidingWindowAttention",
]

def window_mask(query_positions: torch.Tensor, key_positions: torch.Tensor,
                window: int | None) -> torch.Tensor:
    """``[Tq, Tk]`` bool, True where the query may see the key.

    A key is visible when it is not in the future and at most ``window - 1`` positions back
    (``window=None``: no limit, plain causal attention). Negative key positions mark empty
    cache slots and are never visible.
    """
    check_int("window", window, low=1, optional=True)
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
    """The query heads per key/value head, once q, k, v are [batch, heads, tokens, hd]."""
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, tensor, dims=4, kind="floating")
    n_heads, n_kv = q.shape[1], k.shape[1]
    if v.shape[1] != n_kv or n_heads % n_kv != 0:
        raise value_error("k", f"k and v must have the same number of heads, dividing q's "
                               f"{n_heads}; got {n_kv} and {v.shape[1]}")
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
    check_choice("kernel", kernel, ATTENTION_KERNELS)
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


class WindowLayerCache(LayerCache):
    """One windowed layer's keys and values: a ring buffer of ``window`` slots per head.

    Position ``p`` lives in slot ``p % slots``, so the memory held is ``window`` positions
    whatever the length generated (``max_tokens`` of them when that is fewer: such a ring never
    wraps). ``store(k, v)`` takes the keys and values of the positions ``length .. length +
    T - 1`` and returns, oldest first, the keys and values those queries may see: the held
    positions from ``length - window + 1`` on, then the new ones. Which slot holds what follows
    from ``length``: the ring needs no state beyond its buffers and the protocol's count.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, head_dim: int, window: int,
                 max_tokens: int, *, value_dim: int | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(batch_size, max_tokens)
        self.window = check_int("window", window, low=1)
        check_int("n_kv_heads", n_kv_heads, low=1)
        check_int("head_dim", head_dim, low=1)
        value_dim = head_dim if value_dim is None else check_int("value_dim", value_dim, low=1)
        slots = min(window, max_tokens)
        self.register_buffer("keys", torch.zeros(batch_size, n_kv_heads, slots, head_dim,
                                                 device=device, dtype=dtype), persistent=False)
        self.register_buffer("values", torch.zeros(batch_size, n_kv_heads, slots, value_dim,
                                                   device=device, dtype=dtype),
                             persistent=False)  # each (B, nkv, slots, hd)

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        t, slots = k.shape[2], self.keys.shape[2]
        held = torch.arange(max(0, start - self.window + 1), start, device=k.device) % slots
        keys = torch.cat([self.keys[:, :, held], k], dim=2)  # (B, nkv, S, hd)
        values = torch.cat([self.values[:, :, held], v], dim=2)
        kept = slice(max(0, t - slots), t)  # only the last slots positions stay
        written = torch.arange(start, start + t, device=k.device)[kept] % slots
        self.keys[:, :, written] = k[:, :, kept]
        self.values[:, :, written] = v[:, :, kept]
        return keys, values

    @property
    def layout(self) -> tuple:
        return (*super().layout, ("window", self.window))


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
        self.window = check_int("window", window, low=1)

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> WindowLayerCache:
        """A ring buffer of ``window`` positions (fewer if ``max_tokens`` is less)."""
        return WindowLayerCache(batch_size, self.n_kv_heads, self.head_dim, self.window,
                                max_tokens, device=device, dtype=dtype)

    def _positions(self, t: int, s: int, start: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + t  # the s keys are the positions end - s .. end - 1
        return torch.arange(start, end, device=device), torch.arange(end - s, end, device=device)

    def _future(self, t: int, s: int, start: int, device: torch.device) -> torch.Tensor:
        """True where a query must not see a key: ahead of it, or ``window`` or more behind."""
        return ~window_mask(*self._positions(t, s, start, device), self.window)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
              visible: torch.Tensor | None = None) -> torch.Tensor:
        if visible is not None:  # a paged cache masked the window itself
            return super()._sdpa(q, k, v, start, visible)
        queries, keys = self._positions(q.shape[2], k.shape[2], start, q.device)
        return windowed_attention(q, k, v, self.window, scale=self.scale,
                                  query_positions=queries, key_positions=keys,
                                  dropout=self.dropout if self.training else 0.0)
