"""Per-layer KV caches for the modern decoder.

``DecoderKVCache`` is what ``DecoderModel.new_kv_cache`` returns and what ``generation`` uses:
a ``CacheStack`` (``gpt_components.kv_cache``, where the cache protocol lives) of whatever each
layer's attention keeps. Each attention module makes its own layer cache
(``attention.new_cache(...)``): ``LayerKVCache`` keeps grouped-query attention's keys and
values for ``n_kv_heads`` heads, not ``n_heads``; a sliding-window layer keeps a ring buffer
(``WindowLayerCache``); latent attention its latent (``LatentKVCache``). Memory per token of
plain layers: ``2 * n_layers * n_kv_heads * head_dim * bytes``.

>>> import torch
>>> layer = LayerKVCache(batch_size=1, n_kv_heads=2, head_dim=4, max_tokens=8)
>>> cache = DecoderKVCache([layer], batch_size=1, max_tokens=8)
>>> k, v = cache.layers[0].store(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
>>> cache.advance(3)
>>> k.shape, cache.length, cache.memory_bytes()
(torch.Size([1, 2, 3, 4]), 3, 512)
"""

from __future__ import annotations

from ..kv_cache import CacheStack, LayerKVCache

__all__ = ["LayerKVCache", "DecoderKVCache"]


class DecoderKVCache(CacheStack):
    """One cache per layer, of whatever kind that layer's attention keeps."""
