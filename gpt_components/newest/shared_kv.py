"""Key/value caches that several layers read (Gemma 4), and the attention that reads them.

Gemma 4's last ``kv_shared_layers`` layers compute queries only: each attends to the keys and
values of the last earlier layer of its kind (sliding or full), which that layer computed and
stored. Those layers need no key or value projection, and no cache of their own: the cache
protocol (``gpt_components.kv_cache``) expresses "a cache several layers read" as one layer
cache object listed at each of their positions in the ``CacheStack``, which the stack advances
once. This module holds the three pieces that make it work:

- ``kv_sources(layer_types, n_shared)``: for each layer, the layer whose keys and values it
  attends to (itself, or the last unshared layer of its kind); a shared layer with no earlier
  layer of its kind is refused, naming ``kv_shared_layers``.
- ``SharedLayerCache``: a wrapper around any layer cache that keeps what its owner's ``store``
  returned this step (the keys and values the owner's queries attended to, oldest first) for
  the layers that ``read()`` them, until the stack advances. A sliding layer's ring buffer keeps
  only its last ``window`` positions, so a prompt longer than the window could not be read back
  from it: the sharers need what the owner attended to, which is what ``store`` returns.
  ``OnePassCache`` is the cache of a pass without one: it keeps nothing and hands the new keys
  and values through, so a pass without a cache shares the same way.
- ``SharedKVAttention``: grouped-query attention with Gemma 4's choices: RMS-normed queries,
  keys and values (the values without a weight), scores not scaled (the norms fix their size),
  an optional window, keys that double as values (``keys_equal_values``: no ``W_value``), and,
  for a sharing layer, no ``W_key``/``W_value`` at all: it ``read()``s its cache.

>>> import torch
>>> kv_sources(["sliding_attention", "full_attention", "sliding_attention", "full_attention"], 2)
[0, 1, 0, 1]
>>> owner = SharedKVAttention(16, 2, 1, 8, window=None)
>>> reader = SharedKVAttention(16, 2, 1, 8, window=None, reads_shared=True)
>>> cache = SharedLayerCache(owner.new_cache(1, 10))
>>> x = torch.randn(1, 4, 16)
>>> owner(x, cache=cache).shape, reader(x, cache=cache).shape, reader.W_key is None
(torch.Size([1, 4, 16]), torch.Size([1, 4, 16]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import ATTENTION_KERNELS, check_features
from ..kv_cache import LayerCache, LayerKVCache
from ..machinery.checks import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    value_error,
)
from ..modern.attention import first_position
from ..modern.norms import RMSNorm
from ..modern.rope import apply_rope
from ..modern.sliding_window import (
    WindowLayerCache,
    windowed_attention,
    windowed_attention_weights,
)

__all__ = ["kv_sources", "SharedLayerCache", "OnePassCache", "SharedKVAttention", "rms_only"]


def kv_sources(layer_types: Sequence[str], n_shared: int) -> list[int]:
    """For each layer, the index of the layer whose keys and values it attends to.

    The last ``n_shared`` layers read the last unshared layer of their own kind; every other
    layer reads its own. A shared layer whose kind no unshared layer has is refused.
    """
    kinds = list(layer_types)
    check_int("kv_shared_layers", n_shared, low=0, high=len(kinds))
    first_shared = len(kinds) - n_shared
    last_of_kind = {kind: i for i, kind in enumerate(kinds[:first_shared])}
    sources = []
    for i, kind in enumerate(kinds):
        if i < first_shared:
            sources.append(i)
        elif kind in last_of_kind:
            sources.append(last_of_kind[kind])
        else:
            raise value_error("kv_shared_layers", f"kv_shared_layers={n_shared} makes layer {i} "
                                                  f"({kind}) share the keys and values of an "
                                                  f"earlier {kind} layer, but layers 0.."
                                                  f"{first_shared - 1} have none")
    return sources


class OnePassCache(LayerCache):
    """The cache of a pass without one: keeps nothing, returns the new keys and values.

    A pass without a cache starts at position 0, so its queries attend to exactly the keys and
    values it computes; wrapped in a ``SharedLayerCache``, they reach the sharing layers.
    """

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        return k, v


class SharedLayerCache(LayerCache):
    """A layer cache that later layers read: ``inner`` stores, ``read()`` gives what it returned.

    Listed in the ``CacheStack`` at the owner's position and at every sharer's; the owner's
    attention ``store``s into it (``inner`` keeps what its kind keeps), each sharer's attention
    ``read()``s the keys and values the owner's queries attended to this step. ``advance`` and
    ``reset`` (once per step: the stack reaches each distinct cache once) forget them.
    """

    def __init__(self, inner: LayerCache) -> None:
        check_instance("inner", inner, LayerCache, "a LayerCache")
        super().__init__(inner.batch_size, inner.max_tokens)
        self.inner = inner
        self.token_dim = inner.token_dim
        self.stored: tuple[torch.Tensor, torch.Tensor] | None = None

    def _write(self, k: torch.Tensor, v: torch.Tensor,
               start: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.stored = self.inner.store(k, v)
        return self.stored

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the owner's ``store`` returned this step: keys and values, oldest first."""
        if self.stored is None:
            raise value_error("cache", "nothing to read: the layer that owns this cache has not "
                                       "stored this step (a sharing layer runs after its owner)")
        return self.stored

    def advance(self, num_tokens: int) -> None:
        super().advance(num_tokens)
        self.inner.advance(num_tokens)
        self.stored = None

    def reset(self) -> None:
        super().reset()
        self.inner.reset()
        self.stored = None

    @property
    def layout(self) -> tuple:
        return (type(self).__name__, self.inner.layout)


def rms_only(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x`` divided by its root mean square over the last axis: RMSNorm without a weight."""
    compute = x.to(torch.promote_types(x.dtype, torch.float32))
    return (compute * torch.rsqrt(compute.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class SharedKVAttention(nn.Module):
    """Gemma 4's attention: normed queries, keys and values; shared or owned keys and values.

    ``window``: each query sees that many positions, itself included (None: every earlier one).
    ``keys_equal_values``: the key projection's output, before its norm and rotation, is also
    the value (no ``W_value``). ``reads_shared``: the layer has no ``W_key``/``W_value`` and
    reads its cache's ``SharedLayerCache.read()`` instead. Scores are not scaled (``scale=1``):
    the queries and keys are RMS-normed, so their dot products are already of unit size.
    """

    def __init__(self, emb_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 window: int | None, keys_equal_values: bool = False, reads_shared: bool = False,
                 norm_eps: float = 1e-6, bias: bool = False, dropout: float = 0.0,
                 kernel: str = "sdpa") -> None:
        super().__init__()
        self.emb_dim = check_int("emb_dim", emb_dim, low=1)
        self.n_heads = check_int("n_heads", n_heads, low=1)
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads, low=1)
        self.head_dim = check_int("head_dim", head_dim, low=1)
        if n_heads % n_kv_heads:
            raise value_error("n_kv_heads", f"n_kv_heads ({n_kv_heads}) must divide n_heads "
                                            f"({n_heads})")
        self.window = check_int("window", window, low=1, optional=True)
        check_bool("keys_equal_values", keys_equal_values)
        check_bool("reads_shared", reads_shared)
        check_bool("bias", bias)
        self.norm_eps = check_float("norm_eps", norm_eps, low=0, low_open=True)
        self.dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.kernel = check_choice("kernel", kernel, ATTENTION_KERNELS)
        self.group = n_heads // n_kv_heads
        self.W_query = nn.Linear(emb_dim, n_heads * head_dim, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps)
        self.W_key = self.W_value = self.k_norm = None
        if not reads_shared:
            self.W_key = nn.Linear(emb_dim, n_kv_heads * head_dim, bias=bias)
            self.k_norm = RMSNorm(head_dim, eps=norm_eps)
            if not keys_equal_values:
                self.W_value = nn.Linear(emb_dim, n_kv_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(n_heads * head_dim, emb_dim, bias=bias)

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> LayerCache:
        """This layer's own cache: a ring of ``window`` positions, or every position."""
        if self.window is None:
            return LayerKVCache(batch_size, self.n_kv_heads, self.head_dim, max_tokens,
                                device=device, dtype=dtype)
        return WindowLayerCache(batch_size, self.n_kv_heads, self.head_dim, self.window,
                                max_tokens, device=device, dtype=dtype)

    def _keys_values(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                     cache: LayerCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the queries attend to: the cache owner's, or this layer's own (stored)."""
        if self.W_key is None:
            if not isinstance(cache, SharedLayerCache):
                raise value_error("cache", "a layer that shares keys and values reads them from "
                                           "a SharedLayerCache its owner stored into, got "
                                           f"{type(cache).__name__}")
            return cache.read()
        b, t, _ = x.shape
        k = self.W_key(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = k if self.W_value is None else self.W_value(x).view(b, t, self.n_kv_heads,
                                                                 self.head_dim)
        k = self.k_norm(k).transpose(1, 2)  # (B, nkv, T, hd)
        v = rms_only(v, self.norm_eps).transpose(1, 2)
        if rope is not None:
            k = apply_rope(k, *rope)
        return (k, v) if cache is None else cache.store(k, v)

    def forward(self, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None, start: int | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over ``x`` (B, T, emb), whose first token sits at position ``start``.

        As ``GroupedQueryAttention.forward``: ``rope`` the ``(cos, sin)`` of those positions,
        ``cache`` the earlier ones (a sharing layer's: its owner's ``SharedLayerCache``),
        ``need_weights`` also returns the probabilities.
        """
        check_features(x, self.emb_dim, (3,), next(self.parameters()))
        start = first_position(cache, start)
        b, t, _ = x.shape
        q = self.q_norm(self.W_query(x).view(b, t, self.n_heads, self.head_dim)).transpose(1, 2)
        if rope is not None:
            q = apply_rope(q, *rope)  # (B, nh, T, hd)
        k, v = self._keys_values(x, rope, cache)  # (B, nkv, S, hd): positions end - S .. end
        end = start + t
        queries = torch.arange(start, end, device=x.device)
        keys = torch.arange(end - k.shape[2], end, device=x.device)
        if need_weights or self.kernel == "textbook":
            weights = windowed_attention_weights(q, k, self.window, scale=1.0,
                                                 query_positions=queries, key_positions=keys)
            dropped = F.dropout(weights, self.dropout, self.training) if self.dropout else weights
            context = dropped @ v.repeat_interleave(self.group, dim=1)  # (B, nh, T, hd)
        else:
            weights = None
            context = windowed_attention(q, k, v, self.window, scale=1.0,
                                         query_positions=queries, key_positions=keys,
                                         dropout=self.dropout if self.training else 0.0)
        out = self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        return (out, weights) if need_weights else out
