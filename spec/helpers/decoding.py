"""Decoding through a cache the way ``generate`` does, for properties that compare it with a
model's full forward or with ``transformers``' logits."""

from __future__ import annotations

import torch


def stepwise_logits(model, ids: torch.Tensor, first: int, cache=None) -> torch.Tensor:
    """Logits of ``ids`` [B, T]: the first ``first`` tokens in one pass, then one token at a
    time, all through ``cache`` (a fresh ``model.new_kv_cache(B)`` when None); [B, T, V]."""
    cache = model.new_kv_cache(ids.shape[0]) if cache is None else cache
    with torch.no_grad():
        steps = [model(ids[:, :first], kv_cache=cache)]
        steps += [model(ids[:, t:t + 1], kv_cache=cache) for t in range(first, ids.shape[1])]
    return torch.cat(steps, dim=1)
