"""The KV cache (past the book's chapter 5): keys and values kept between generation steps.

Without a cache, every generated token re-runs the model over the whole window. With one, each
layer's attention writes the keys and values of the new tokens into ``KVCache`` and attends to
everything stored so far, so a step costs one token's worth of work. The buffers are
preallocated for ``max_tokens`` positions of every layer and are non-persistent: they never enter
a ``state_dict``.

The cache stores absolute positions ``0 .. length - 1``. Because GPT-2's position embeddings are
learned and absolute, a full cache cannot be shifted left to make room (the stored keys were
computed with the old positions): ``generation`` rebuilds it from the last tokens instead.

>>> import torch
>>> cache = KVCache(n_layers=1, batch_size=2, n_heads=2, head_dim=4, max_tokens=8)
>>> k, v = cache.store(0, torch.ones(2, 2, 3, 4), torch.ones(2, 2, 3, 4))
>>> k.shape, cache.length
(torch.Size([2, 2, 3, 4]), 0)
>>> cache.advance(3)
>>> cache.length
3
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["KVCache"]


class KVCache(nn.Module):
    """Preallocated keys and values for ``n_layers`` layers of one batch of sequences.

    A forward pass with the cache calls ``store`` once per layer (each writes at the same
    offset, ``length``), then ``advance`` once with the number of new tokens.
    """

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, head_dim: int,
                 max_tokens: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size),
                            ("n_heads", n_heads), ("head_dim", head_dim),
                            ("max_tokens", max_tokens)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        shape = (n_layers, batch_size, n_heads, max_tokens, head_dim)  # (L, B, nh, T_max, hd)
        self.register_buffer("keys", torch.zeros(shape, device=device, dtype=dtype),
                             persistent=False)
        self.register_buffer("values", torch.zeros(shape, device=device, dtype=dtype),
                             persistent=False)
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.length = 0

    def store(self, layer: int, k: torch.Tensor,
              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k``, ``v`` (B, nh, T, hd) after the stored tokens; return all keys and values.

        The returned views are (B, nh, length + T, hd); ``length`` moves only on ``advance``.
        """
        t = k.shape[2]
        end = self.length + t
        if end > self.max_tokens:
            raise ValueError(
                f"the cache holds {self.length} of max_tokens={self.max_tokens} positions; "
                f"{t} more do not fit"
            )
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

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
