"""Gated feed-forward networks (SwiGLU), in place of GPT-2's GELU MLP.

GPT-2's feed-forward is ``W2 gelu(W1 x)``. Llama and Qwen3 gate it: two projections up to
``hidden_dim``, one passed through SiLU (``x * sigmoid(x)``) and multiplied elementwise by the
other, then one projection down: ``fc3(silu(fc1(x)) * fc2(x))`` (Meta's ``w2(silu(w1 x) * w3
x)``; ``transformers``' ``down_proj(act(gate_proj(x)) * up_proj(x))``). Three matrices instead
of two, so ``hidden_dim`` is usually about 8/3 of ``emb_dim`` rather than 4x for the same
parameters. ``activation="gelu_tanh"`` gives the gated GELU of Gemma.

>>> import torch
>>> ff = SwiGLU(emb_dim=8, hidden_dim=24)
>>> ff(torch.zeros(2, 3, 8)).shape
torch.Size([2, 3, 8])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..machinery.checks import check_choice, check_int, check_tensor, value_error

__all__ = ["GATE_ACTIVATIONS", "SwiGLU"]

GATE_ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class SwiGLU(nn.Module):
    """``fc3(act(fc1(x)) * fc2(x))``: gate ``fc1``, up ``fc2``, down ``fc3``; no biases."""

    def __init__(self, emb_dim: int, hidden_dim: int, activation: str = "silu") -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, low=1)
        check_int("hidden_dim", hidden_dim, low=1)
        check_choice("activation", activation, GATE_ACTIVATIONS)
        self.activation = activation
        self.emb_dim = emb_dim  # (fc1.in_features, unless LoRA has wrapped fc1)
        self.fc1 = nn.Linear(emb_dim, hidden_dim, bias=False)
        self.fc2 = nn.Linear(emb_dim, hidden_dim, bias=False)
        self.fc3 = nn.Linear(hidden_dim, emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating")
        if x.dim() < 1 or x.shape[-1] != self.emb_dim:
            raise value_error("x", f"x must be [..., emb_dim={self.emb_dim}], got shape "
                                   f"{tuple(x.shape)}")
        return self.fc3(GATE_ACTIVATIONS[self.activation](self.fc1(x)) * self.fc2(x))
