"""RMSNorm (the modern decoder's norm, in place of GPT-2's LayerNorm).

``RMSNorm`` divides each vector by its root mean square and multiplies by a learned ``weight``:
``x / sqrt(mean(x**2) + eps) * weight``. Unlike ``LayerNorm`` it subtracts no mean and adds no
shift, one reduction instead of two. Llama 3 and Qwen3 use it as written; ``offset=1.0`` gives
Gemma's ``(1 + weight)`` form, whose weight starts at zero. The sum of squares is taken in at
least float32, as Llama and Qwen3 do (a bfloat16 mean loses too many digits), and in float64
for a float64 model.

>>> import torch
>>> norm = RMSNorm(4, eps=1e-6)
>>> y = norm(torch.tensor([[3.0, -3.0, 3.0, -3.0]]))
>>> torch.allclose(y, torch.tensor([[1.0, -1.0, 1.0, -1.0]]))
True
"""

from __future__ import annotations

import torch
from torch import nn

from ..machinery.checks import check_float, check_int, check_tensor, value_error

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, scaled by ``offset + weight``."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: float = 0.0) -> None:
        super().__init__()
        check_int("dim", dim, low=1)
        check_float("eps", eps, low=0, low_open=True)
        check_float("offset", offset)
        self.eps = float(eps)
        self.offset = float(offset)
        # The scale starts at 1 either way: weight = 1 (offset 0) or weight = 0 (offset 1).
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - self.offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating")
        if x.dim() < 1 or x.shape[-1] != self.weight.shape[0]:
            raise value_error("x", f"x must be [..., {self.weight.shape[0]}] (dim features "
                                   f"last), got shape {tuple(x.shape)}")
        compute = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = compute * torch.rsqrt(compute.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        scale = self.weight + self.offset if self.offset else self.weight
        return scale * normed.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset}"
