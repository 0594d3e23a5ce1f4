"""Gemma 4's mixture of experts (26B-A4B): experts *beside* the dense feed-forward, not instead.

Qwen3-MoE and DeepSeek-V3 replace a block's feed-forward by routed experts. Gemma 4's
26B-A4B keeps the dense feed-forward and adds a second branch next to it, read from the same
residual stream: a router picks ``top_k`` of ``n_experts`` small GELU-gated experts for each
token, and the two branches' outputs, each normed, are summed before the block's usual
post-feed-forward norm. What its router does differently:

- it norms its input (RMS without a weight), then scales it by a learned per-feature ``scale``
  and by ``1 / sqrt(emb_dim)`` before the projection to one score per expert;
- the softmax's ``top_k`` probabilities are renormalised to sum to one, then each is multiplied
  by its expert's learned ``per_expert_scale``.

The experts are stored stacked, one tensor per projection (``gate_up_proj`` [experts,
2 * hidden, emb], ``down_proj`` [experts, emb, hidden]), as ``transformers`` stores them; each
expert is ``down(gelu(gate(x)) * up(x))``, run here one expert at a time over its tokens.

>>> import torch
>>> moe = Gemma4MoE(emb_dim=8, n_experts=4, top_k=2, hidden_dim=6)
>>> x = torch.randn(2, 3, 8)
>>> moe(x).shape
torch.Size([2, 3, 8])
>>> weights, experts = moe.router(x.reshape(-1, 8))
>>> experts.shape, bool(torch.allclose(weights.sum(-1), torch.ones(6)))  # scales start at 1
(torch.Size([6, 2]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..machinery.checks import check_int
from ..modern.feedforward import GATE_ACTIVATIONS
from ..modern.norms import RMSNorm
from .shared_kv import rms_only

__all__ = ["Gemma4Router", "Gemma4Experts", "Gemma4MoE"]


class Gemma4Router(nn.Module):
    """Scores, picks ``top_k`` experts per token and weights them: ``(weights, experts)``."""

    def __init__(self, emb_dim: int, n_experts: int, top_k: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.emb_dim = check_int("emb_dim", emb_dim, low=1)
        self.n_experts = check_int("n_experts", n_experts, low=1)
        self.top_k = check_int("top_k", top_k, low=1, high=n_experts)
        self.eps = eps
        self.proj = nn.Linear(emb_dim, n_experts, bias=False)
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.per_expert_scale = nn.Parameter(torch.ones(n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` [N, emb] -> weights [N, top_k] and expert indices [N, top_k]."""
        scores = self.proj(rms_only(x, self.eps) * self.scale * self.emb_dim**-0.5)  # (N, E)
        # The softmax in at least float32, as transformers' router computes it.
        probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), -1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.per_expert_scale[experts], experts


class Gemma4Experts(nn.Module):
    """``n_experts`` GELU-gated feed-forwards, stacked: one tensor per projection."""

    def __init__(self, emb_dim: int, hidden_dim: int, n_experts: int) -> None:
        super().__init__()
        for name, value in (("emb_dim", emb_dim), ("hidden_dim", hidden_dim),
                            ("n_experts", n_experts)):
            check_int(name, value, low=1)
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, emb_dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, emb_dim, hidden_dim))
        if not self.down_proj.is_meta:  # nothing to draw for a model about to be loaded
            nn.init.normal_(self.gate_up_proj, std=0.02)
            nn.init.normal_(self.down_proj, std=0.02)

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                experts: torch.Tensor) -> torch.Tensor:
        """``x`` [N, emb]; each token's ``experts`` [N, top_k] summed with ``weights``."""
        out = torch.zeros_like(x)
        act = GATE_ACTIVATIONS["gelu_tanh"]
        for expert in experts.unique().tolist():
            token, slot = torch.where(experts == expert)  # the tokens that picked it, and where
            gate, up = F.linear(x[token], self.gate_up_proj[expert]).chunk(2, dim=-1)
            y = F.linear(act(gate) * up, self.down_proj[expert])  # (n, emb)
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out


class Gemma4MoE(nn.Module):
    """The experts' branch of a block, and the extra norm of the dense one beside it.

    ``forward(x)`` is ``norm_out(experts(norm_in(x), *router(x)))`` for the residual stream
    ``x``; the block adds ``dense_norm(dense feed-forward output)`` to it.
    """

    def __init__(self, emb_dim: int, n_experts: int, top_k: int, hidden_dim: int,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.router = Gemma4Router(emb_dim, n_experts, top_k, eps=eps)
        self.norm_in = RMSNorm(emb_dim, eps=eps)
        self.experts = Gemma4Experts(emb_dim, hidden_dim, n_experts)
        self.norm_out = RMSNorm(emb_dim, eps=eps)
        self.dense_norm = RMSNorm(emb_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B*T, emb)
        weights, experts = self.router(flat)
        return self.norm_out(self.experts(self.norm_in(flat), weights, experts).view_as(x))
