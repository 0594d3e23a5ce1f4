"""Per-layer KV caches for the modern decoder.

``DecoderKVCache`` is what ``model.new_kv_cache`` returns and what ``generation`` uses: the
same ``length`` / ``batch_size`` / ``max_tokens`` / ``remaining`` / ``advance`` / ``reset`` as
GPT-2's ``KVCache``, holding one cache object per layer in ``layers``. Each attention module
makes its own layer cache (``attention.new_cache(...)``), so a layer can keep whatever its
attention needs: ``LayerKVCache`` keeps grouped-query attention's keys and values for
``n_kv_heads`` heads, not ``n_heads``; a sliding-window layer can keep a ring buffer; latent
attention its latent. Memory per token: ``2 * n_layers * n_kv_heads * head_dim * bytes``.

>>> import torch
>>> layer = LayerKVCache(batch_size=1, n_kv_heads=2, head_dim=4, max_tokens=8)
>>> cache = DecoderKVCache([layer], batch_size=1, max_tokens=8)
>>> k, v = cache.layers[0].store(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), start=0)
>>> cache.advance(3)
>>> k.shape, cache.length, cache.memory_bytes()
(torch.Size([1, 2, 3, 4]), 3, 512)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LayerKVCache", "DecoderKVCache"]


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class LayerKVCache(nn.Module):
    """Keys and values (B, n_kv_heads, max_tokens, head_dim) of one attention layer."""

    def __init__(self, batch_size: int, n_kv_heads: int, head_dim: int, max_tokens: int, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        shape = (_check_count("batch_size", batch_size), _check_count("n_kv_heads", n_kv_heads),
                 _check_count("max_tokens", max_tokens), _check_count("head_dim", head_dim))
        self.register_buffer("keys", torch.zeros(shape, device=device, dtype=dtype),
                             persistent=False)
        self.register_buffer("values", torch.zeros(shape, device=device, dtype=dtype),
                             persistent=False)
        self.max_tokens = max_tokens

    def store(self, k: torch.Tensor, v: torch.Tensor,
              start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` (B, n_kv, T, hd) at positions ``start ..``; return all so far."""
        end = start + k.shape[2]
        if end > self.max_tokens:
            raise ValueError(f"the cache holds {start} of max_tokens={self.max_tokens} "
                             f"positions; {k.shape[2]} more do not fit")
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, n_kv, end, hd)


class DecoderKVCache(nn.Module):
    """One cache per layer, and the count of positions every layer has stored."""

    def __init__(self, layers: Sequence[nn.Module], batch_size: int, max_tokens: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.batch_size = _check_count("batch_size", batch_size)
        self.max_tokens = _check_count("max_tokens", max_tokens)
        self.length = 0

    def advance(self, num_tokens: int) -> None:
        """Count ``num_tokens`` new positions as stored (after every layer has stored them)."""
        self.length += num_tokens

    def reset(self) -> None:
        """Forget every stored token (the buffers are reused, not reallocated)."""
        self.length = 0

    @property
    def remaining(self) -> int:
        """How many more positions fit."""
        return self.max_tokens - self.length

    def memory_bytes(self) -> int:
        """Bytes held by every layer's buffers."""
        return sum(b.numel() * b.element_size() for b in self.buffers())
