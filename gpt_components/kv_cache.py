"""The KV cache (past the book's chapter 5): what a model keeps between generation steps.

Without a cache, every generated token re-runs the model over the whole window. With one, each
layer's attention writes the keys and values of the new tokens into its layer's cache and
attends to everything stored so far, so a step costs one token's worth of work. The buffers are
preallocated for ``max_tokens`` positions and are non-persistent: they never enter a
``state_dict``.

This module holds the one cache protocol every cache kind implements, and GPT-2's cache:

- ``Cache``: the bookkeeping every cache shares (``batch_size``, ``max_tokens``, ``length``,
  ``remaining``, ``advance``, ``reset``), kept in this one place.
- ``LayerCache``: one layer's cache; ``store(k, v)`` writes the new positions after the
  ``length`` stored ones and returns what the new queries attend to (bounds-checked here; a
  kind writes its own way in ``_write``). A cache whose rows hold sequences of different
  lengths (serving's paged cache) also says where each row's tokens sit (``positions``) and
  which keys each query sees (``visible``); every other kind answers None.
- ``LayerKVCache``: plain keys and values (B, heads, max_tokens, head_dim) of one layer.
- ``CacheStack``: one layer cache per block, advanced and reset together: what a model's
  ``new_kv_cache`` returns, and the only thing a model hands from step to step.
- ``KVCache``: GPT-2's cache, a stack of ``n_layers`` ``LayerKVCache``.

The cache stores absolute positions ``0 .. length - 1``. Because GPT-2's position embeddings
are learned and absolute, a full cache cannot be shifted left to make room (the stored keys were
computed with the old positions): ``generation`` rebuilds it from the last tokens instead.

>>> import torch
>>> cache = KVCache(n_layers=1, batch_size=2, n_heads=2, head_dim=4, max_tokens=8)
>>> k, v = cache.layers[0].store(torch.ones(2, 2, 3, 4), torch.ones(2, 2, 3, 4))
>>> k.shape, cache.length
(torch.Size([2, 2, 3, 4]), 0)
>>> cache.advance(3)
>>> cache.length, cache.layers[0].length, cache.remaining
(3, 3, 5)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .machinery.checks import check_instance, check_int, value_error

__all__ = ["Cache", "LayerCache", "LayerKVCache", "CacheStack", "KVCache"]


class Cache(nn.Module):
    """The cache protocol: what every cache kind is, whatever it keeps.

    A cache holds, for ``batch_size`` sequences, what attention needs of the positions
    ``0 .. length - 1``, with room for ``max_tokens`` positions in all (``remaining`` more). A
    forward pass with a cache runs in two moves: every layer stores its new positions (a
    ``LayerCache``'s ``store(k, v)``, written after the ``length`` held), then the model calls
    ``advance(t)`` once, after every layer has stored, so a pass refused or failed half-way
    never counts. ``reset()`` forgets every position and keeps the memory for reuse.

    Adding a cache kind (the chapters past the book do) is subclassing ``LayerCache``:

    - keep what the kind needs as non-persistent buffers, sized in ``__init__``;
    - write ``_write(k, v, start)``: take the new positions ``start .. start + T - 1`` and
      return what the new queries attend to. ``store`` has already checked the room and the
      batch; ``length`` moves only on ``advance``.

    A recurrent state for linear attention keeps a fixed-size state ``S = sum_j k_j v_j^T``
    instead of keys: its ``_write`` folds the chunk into ``S`` and returns the state before
    the chunk with the chunk itself (what a chunked kernel reads); ``max_tokens`` then bounds
    positions, not memory. A paged cache for serving keeps pages of a shared pool and a page
    table: its ``_write`` fills pages (taking new ones as a sequence grows) and returns the
    keys and values gathered in position order (or the page table, for a paged kernel). A
    kind that several layers read (Gemma 4 shares one layer's keys and values with later
    layers) is one object listed at each of those layers in the ``CacheStack``: the owning
    layer's attention ``store``s into it, the sharing layers' attention reads the positions
    ``0 .. length + T - 1`` it already holds, and the stack advances each distinct object
    once. The model's part never changes: it makes the stack (``new_kv_cache``) and calls
    ``advance``. ``spec/test_cache_protocol.py`` builds a toy kind this way.
    """

    def __init__(self, batch_size: int, max_tokens: int) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.max_tokens = check_int("max_tokens", max_tokens, low=1)
        self.length = 0

    @property
    def remaining(self) -> int:
        """How many more positions fit."""
        return self.max_tokens - self.length

    def advance(self, num_tokens: int) -> None:
        """Count ``num_tokens`` new positions as stored (after every layer has stored them)."""
        self.length += check_int("num_tokens", num_tokens, low=0, high=self.remaining)

    def reset(self) -> None:
        """Forget every stored position (the buffers are reused, not reallocated)."""
        self.length = 0

    def memory_bytes(self) -> int:
        """Bytes held by the buffers (each counted once, however many layers share it)."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    @property
    def positions(self) -> torch.Tensor | None:
        """The positions of the next forward's tokens, (B, T), where the rows differ (a paged
        cache serving sequences of different lengths at once); None, the usual case: every
        row's tokens sit at ``length ..``."""
        return None


class LayerCache(Cache):
    """One layer's cache: ``store(k, v)`` is the one way in, whatever the kind keeps.

    ``token_dim`` is the axis of ``k`` that counts positions (2 for (B, heads, T, hd)).
    """

    token_dim: int = 2

    def store(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new positions' ``k``, ``v`` after the ``length`` stored; return what the
        new queries attend to (for plain keys and values: all of them, oldest first)."""
        t = k.shape[self.token_dim]
        if k.shape[0] != self.batch_size:
            raise value_error("k", f"k holds {k.shape[0]} rows, but the cache was made for "
                                   f"batch_size={self.batch_size}")
        if t > self.remaining:
            raise value_error("k", f"the cache holds {self.length} of max_tokens="
                                   f"{self.max_tokens} positions; {t} more do not fit")
        return self._write(k, v, self.length)

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The kind's own writing: positions ``start ..``; what the new queries attend to."""
        raise NotImplementedError(f"{type(self).__name__} must implement _write(k, v, start)")

    def visible(self, window: int | None = None) -> torch.Tensor | None:
        """Which of the keys the last ``store`` returned each new query may see, where the
        rows differ: a bool (B, 1, T, S), True where visible (``window``: a query sees only
        the last ``window`` positions). None, the usual case: every row's queries sit at
        ``length ..`` and the attention's own causal (or windowed) mask holds. Attention
        asks after ``store``; only a cache serving rows of different lengths (the paged cache
        of ``gpt_components.serving``) answers."""
        return None

    #: Whether the cache computes attention itself (``attend(q, k, v, scale=, window=)``,
    #: which stores ``k``, ``v`` and returns the context): only serving's paged cache does,
    #: reading each row's own keys; an attention whose softmax is plain hands it its queries.
    attends: bool = False

    @property
    def layout(self) -> tuple:
        """What one position of this cache looks like: its kind and each buffer's shape
        without the batch and position axes. Two caches of one layout are interchangeable."""
        return (type(self).__name__, *(
            tuple(size for axis, size in enumerate(buffer.shape) if axis not in (0, self.token_dim))
            for buffer in self.buffers(recurse=False)))


class LayerKVCache(LayerCache):
    """Keys and values (B, n_kv_heads, max_tokens, head_dim) of one attention layer."""

    def __init__(self, batch_size: int, n_kv_heads: int, head_dim: int, max_tokens: int, *,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(batch_size, max_tokens)
        shape = (batch_size, check_int("n_kv_heads", n_kv_heads, low=1), max_tokens,
                 check_int("head_dim", head_dim, low=1))  # (B, nkv, T_max, hd)
        self.register_buffer("keys", torch.zeros(shape, device=device, dtype=dtype),
                             persistent=False)
        self.register_buffer("values", torch.zeros(shape, device=device, dtype=dtype),
                             persistent=False)

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, nkv, end, hd)


class CacheStack(Cache):
    """One cache per layer (``layers[i]`` is block ``i``'s), counting positions together.

    ``advance`` and ``reset`` reach every distinct layer cache once, so a cache several layers
    share is listed at each of them and still counted once.
    """

    def __init__(self, layers: Iterable[LayerCache], batch_size: int, max_tokens: int) -> None:
        super().__init__(batch_size, max_tokens)
        layers = list(layers)
        if not layers:
            raise value_error("layers", "layers must hold one cache per layer, got none")
        for layer in layers:
            check_instance("layers", layer, LayerCache, "a LayerCache per layer")
        self.layers = nn.ModuleList(layers)
        # Read at every forward pass, so worked out once: a layer's kind and shapes never change.
        self._layout = tuple(layer.layout for layer in layers)

    def _distinct(self) -> list[LayerCache]:
        return list({id(layer): layer for layer in self.layers}.values())

    def advance(self, num_tokens: int) -> None:
        super().advance(num_tokens)
        for layer in self._distinct():
            layer.advance(num_tokens)

    def reset(self) -> None:
        super().reset()
        for layer in self._distinct():
            layer.reset()

    @property
    def layout(self) -> tuple:
        """Every layer's ``layout``: a model accepts a stack whose layout is its own."""
        return self._layout


class KVCache(CacheStack):
    """GPT-2's cache: keys and values for ``n_layers`` layers of ``n_heads`` heads each.

    ``layers[i]`` is layer ``i``'s ``LayerKVCache``; ``keys`` and ``values`` read every
    layer's at once, (n_layers, B, n_heads, max_tokens, head_dim).
    """

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, head_dim: int,
                 max_tokens: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size),
                            ("n_heads", n_heads), ("head_dim", head_dim),
                            ("max_tokens", max_tokens)):
            check_int(name, value, low=1)
        super().__init__((LayerKVCache(batch_size, n_heads, head_dim, max_tokens, device=device,
                                       dtype=dtype) for _ in range(n_layers)),
                         batch_size, max_tokens)

    @property
    def keys(self) -> torch.Tensor:
        """Every layer's keys stacked (a copy, for reading): (L, B, nh, max_tokens, hd)."""
        return torch.stack([layer.keys for layer in self.layers])

    @property
    def values(self) -> torch.Tensor:
        """Every layer's values stacked (a copy, for reading): (L, B, nh, max_tokens, hd)."""
        return torch.stack([layer.values for layer in self.layers])
