"""Key/value caches that several layers read (Gemma 4), and the attention that reads them.

Gemma 4's last ``kv_shared_layers`` layers compute queries only: each attends to the keys and
values of the last earlier layer of its kind (sliding or full), its *source*, which computed
and stored them. Those layers need no key or value projection, and no cache of their own: the
cache protocol (``gpt_components.kv_cache``) expresses "a cache several layers read" as one
layer cache object listed at each of their positions in the ``CacheStack``, which the stack
advances once (and which a paged cache for serving pages once, keeping it shared). This
module holds what makes it work:

- ``kv_sources(layer_types, n_shared)``: for each layer, the layer whose keys and values it
  attends to (itself, or the last unshared layer of its kind); a shared layer with no earlier
  layer of its kind is refused, naming ``kv_shared_layers``.
- ``SharedKVAttention``: grouped-query attention with Gemma 4's choices: RMS-normed queries,
  keys and values (the values without a weight), scores not scaled (the norms fix their size),
  an optional window, keys that double as values (``keys_equal_values``: no ``W_value``), and,
  for a sharing layer, no ``W_key``/``W_value`` at all.

What a sharing layer attends to is what its source's ``store`` *returned* this pass (the keys
and values the source's queries attended to, oldest first), handed over in the pass's
``shared`` dict: a sliding source's ring keeps only its last ``window`` positions, so a prompt
longer than the window could not be read back from the cache itself. Every layer of a shared
cache asks it which keys each query may see (``LayerCache.visible``), so a paged cache whose
rows differ places them for the sharing layers too.

>>> import torch
>>> kv_sources(["sliding_attention", "full_attention", "sliding_attention", "full_attention"], 2)
[0, 1, 0, 1]
>>> owner = SharedKVAttention(16, 2, 1, 8, window=None, layer=0)
>>> reader = SharedKVAttention(16, 2, 1, 8, window=None, layer=1, reads_from=0)
>>> cache, shared = owner.new_cache(1, 10), {}
>>> x = torch.randn(1, 4, 16)
>>> owner(x, cache=cache, shared=shared).shape, reader(x, cache=cache, shared=shared).shape
(torch.Size([1, 4, 16]), torch.Size([1, 4, 16]))
>>> reader.W_key is None, shared[0][0] is not None
(True, True)
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
    check_int,
    value_error,
)
from ..modern.attention import first_position
from ..modern.norms import RMSNorm
from ..modern.rope import apply_rope
from ..modern.sliding_window import WindowLayerCache, window_mask

__all__ = ["kv_sources", "SharedKVAttention", "rms_only"]


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


def rms_only(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x`` divided by its root mean square over the last axis: RMSNorm without a weight."""
    compute = x.to(torch.promote_types(x.dtype, torch.float32))
    return (compute * torch.rsqrt(compute.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class SharedKVAttention(nn.Module):
    """Gemma 4's attention: normed queries, keys and values; shared or owned keys and values.

    ``window``: each query sees that many positions, itself included (None: every earlier one).
    ``keys_equal_values``: the key projection's output, before its norm and rotation, is also
    the value (no ``W_value``). ``layer`` is this layer's index and ``reads_from`` its source's
    (None: itself): a layer that reads another's has no ``W_key``/``W_value`` and attends to
    ``shared[reads_from]``; a layer that computes its own puts them in ``shared[layer]``.
    Scores are not scaled (``scale=1``): queries and keys are RMS-normed, so their dot products
    are already of unit size.
    """

    def __init__(self, emb_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 window: int | None, keys_equal_values: bool = False, layer: int = 0,
                 reads_from: int | None = None, norm_eps: float = 1e-6, bias: bool = False,
                 dropout: float = 0.0, kernel: str = "sdpa") -> None:
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
        self.layer = check_int("layer", layer, low=0)
        self.reads_from = check_int("reads_from", reads_from, low=0, high=layer, optional=True)
        check_bool("bias", bias)
        self.norm_eps = check_float("norm_eps", norm_eps, low=0, low_open=True)
        self.dropout = check_float("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.kernel = check_choice("kernel", kernel, ATTENTION_KERNELS)
        self.group = n_heads // n_kv_heads
        self.W_query = nn.Linear(emb_dim, n_heads * head_dim, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps=norm_eps)
        self.W_key = self.W_value = self.k_norm = None
        if reads_from is None or reads_from == layer:
            self.reads_from = None
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

    def _new_keys_values(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of the tokens of ``x``, (B, nkv, T, hd) each."""
        b, t, _ = x.shape
        k = self.W_key(x).view(b, t, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = k if self.W_value is None else self.W_value(x).view(b, t, self.n_kv_heads,
                                                                 self.head_dim)
        k = self.k_norm(k).transpose(1, 2)  # (B, nkv, T, hd)
        v = rms_only(v, self.norm_eps).transpose(1, 2)
        if rope is not None:
            k = apply_rope(k, *rope)
        return k, v

    def _keys_values(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                     cache: LayerCache | None,
                     shared: dict[int, tuple[torch.Tensor, torch.Tensor]] | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """What the queries attend to: the source's, or this layer's own (stored)."""
        if self.reads_from is not None:
            if shared is None or self.reads_from not in shared:
                raise value_error("shared", f"layer {self.layer} attends to layer "
                                            f"{self.reads_from}'s keys and values, which this "
                                            "pass has not computed (run the layers in order)")
            return shared[self.reads_from]
        k, v = self._new_keys_values(x, rope)
        if cache is not None:
            k, v = cache.store(k, v)
        if shared is not None:
            shared[self.layer] = (k, v)  # for the layers that read this one's
        return k, v

    def forward(self, x: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None, start: int | None = None,
                need_weights: bool = False,
                shared: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend over ``x`` (B, T, emb), whose first token sits at position ``start``.

        As ``GroupedQueryAttention.forward``: ``rope`` the ``(cos, sin)`` of those positions,
        ``cache`` the earlier ones (a sharing layer's: its source's, the same object),
        ``need_weights`` also returns the probabilities; ``shared`` is the pass's keys and
        values by source layer.
        """
        check_features(x, self.emb_dim, (3,), next(self.parameters()))
        start = first_position(cache, start)
        b, t, _ = x.shape
        q = self.q_norm(self.W_query(x).view(b, t, self.n_heads, self.head_dim)).transpose(1, 2)
        if rope is not None:
            q = apply_rope(q, *rope)  # (B, nh, T, hd)
        if cache is not None and cache.attends and self.kernel == "sdpa" and not need_weights \
                and not (self.training and self.dropout):
            # Serving's paged cache attends each row over its own keys; a sharing layer reads
            # its source's pages (the same cache, written earlier in this pass), storing none.
            k, v = (None, None) if self.reads_from is not None else \
                self._new_keys_values(x, rope)
            context = cache.attend(q, k, v, scale=1.0, window=self.window)
            return self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads
                                                                  * self.head_dim))
        k, v = self._keys_values(x, rope, cache, shared)  # (B, nkv, S, hd)
        visible = None if cache is None else cache.visible(self.window)  # rows that differ
        if visible is None:  # the keys are the positions end - S .. end - 1
            end = start + t
            visible = window_mask(torch.arange(start, end, device=x.device),
                                  torch.arange(end - k.shape[2], end, device=x.device),
                                  self.window)  # (T, S)
        if need_weights or self.kernel == "textbook":
            scores = q @ k.repeat_interleave(self.group, dim=1).transpose(-2, -1)  # (B,nh,T,S)
            weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
            dropped = F.dropout(weights, self.dropout, self.training) if self.dropout else weights
            context = dropped @ v.repeat_interleave(self.group, dim=1)  # (B, nh, T, hd)
        else:
            weights = None
            context = F.scaled_dot_product_attention(
                q, k, v, attn_mask=visible, scale=1.0, enable_gqa=self.group > 1,
                dropout_p=self.dropout if self.training else 0.0)
        out = self.out_proj(context.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))
        return (out, weights) if need_weights else out
