"""GPT-OSS's mixture of experts: a router that picks before it weighs, clamped SwiGLU experts.

Three things differ from Qwen3-MoE's mixture (``modern/moe.py``):

- **The router** is a linear layer *with a bias*; it keeps the ``top_k`` largest logits and
  takes the softmax over those alone (``TopKSoftmaxRouter``): the weights of the chosen experts
  sum to one whatever the others scored (Qwen3-MoE takes the softmax over all experts first).
- **The activation** is a clamped SwiGLU (``clamped_swiglu``): the gate is capped above at
  ``limit`` (7.0), the linear half clamped to ``[-limit, limit]``, the gate's sigmoid has a gain
  ``alpha`` (1.702: ``x * sigmoid(1.702 x)`` is the sigmoid approximation of GELU), and the
  linear half gets ``+ 1``: ``(clamp(up) + 1) * g * sigmoid(alpha * g)``, ``g = min(gate,
  limit)``. The clamps keep activations bounded for low-precision (MXFP4) weights.
- **The experts** have biases, and their weights are stacked: one parameter per projection for
  all experts (``ClampedSwiGLUExperts``), ``gate_up_proj`` [E, emb, 2 * hidden] with the gate
  and linear columns *interleaved* (gate ``0, 2, 4, ..``, up ``1, 3, 5, ..``), ``down_proj``
  [E, hidden, emb], stored as the published checkpoints store them, multiplied as ``x @ W``.

``ClampedSwiGLUMoE`` puts the router and the experts together: each expert runs once, on the
tokens routed to it, and its outputs are added back weighted by the router.

>>> import torch
>>> clamped_swiglu(torch.tensor([[1.0, 0.0, 100.0, -100.0]]))  # (gate, up), (gate, up)
tensor([[  0.8458, -41.9997]])
>>> _ = torch.manual_seed(0)
>>> moe = ClampedSwiGLUMoE(emb_dim=8, hidden_dim=6, n_experts=4, top_k=2)
>>> moe(torch.randn(2, 3, 8)).shape, moe.experts.gate_up_proj.shape
(torch.Size([2, 3, 8]), torch.Size([4, 8, 12]))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..machinery.checks import check_choice, check_float, check_int, check_tensor, value_error
from ..modern.experts import (
    _check_routing,
    gathers,
    grouped_linear,
    per_expert_mixture,
    sort_pairs,
)

__all__ = ["clamped_swiglu", "TopKSoftmaxRouter", "ClampedSwiGLUExperts", "ClampedSwiGLUMoE"]


def clamped_swiglu(gate_up: torch.Tensor, alpha: float = 1.702,
                   limit: float = 7.0) -> torch.Tensor:
    """GPT-OSS's activation of interleaved ``gate_up`` [..., 2h] (gate at even columns): [..., h].

    ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`` with ``g = min(gate, limit)``.
    """
    check_tensor("gate_up", gate_up, kind="floating")
    if gate_up.dim() < 1 or gate_up.shape[-1] % 2:
        raise value_error("gate_up", f"gate_up must have an even number of features last "
                                     f"(gate and up interleaved), got {tuple(gate_up.shape)}")
    check_float("alpha", alpha, low=0, low_open=True)
    check_float("limit", limit, low=0, low_open=True)
    gate = gate_up[..., ::2].clamp(max=limit)  # only capped above: a negative gate is ~0 anyway
    up = gate_up[..., 1::2].clamp(min=-limit, max=limit)
    return (up + 1) * gate * torch.sigmoid(alpha * gate)


class TopKSoftmaxRouter(nn.Module):
    """``top_k`` of ``n_experts`` per token, weighted by a softmax over the chosen logits only.

    ``forward(x)`` takes [N, emb] and returns ``(logits [N, E], weights [N, k], experts [N, k])``;
    the logits are ``x @ weight.T + bias`` (the bias is GPT-OSS's, Qwen3-MoE has none).
    """

    def __init__(self, emb_dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, low=1)
        check_int("n_experts", n_experts, low=1)
        check_int("top_k", top_k, low=1, high=n_experts)
        self.n_experts, self.top_k = n_experts, top_k
        self.weight = nn.Parameter(torch.empty(n_experts, emb_dim))
        self.bias = nn.Parameter(torch.empty(n_experts))
        if not self.weight.is_meta:  # transformers' initialisation: N(0, 0.02) for both
            nn.init.normal_(self.weight, std=0.02)
            nn.init.normal_(self.bias, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_tensor("x", x, kind="floating", dims=2)
        logits = F.linear(x, self.weight, self.bias)  # (N, E)
        best, experts = torch.topk(logits, self.top_k, dim=-1)  # (N, k): choose first ...
        return logits, torch.softmax(best, dim=-1), experts  # ... then weigh among the chosen


class ClampedSwiGLUExperts(nn.Module):
    """``n_experts`` clamped-SwiGLU feed-forwards with biases, each projection one stacked tensor.

    ``KERNELS``: how ``forward`` mixes them (``kernel``, default ``"grouped"``).

    ``expert(e, x)`` runs expert ``e`` on [N, emb]; ``forward(x, experts, weights)`` runs each
    expert once on the tokens that chose it and sums the outputs weighted by ``weights``.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, n_experts: int, *, alpha: float = 1.702,
                 limit: float = 7.0) -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, low=1)
        check_int("hidden_dim", hidden_dim, low=1)
        check_int("n_experts", n_experts, low=1)
        self.alpha = check_float("alpha", alpha, low=0, low_open=True)
        self.limit = check_float("limit", limit, low=0, low_open=True)
        self.kernel = "grouped"
        # Stored as transformers stores them, for x @ W: (E, in, out); gate and up interleaved.
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, emb_dim, 2 * hidden_dim))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(n_experts, hidden_dim, emb_dim))
        self.down_proj_bias = nn.Parameter(torch.empty(n_experts, emb_dim))
        if not self.down_proj.is_meta:  # N(0, 0.02) matrices, zero biases
            for weight in (self.gate_up_proj, self.down_proj):
                nn.init.normal_(weight, std=0.02)
            for bias in (self.gate_up_proj_bias, self.down_proj_bias):
                nn.init.zeros_(bias)

    KERNELS = ("grouped", "per_expert")

    @property
    def n_experts(self) -> int:
        return self.gate_up_proj.shape[0]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on tokens [N, emb]: ``down(clamped_swiglu(x @ W_gate_up + b) ) + b``."""
        gate_up = x @ self.gate_up_proj[e] + self.gate_up_proj_bias[e]  # (N, 2h)
        hidden = clamped_swiglu(gate_up, self.alpha, self.limit)  # (N, h)
        return hidden @ self.down_proj[e] + self.down_proj_bias[e]  # (N, emb)

    def forward(self, x: torch.Tensor, experts: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """``x`` [N, emb] through the ``experts`` [N, k] each token chose, weighted [N, k].

        ``kernel`` picks how, both the same function (``spec/test_gpt_oss.py``): ``"grouped"``
        (default) sorts the (token, expert) pairs by expert and runs each projection as one
        grouped matrix product (``modern.experts.grouped_linear``), or, for no more pairs than
        experts with small matrices (decoding a token), multiplies each pair's matrices copied
        out as one batch; ``"per_expert"`` is the textbook loop over the chosen experts.
        """
        _check_routing(x, weights, experts, self.gate_up_proj.shape[1], self.n_experts)
        if check_choice("kernel", self.kernel, self.KERNELS) == "per_expert":
            return per_expert_mixture(self.expert, x, weights, experts)
        if gathers(experts, self.n_experts,
                   self.gate_up_proj[0].numel() + self.down_proj[0].numel()):
            return self._gathered(x, experts, weights)  # a token or two: no sorting at all
        order, token, ends = sort_pairs(experts, self.n_experts)
        chosen = experts.flatten()[order]  # each sorted pair's expert
        gate_up = grouped_linear(x[token], self.gate_up_proj, ends, in_out=True)
        hidden = clamped_swiglu(gate_up + self.gate_up_proj_bias[chosen], self.alpha, self.limit)
        out = grouped_linear(hidden, self.down_proj, ends, in_out=True) \
            + self.down_proj_bias[chosen]
        return torch.zeros_like(x).index_add_(0, token, out * weights.flatten()[order, None])

    def _gathered(self, x: torch.Tensor, experts: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
        """Each (token, expert) pair's matrices copied out and multiplied as one batch."""
        n, k = experts.shape
        pairs = experts.flatten()  # (S,)
        rows = x.repeat_interleave(k, dim=0)[:, None, :]  # (S, 1, emb)
        gate_up = torch.baddbmm(self.gate_up_proj_bias[pairs, None, :], rows,
                                self.gate_up_proj[pairs])  # (S, 1, 2h)
        hidden = clamped_swiglu(gate_up, self.alpha, self.limit)  # (S, 1, h)
        out = torch.baddbmm(self.down_proj_bias[pairs, None, :], hidden,
                            self.down_proj[pairs])[:, 0]  # (S, emb)
        return (out * weights.flatten()[:, None]).view(n, k, x.shape[1]).sum(dim=1)


class ClampedSwiGLUMoE(nn.Module):
    """GPT-OSS's feed-forward: ``TopKSoftmaxRouter`` (``gate``) and ``ClampedSwiGLUExperts``.

    The last forward's router logits stay in ``router_logits`` [N, E], as ``MoEFeedForward``
    keeps them.
    """

    def __init__(self, emb_dim: int, hidden_dim: int, n_experts: int, top_k: int, *,
                 alpha: float = 1.702, limit: float = 7.0) -> None:
        super().__init__()
        self.emb_dim = check_int("emb_dim", emb_dim, low=1)
        self.gate = TopKSoftmaxRouter(emb_dim, n_experts, top_k)
        self.experts = ClampedSwiGLUExperts(emb_dim, hidden_dim, n_experts, alpha=alpha,
                                            limit=limit)
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating", dims=range(1, 8))
        if x.shape[-1] != self.emb_dim:
            raise value_error("x", f"x must have emb_dim={self.emb_dim} features last, got "
                                   f"shape {tuple(x.shape)}")
        tokens = x.reshape(-1, self.emb_dim)  # (N, emb)
        logits, weights, experts = self.gate(tokens)  # (N, E), (N, k), (N, k)
        self.router_logits = logits
        return self.experts(tokens, experts, weights).view(x.shape)
