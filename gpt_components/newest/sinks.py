"""Attention sinks (GPT-OSS): a learned logit per head that takes a share of every softmax.

Softmax attention must spend all of a query's attention on the keys: the weights sum to one
even when no key is worth looking at, and models learn to dump the excess on the first token
(the "attention sink" of Xiao et al., 2023). GPT-OSS gives each head an explicit place to put
it instead: one learned number ``s_h`` per head joins every row of scores as an extra column
with no value behind it,

    w_ij = exp(z_ij) / (exp(s_h) + sum_k exp(z_ik)),

so the weights over the real tokens sum to ``1 - exp(s_h) / (exp(s_h) + sum_k exp(z_ik))``:
less than one, by exactly the sink's share, and the head can attend to "nothing".

Exports:

- ``sink_attention_weights(scores, sinks)``: the textbook path: masked scores [B, nh, Tq, Tk]
  (``-inf`` where hidden) and ``sinks`` [nh] to the weights over the real keys.
- ``SinkAttention``: ``GroupedQueryAttention`` with a ``sinks`` parameter, over the whole past
  (``window=None``) or a band of ``window`` positions, whose cache is then the ring buffer of
  ``modern/sliding_window.py``. Its fast path is SDPA with one extra key of zeros whose score is
  set by the mask to ``s_h`` (``q . 0 = 0``, plus the mask): the sink is a key no value is read
  from, so the fused kernel computes it unchanged.

>>> import torch
>>> scores = torch.zeros(1, 1, 1, 3, dtype=torch.float64)  # three keys, equally likely
>>> sink_attention_weights(scores, torch.zeros(1, dtype=torch.float64))  # the sink is a 4th
tensor([[[[0.2500, 0.2500, 0.2500]]]], dtype=torch.float64)
>>> att = SinkAttention(emb_dim=16, n_heads=4, n_kv_heads=2, head_dim=4, window=3)
>>> _, weights = att(torch.randn(1, 5, 16), need_weights=True)
>>> bool((weights.sum(-1) < 1).all()), att.sinks.shape
(True, torch.Size([4]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kv_cache import LayerKVCache
from ..machinery.checks import check_int, check_tensor, value_error
from ..modern.attention import GroupedQueryAttention
from ..modern.sliding_window import WindowLayerCache, window_mask

__all__ = ["sink_attention_weights", "SinkAttention"]


def sink_attention_weights(scores: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Softmax over ``scores`` [B, nh, Tq, Tk] and one sink column per head, sink dropped.

    ``scores`` are already scaled and masked (``-inf`` where a key is hidden); ``sinks`` [nh]
    holds each head's sink logit. Each row sums to one less the sink's share.
    """
    check_tensor("scores", scores, dims=4, kind="floating")
    check_tensor("sinks", sinks, dims=1, kind="floating")
    if sinks.shape[0] != scores.shape[1]:
        raise value_error("sinks", f"sinks must hold one logit per head ({scores.shape[1]}), "
                                   f"got {sinks.shape[0]}")
    b, nh, t, _ = scores.shape
    sink = sinks.to(scores.dtype).view(1, nh, 1, 1).expand(b, nh, t, 1)  # (B, nh, Tq, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)  # (B, nh, Tq, Tk + 1)
    return probs[..., :-1]  # the sink's column has no value behind it


class SinkAttention(GroupedQueryAttention):
    """Grouped-query attention with a learned sink logit per query head (GPT-OSS).

    ``window``: None (every earlier position, GPT-OSS's full layers) or the number of
    positions a query sees, itself included (its banded layers; the cache is then a
    ``WindowLayerCache`` of ``window`` slots). Every other option is ``GroupedQueryAttention``'s.
    """

    def __init__(self, emb_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 window: int | None = None, **options: object) -> None:
        super().__init__(emb_dim, n_heads, n_kv_heads, head_dim, **options)
        self.window = check_int("window", window, low=1, optional=True)
        self.sinks = nn.Parameter(torch.empty(n_heads))
        if not self.sinks.is_meta:  # transformers' initialisation: N(0, 0.02)
            nn.init.normal_(self.sinks, std=0.02)

    def new_cache(self, batch_size: int, max_tokens: int, *,
                  device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> LayerKVCache | WindowLayerCache:
        """The growing cache of a full layer, or a banded layer's ring of ``window`` slots."""
        if self.window is None:
            return super().new_cache(batch_size, max_tokens, device=device, dtype=dtype)
        return WindowLayerCache(batch_size, self.n_kv_heads, self.head_dim, self.window,
                                max_tokens, device=device, dtype=dtype)

    def _cache_attention(self) -> dict:
        """A cache that attends (serving's paged cache) takes the sinks into its softmax."""
        return {"sinks": self.sinks}

    def _future(self, t: int, s: int, start: int, device: torch.device) -> torch.Tensor:
        """True where a query must not see a key: ahead of it, or ``window`` or more behind.

        The ``s`` keys end at the newest query (positions ``start + t - s ..``), whether they
        come from a growing cache or a ring.
        """
        end = start + t
        queries = torch.arange(start, end, device=device)
        return ~window_mask(queries, torch.arange(end - s, end, device=device), self.window)

    def _hidden(self, t: int, s: int, start: int, device: torch.device,
                visible: torch.Tensor | None) -> torch.Tensor:
        """True where a query must not see a key: (T, S), or (B, 1, T, S) from a cache whose
        rows differ (serving's paged cache masks the window itself: ``visible``)."""
        return self._future(t, s, start, device) if visible is None else ~visible

    def _textbook(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
                  visible: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, t, hd = q.shape
        s = k.shape[2]
        folded = q.reshape(b, self.n_kv_heads, self.group * t, hd)  # (B, nkv, group * T, hd)
        scores = (folded @ k.transpose(2, 3)).view(b, self.n_heads, t, s) * self.scale
        scores = scores.masked_fill(self._hidden(t, s, start, q.device, visible), float("-inf"))
        weights = sink_attention_weights(scores, self.sinks)  # (B, nh, T, S), rows sum < 1
        dropped = F.dropout(weights, self.dropout, self.training) if self.dropout else weights
        context = dropped.view(b, self.n_kv_heads, self.group * t, s) @ v  # (B, nkv, g*T, hd)
        return context.view(b, self.n_heads, t, hd), weights

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int,
              visible: torch.Tensor | None = None) -> torch.Tensor:
        b, nkv, s, hd = k.shape
        t = q.shape[2]
        # The sink as a key of zeros with a zero value: its score is 0 plus the mask's s_h.
        k = torch.cat([k, k.new_zeros(b, nkv, 1, hd)], dim=2)  # (B, nkv, S + 1, hd)
        v = torch.cat([v, v.new_zeros(b, nkv, 1, v.shape[-1])], dim=2)
        hidden = self._hidden(t, s, start, q.device, visible)  # (T, S) or (B, 1, T, S)
        bias = torch.zeros(hidden.shape, dtype=q.dtype, device=q.device).masked_fill(
            hidden, float("-inf"))
        rows = bias.shape[0] if bias.dim() == 4 else 1
        bias = bias.reshape(rows, 1, t, s).expand(rows, self.n_heads, t, s)
        sink = self.sinks.to(q.dtype).view(1, self.n_heads, 1, 1).expand(rows, self.n_heads, t, 1)
        mask = torch.cat([bias, sink], dim=-1)  # (B or 1, nh, T, S + 1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale, enable_gqa=self.group > 1)
