"""Qwen3-Next's mixture of experts: routed experts plus one shared expert behind a sigmoid gate.

Qwen3-MoE's mixture (``modern.moe.MoEFeedForward``: a softmax router, the top ``k`` experts,
gates renormalised) runs as it is; beside it, one always-on SwiGLU expert of its own width sees
every token, and a learned scalar gate per token, ``sigmoid(w . x)``, decides how much of it
to add: ``moe(x) + sigmoid(shared_expert_gate(x)) * shared_expert(x)``. (DeepSeek-V3's shared
experts are added as they are; Qwen3-Next's may be turned down token by token.)

>>> import torch
>>> moe = GatedSharedExpertMoE(emb_dim=8, hidden_dim=4, n_experts=4, top_k=2,
...                            shared_hidden_dim=6)
>>> moe(torch.zeros(2, 3, 8)).shape, moe.shared_expert_gate.weight.shape
(torch.Size([2, 3, 8]), torch.Size([1, 8]))
"""

from __future__ import annotations

import torch
from torch import nn

from ..machinery.checks import check_int
from ..modern.feedforward import SwiGLU
from ..modern.moe import MoEFeedForward

__all__ = ["GatedSharedExpertMoE"]


class GatedSharedExpertMoE(MoEFeedForward):
    """``MoEFeedForward`` (its arguments) plus a shared SwiGLU of ``shared_hidden_dim``, gated
    per token by ``sigmoid(shared_expert_gate(x))``."""

    def __init__(self, emb_dim: int, hidden_dim: int, n_experts: int, top_k: int, *,
                 shared_hidden_dim: int, **router: object) -> None:
        super().__init__(emb_dim, hidden_dim, n_experts, top_k, **router)
        self.shared_expert = SwiGLU(emb_dim, check_int("shared_hidden_dim", shared_hidden_dim,
                                                       low=1))
        self.shared_expert_gate = nn.Linear(emb_dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routed = super().forward(x)  # checks x; keeps the router's logits for the loss
        return routed + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
