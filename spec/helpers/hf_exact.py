"""A float64 ``transformers``: run its float32 steps in float64 so it is an exact reference.

Even for a float64 model, ``transformers`` computes some steps in float32 (RMSNorm's mean
square, the RoPE frequencies and angles, the eager softmax, the logits ``generate`` takes the
argmax of), which makes it agree with an exact computation only to ~1e-6. Under
``Float64Mode`` every float32 request (``dtype=torch.float32``, ``.float()``,
``.to(torch.float32)``, ``.type(torch.float32)``) becomes float64. The spec checks this mode
against stock ``transformers`` at a loose bound, so the reference itself is tested.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode


def _widen(value):
    return torch.float64 if value is torch.float32 else value


class Float64Mode(TorchFunctionMode):
    """Within ``with Float64Mode():``, float32 is float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = {key: _widen(value) for key, value in (kwargs or {}).items()}
        if func is torch.Tensor.float:
            func = torch.Tensor.double
        elif func in (torch.Tensor.to, torch.Tensor.type):  # DeepSeek-V3's router: .type()
            args = tuple(_widen(a) for a in args)
        return func(*args, **kwargs)
