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

YaRN (``YarnRopeScaling``; GPT-OSS, OLMo 3, DeepSeek-V3, Qwen's long-context configurations)
splits the frequencies by how many turns they make within the original context: those turning
more than ``beta_fast`` times are kept (they encode local order, which a longer context does not
change), those turning fewer than ``beta_slow`` times are divided by ``factor`` (interpolated, so
the new positions fall inside the range the model saw), and a linear ramp blends the ones between.
Stretched positions spread attention thinner, so YaRN also scales ``cos`` and ``sin`` by an
attention factor (``0.1 * ln(factor) + 1`` by default), which multiplies every attention score
by its square.

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

from ..machinery.checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_tensor,
    value_error,
)

__all__ = ["Llama3RopeScaling", "YarnRopeScaling", "yarn_mscale", "rope_inverse_frequencies",
           "RotaryEmbedding", "apply_rope"]


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3's frequency scaling (``rope_scaling`` of type ``llama3`` in ``config.json``)."""

    factor: float = 32.0  # how much longer the new context is (8 for Llama 3.1, 32 for 3.2)
    low_freq_factor: float = 1.0  # wavelengths past original / low_freq_factor: divided by factor
    high_freq_factor: float = 4.0  # wavelengths under original / high_freq_factor: unchanged
    original_context_length: int = 8192  # the context the model was first trained with

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            check_float(name, getattr(self, name), low=0, low_open=True)
        if not self.high_freq_factor > self.low_freq_factor:
            raise value_error("high_freq_factor", f"high_freq_factor must be > low_freq_factor="
                                                  f"{self.low_freq_factor}, got "
                                                  f"{self.high_freq_factor!r}")
        check_int("original_context_length", self.original_context_length, low=1)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context ``factor`` times longer: ``0.1 * mscale *
    ln(factor) + 1`` (1 when the context is not longer)."""
    check_float("factor", factor, low=0, low_open=True)
    check_float("mscale", mscale)
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclass(frozen=True)
class YarnRopeScaling:
    """YaRN's frequency scaling (``rope_scaling`` of type ``yarn`` in ``config.json``)."""

    factor: float  # how much longer the new context is (32 for GPT-OSS, 40 for DeepSeek-V3)
    original_context_length: int  # the context the model was first trained with
    beta_fast: float = 32.0  # frequencies turning more often than this within it: kept
    beta_slow: float = 1.0  # turning fewer times than this: divided by factor
    mscale: float | None = None  # DeepSeek's: with mscale_all_dim, sets the attention factor
    mscale_all_dim: float | None = None  # DeepSeek's: also scales MLA's softmax (its square)
    attention_factor: float | None = None  # cos and sin times this; None: from factor (mscale)
    truncate: bool = True  # round the blended band to whole features (GPT-OSS: False)

    def __post_init__(self) -> None:
        check_float("factor", self.factor, low=0, low_open=True)
        check_int("original_context_length", self.original_context_length, low=1)
        check_float("beta_fast", self.beta_fast, low=0, low_open=True)
        check_float("beta_slow", self.beta_slow, low=0, low_open=True)
        if not self.beta_fast > self.beta_slow:
            raise value_error("beta_fast", f"beta_fast must be > beta_slow={self.beta_slow}, "
                                           f"got {self.beta_fast!r}")
        for name in ("mscale", "mscale_all_dim"):
            check_float(name, getattr(self, name), optional=True)
        check_float("attention_factor", self.attention_factor, low=0, low_open=True,
                    optional=True)
        check_bool("truncate", self.truncate)

    @property
    def cos_sin_factor(self) -> float:
        """What ``cos`` and ``sin`` are multiplied by (so every score by its square)."""
        if self.attention_factor is not None:
            return float(self.attention_factor)
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(self.factor,
                                                                      self.mscale_all_dim)
        return yarn_mscale(self.factor)


def _yarn_band(turns: float, dim: int, theta: float, context: int) -> float:
    """The feature index whose frequency turns ``turns`` times within ``context`` positions."""
    return dim * math.log(context / (turns * 2 * math.pi)) / (2 * math.log(theta))


def rope_inverse_frequencies(head_dim: int, theta: float,
                             scaling: Llama3RopeScaling | YarnRopeScaling | None = None
                             ) -> torch.Tensor:
    """The ``head_dim / 2`` rotation speeds (radians per position), float64."""
    check_int("head_dim", head_dim, low=2)
    if head_dim % 2:
        raise value_error("head_dim", f"head_dim must be an even int >= 2, got {head_dim}")
    check_float("theta", theta, low=1, low_open=True)
    if scaling is not None:
        check_instance("scaling", scaling, (Llama3RopeScaling, YarnRopeScaling),
                       "a Llama3RopeScaling, a YarnRopeScaling or None")
    # On the CPU even while a model is built on the meta device: these are real numbers.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim
    inv_freq = 1.0 / (float(theta) ** exponents)
    if scaling is None:
        return inv_freq
    if isinstance(scaling, YarnRopeScaling):
        # Features below ``low`` turn more than beta_fast times in the original context: kept;
        # past ``high`` fewer than beta_slow times: interpolated; a straight ramp between.
        low = _yarn_band(scaling.beta_fast, head_dim, theta, scaling.original_context_length)
        high = _yarn_band(scaling.beta_slow, head_dim, theta, scaling.original_context_length)
        if scaling.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001  # a band of width zero: a step, not a division by zero
        index = torch.arange(head_dim // 2, dtype=torch.float64, device="cpu")
        interpolated = ((index - low) / (high - low)).clamp(0, 1)
        return inv_freq / scaling.factor * interpolated + inv_freq * (1 - interpolated)
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
                 scaling: Llama3RopeScaling | YarnRopeScaling | None = None) -> None:
        super().__init__()
        # A plain attribute, not a buffer: model.to(bfloat16) must not round it.
        self.inv_freq = rope_inverse_frequencies(head_dim, theta, scaling)
        self.head_dim = head_dim
        # YaRN's magnitude correction on cos and sin (1: none).
        self.attention_factor = (scaling.cos_sin_factor if isinstance(scaling, YarnRopeScaling)
                                 else 1.0)

    def forward(self, positions: torch.Tensor,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        check_tensor("positions", positions, dims=1)
        check_instance("dtype", dtype, torch.dtype, "a torch.dtype")
        exact = torch.float32 if positions.device.type == "mps" else torch.float64
        inv_freq = self.inv_freq.to(device=positions.device, dtype=exact)
        angles = positions.to(exact)[:, None] * inv_freq[None, :]  # (T, hd / 2)
        angles = torch.cat([angles, angles], dim=-1)  # (T, hd): both halves turn alike
        factor = self.attention_factor
        return (angles.cos() * factor).to(dtype), (angles.sin() * factor).to(dtype)


def _broadcasts(table: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``table`` broadcasts to ``x``'s shape without growing it: no more dimensions,
    and each of its sizes, aligned from the right, 1 or ``x``'s. (``torch.broadcast_shapes``
    says the same, at about 35 microseconds a call: an eighth of a small model's decoding.)"""
    if table.dim() > x.dim():
        return False
    return all(t in (1, n) for t, n in zip(reversed(table.shape), reversed(x.shape),
                                            strict=False))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., tokens, head_dim) pairwise: half ``i`` with half ``i + head_dim/2``."""
    check_tensor("x", x, kind="floating")
    if x.dim() < 1 or x.shape[-1] % 2:
        raise value_error("x", f"x must be (..., tokens, head_dim) with an even head_dim, got "
                               f"shape {tuple(x.shape)}")
    for name, table in (("cos", cos), ("sin", sin)):
        check_tensor(name, table, kind="floating")
        if table.dim() < 1 or table.shape[-1] != x.shape[-1] or not _broadcasts(table, x):
            raise value_error(name, f"{name} must broadcast to x's shape {tuple(x.shape)} with "
                                    f"head_dim last, got shape {tuple(table.shape)}")
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # (x1, x2) -> (-x2, x1): a quarter turn per pair
    return x * cos + rotated * sin
