"""Sliding-window attention (past the book, Gemma 3's local layers): each query sees ``W`` keys.

A query at position ``p`` attends to the keys at ``p - W + 1 .. p``: the last ``W`` positions,
itself included (the convention of Gemma 3 and ``transformers``). With ``W >= T`` it is plain
causal attention. Because a windowed layer never looks further back than ``W - 1`` positions,
its KV cache only needs ``W`` slots, whatever the length generated: ``WindowLayerCache`` is that
ring buffer, ``FullLayerCache`` the usual growing cache of a global layer.

Exports:

- ``window_mask(query_positions, key_positions, window)``: which key each query may see.
- ``windowed_attention(q, k, v, window, ...)``: the SDPA path and the textbook path side by side,
  with grouped-query keys and values (``n_kv_heads`` dividing ``n_heads``).
- ``windowed_attention_weights(...)``: the textbook path's probabilities (for ``trace``).
- ``FullLayerCache`` and ``WindowLayerCache``: one layer's cache, same interface.

Positions travel with the keys: a cache hands back the positions of the keys it holds, and the
mask is built from positions, so a ring buffer's slot order never matters.

>>> import torch
>>> window_mask(torch.arange(4), torch.arange(4), window=2).int()
tensor([[1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 1, 1, 0],
        [0, 0, 1, 1]], dtype=torch.int32)
>>> q, k = torch.randn(1, 2, 6, 4), torch.randn(1, 1, 6, 4)
>>> windowed_attention(q, k, k, window=3).shape
torch.Size([1, 2, 6, 4])
>>> cache = WindowLayerCache(batch_size=1, window=3, entries=((1, 4), (1, 4)))
>>> for step in range(6):
...     keys, values, positions = cache.update((k[:, :, step:step + 1], k[:, :, step:step + 1]))
>>> sorted(positions.tolist()), tuple(cache.slots[0].shape)
([3, 4, 5], (1, 1, 3, 4))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "window_mask",
    "windowed_attention",
    "windowed_attention_weights",
    "FullLayerCache",
    "WindowLayerCache",
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
                       kernel: str = "sdpa") -> torch.Tensor:
    """Attention of ``q`` [B, nh, Tq, hd] over ``k`` [B, nkv, Tk, hd], ``v`` [B, nkv, Tk, hd_v].

    Each query sees the keys of ``window_mask``; ``scale`` defaults to ``1 / sqrt(hd)``. The
    result is [B, nh, Tq, hd_v]. ``kernel="sdpa"`` calls PyTorch's fused attention with the
    mask, ``"textbook"`` writes out scores, mask, softmax and the weighted sum.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "textbook":
        weights = windowed_attention_weights(q, k, window, scale=scale,
                                             query_positions=query_positions,
                                             key_positions=key_positions)
        group = q.shape[1] // k.shape[1]
        return weights @ v.repeat_interleave(group, dim=1)  # (B, nh, Tq, hd_v)
    group = _check_heads(q, k, v)
    query_positions, key_positions = _positions(q, k, query_positions, key_positions)
    mask = window_mask(query_positions, key_positions, window)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=group > 1)


class FullLayerCache(nn.Module):
    """One layer's cache that keeps every position up to ``max_tokens`` (a global layer).

    ``entries`` gives each cached tensor's ``(heads, dim)``: ``((nkv, hd), (nkv, hd_v))`` for
    keys and values, or a latent and a RoPE key for latent attention. ``update`` appends the new
    tokens' tensors (each [B, heads, T, dim]) and returns everything held, with its positions.
    """

    def __init__(self, batch_size: int, max_tokens: int, entries: tuple[tuple[int, int], ...],
                 *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.max_tokens = max_tokens
        for i, (heads, dim) in enumerate(entries):  # each (B, heads, T_max, dim)
            self.register_buffer(f"entry{i}", torch.zeros(batch_size, heads, max_tokens, dim,
                                                          device=device, dtype=dtype),
                                 persistent=False)
        self.n_entries = len(entries)
        self.length = 0

    @property
    def slots(self) -> list[torch.Tensor]:
        """The held tensors, one per entry."""
        return [getattr(self, f"entry{i}") for i in range(self.n_entries)]

    def update(self, new: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Store ``new`` after the held tokens; return every held tensor and the positions."""
        start, end = self.length, self.length + new[0].shape[2]
        if end > self.max_tokens:
            raise ValueError(f"the cache holds {start} of max_tokens={self.max_tokens} "
                             f"positions; {end - start} more do not fit")
        for slot, tensor in zip(self.slots, new, strict=True):
            slot[:, :, start:end] = tensor
        self.length = end
        positions = torch.arange(end, device=self.slots[0].device)
        return (*(slot[:, :, :end] for slot in self.slots), positions)

    def reset(self) -> None:
        self.length = 0


class WindowLayerCache(nn.Module):
    """One windowed layer's cache: a ring buffer of ``window`` slots, whatever the length.

    Position ``p`` lives in slot ``p % window``. A one-token step writes first and attends to
    the ring: the key it overwrites is ``window`` positions back, already out of sight. A longer
    chunk attends to the held keys followed by its own, then keeps the last ``window``. The
    memory held is ``window`` positions per entry, never more.
    """

    def __init__(self, batch_size: int, window: int, entries: tuple[tuple[int, int], ...],
                 *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.window = _check_window(window)
        for i, (heads, dim) in enumerate(entries):  # each (B, heads, W, dim)
            self.register_buffer(f"entry{i}", torch.zeros(batch_size, heads, window, dim,
                                                          device=device, dtype=dtype),
                                 persistent=False)
        self.register_buffer("slot_positions", torch.full((window,), -1, device=device),
                             persistent=False)  # -1: an empty slot
        self.n_entries = len(entries)
        self.length = 0

    @property
    def slots(self) -> list[torch.Tensor]:
        """The held tensors, one per entry."""
        return [getattr(self, f"entry{i}") for i in range(self.n_entries)]

    def update(self, new: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Store ``new`` (each [B, heads, T, dim]); return what the new queries may attend to."""
        t, start = new[0].shape[2], self.length
        positions = torch.arange(start, start + t, device=self.slot_positions.device)
        if t == 1:
            self._write(new, positions)
            self.length += 1
            return (*self.slots, self.slot_positions)
        held = self.slot_positions >= 0
        attended = tuple(torch.cat([slot[:, :, held], tensor], dim=2)
                         for slot, tensor in zip(self.slots, new, strict=True))
        attended_positions = torch.cat([self.slot_positions[held], positions])
        keep = slice(max(0, t - self.window), t)
        self._write(tuple(tensor[:, :, keep] for tensor in new), positions[keep])
        self.length += t
        return (*attended, attended_positions)

    def _write(self, new: tuple[torch.Tensor, ...], positions: torch.Tensor) -> None:
        index = positions % self.window
        for slot, tensor in zip(self.slots, new, strict=True):
            slot[:, :, index] = tensor
        self.slot_positions[index] = positions

    def reset(self) -> None:
        self.slot_positions.fill_(-1)
        self.length = 0
