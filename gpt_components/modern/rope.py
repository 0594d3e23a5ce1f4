"""Rotary position embedding (RoPE), in place of GPT-2's learned position embedding.

Instead of adding a position vector to each token, RoPE rotates every query and key: the
``head_dim`` features are split into two halves ``(x1, x2)`` and each pair ``(x1[i], x2[i])`` is
turned by the angle ``position * inv_freq[i]``, with ``inv_freq[i] = theta ** (-2i / head_dim)``
(the split-halves convention of Llama, Qwen3 and ``transformers``). A rotation keeps lengths,
and the dot product of a query rotated to position ``m`` and a key rotated to ``n`` depends only
on ``m - n``: attention sees relative positions, and there is no table of positions to learn.

Llama 3.1 and later stretch the slow frequencies for long contexts (``Llama3RopeScaling``):
wavelengths longer than ``original_context_length / low_freq_factor`` are divided by
``factor``, shorter than ``original_context_length / high_freq_factor`` kept, and those between
blended smoothly.

The angles are computed in float64 for each forward pass from ``inv_freq`` (a few hundred
numbers), then cast to the activations' dtype: no table to keep, and nothing rounded to float32
on the way, so a float64 model is exact.

>>> import torch
>>> rope = RotaryEmbedding(head_dim=4, theta=10000.0)
>>> cos, sin = rope(torch.arange(3), dtype=torch.float64)
>>> cos.shape
torch.Size([3, 4])
>>> x = torch.randn(1, 2, 3, 4, dtype=torch.float64)  # (batch, heads, tokens, head_dim)
>>> torch.allclose(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Llama3RopeScaling", "rope_inverse_frequencies", "RotaryEmbedding", "apply_rope"]


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3's frequency scaling (``rope_scaling`` of type ``llama3`` in ``config.json``)."""

    factor: float = 32.0  # how much longer the new context is (8 for Llama 3.1, 32 for 3.2)
    low_freq_factor: float = 1.0  # wavelengths past original / low_freq_factor: divided by factor
    high_freq_factor: float = 4.0  # wavelengths under original / high_freq_factor: unchanged
    original_context_length: int = 8192  # the context the model was first trained with

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a float > 0, got {value!r}")
        if not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"high_freq_factor must be > low_freq_factor="
                             f"{self.low_freq_factor}, got {self.high_freq_factor!r}")
        value = self.original_context_length
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"original_context_length must be an int >= 1, got {value!r}")


def rope_inverse_frequencies(head_dim: int, theta: float,
                             scaling: Llama3RopeScaling | None = None) -> torch.Tensor:
    """The ``head_dim / 2`` rotation speeds (radians per position), float64."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 \
            or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 2, got {head_dim!r}")
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
        raise ValueError(f"theta must be a float > 1, got {theta!r}")
    if scaling is not None and not isinstance(scaling, Llama3RopeScaling):
        raise TypeError(f"scaling must be a Llama3RopeScaling or None, got "
                        f"{type(scaling).__name__}")
    # On the CPU even while a model is built on the meta device: these are real numbers.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    inv_freq = 1.0 / (float(theta) ** exponents)
    if scaling is None:
        return inv_freq
    original = scaling.original_context_length
    wavelength = 2 * math.pi / inv_freq
    slow = wavelength > original / scaling.low_freq_factor
    fast = wavelength < original / scaling.high_freq_factor
    # Between the two bands: a linear blend from "divided by factor" (slow) to "kept" (fast).
    smooth = (original / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return torch.where(slow, inv_freq / scaling.factor, torch.where(fast, inv_freq, blended))


class RotaryEmbedding(nn.Module):
    """``cos`` and ``sin`` [tokens, head_dim] for given positions; no parameters, no buffers."""

    def __init__(self, head_dim: int, theta: float = 10000.0,
                 scaling: Llama3RopeScaling | None = None) -> None:
        super().__init__()
        # A plain attribute, not a buffer: model.to(bfloat16) must not round it.
        self.inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)
        self.head_dim = head_dim

    def forward(self, positions: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        exact = torch.float32 if positions.device.type == "mps" else torch.float64
        inv_freq = self.inv_freq.to(device=positions.device, dtype=exact)
        angles = positions.to(exact)[:, None] * inv_freq[None, :]  # (T, hd / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, hd): both halves turn alike
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., tokens, head_dim) pairwise: half ``i`` with half ``i + head_dim/2``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # (x1, x2) -> (-x2, x1): a quarter turn per pair
    return x * cos + rotated * sin
