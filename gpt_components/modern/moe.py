"""Mixture of experts (past the book, Qwen3-MoE and DeepSeek-V3): a few feed-forwards per token.

A router scores each token against ``n_experts`` experts, keeps the ``top_k`` best and weights
those experts' outputs by their gate values; the other experts never run for that token. The
layer holds ``n_experts`` times the parameters of one feed-forward but computes ``top_k`` of
them per token (Qwen3-30B-A3B: 30.5B parameters, 3.3B active).

Exports:

- ``Router``: a linear layer, then either a softmax over experts and the top ``k`` (Qwen3-MoE),
  optionally renormalised; or DeepSeek-V3's sigmoid scores with a selection bias, group-limited
  routing (``n_group`` groups, the best ``topk_group`` of them) and ``routed_scaling_factor``.
- ``MoEFeedForward``: the router plus ``SwiGLU`` experts (stacked, run as grouped matrix
  products: ``experts.SwiGLUExperts``), plus optional always-on shared experts (DeepSeek-V3).
- ``load_balancing_loss(router_logits, n_experts, top_k)``: the Switch Transformer auxiliary
  loss over every sparse layer's router logits, as Qwen3-MoE trains with.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> moe = MoEFeedForward(emb_dim=8, hidden_dim=16, n_experts=4, top_k=2)
>>> x = torch.randn(2, 3, 8)
>>> moe(x).shape, moe.router_logits.shape
(torch.Size([2, 3, 8]), torch.Size([6, 4]))
>>> float(load_balancing_loss([torch.zeros(6, 4)], n_experts=4, top_k=2))  # a uniform router
2.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..machinery.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_tensor,
    type_error,
    value_error,
)
from .experts import ExpertModules, SwiGLUExperts
from .feedforward import SwiGLU

__all__ = ["Router", "MoEFeedForward", "load_balancing_loss"]

SCORINGS = ("softmax", "sigmoid")

def _check_tokens(x: object, emb_dim: int, dims: int | tuple[int, ...]) -> None:
    """``x`` must be a floating tensor of ``dims`` dimensions with ``emb_dim`` features last."""
    check_tensor("x", x, kind="floating", dims=dims)
    if x.shape[-1] != emb_dim:
        raise value_error("x", f"x must have emb_dim={emb_dim} features last, got shape "
                               f"{tuple(x.shape)}")


class Router(nn.Module):
    """Which ``top_k`` of ``n_experts`` experts each token goes to, and with what weights.

    ``forward(x)`` takes [N, emb] and returns ``(logits [N, E], weights [N, k], experts [N, k])``.

    - ``scoring="softmax"`` (Qwen3-MoE): probabilities over all experts, the ``top_k`` largest
      kept; ``norm_topk_prob`` rescales the kept ones to sum to 1.
    - ``scoring="sigmoid"`` (DeepSeek-V3): an independent score per expert. The choice uses the
      scores plus ``score_bias`` (a buffer tuned outside gradient descent to balance the load),
      first among the ``topk_group`` best of ``n_group`` groups (a group's merit is the sum of
      its two best biased scores), but the weights are the unbiased scores, optionally
      renormalised, times ``routed_scaling_factor``.
    """

    def __init__(self, emb_dim: int, n_experts: int, top_k: int, *, scoring: str = "softmax",
                 norm_topk_prob: bool = True, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0) -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, low=1)
        check_int("n_experts", n_experts, low=1)
        check_int("top_k", top_k, low=1)
        if top_k > n_experts:
            raise value_error("top_k", f"top_k must be <= n_experts={n_experts}, got {top_k}")
        check_choice("scoring", scoring, SCORINGS)
        check_bool("norm_topk_prob", norm_topk_prob)
        check_int("n_group", n_group, low=1)
        if n_experts % n_group != 0:
            raise value_error("n_group", f"n_group must divide n_experts={n_experts}, got "
                                         f"{n_group}")
        check_int("topk_group", topk_group, low=1)
        if topk_group > n_group:
            raise value_error("topk_group", f"topk_group must be <= n_group={n_group}, got "
                                            f"{topk_group}")
        if top_k > topk_group * (n_experts // n_group):
            raise value_error("top_k", f"top_k must be <= the experts of the topk_group="
                                       f"{topk_group} kept groups "
                                       f"({topk_group * (n_experts // n_group)}), got {top_k}")
        if scoring == "sigmoid" and n_group > 1 and n_experts // n_group < 2:
            raise value_error("n_group", f"each of n_group={n_group} groups needs >= 2 experts "
                                         f"(a group's merit is its two best scores), got "
                                         f"n_experts={n_experts}")
        check_float("routed_scaling_factor", routed_scaling_factor, low=0, low_open=True)
        self.n_experts, self.top_k, self.scoring = n_experts, top_k, scoring
        self.norm_topk_prob = norm_topk_prob
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(n_experts, emb_dim))
        if not self.weight.is_meta:  # (drawing on the meta device is slow and pointless)
            nn.init.normal_(self.weight, std=0.02)
        if scoring == "sigmoid":
            self.register_buffer("score_bias", torch.zeros(n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _check_tokens(x, self.weight.shape[1], dims=2)
        logits = F.linear(x, self.weight)  # (N, E)
        if self.scoring == "softmax":
            weights, experts = torch.topk(torch.softmax(logits, dim=-1), self.top_k, dim=-1)
        else:
            scores = torch.sigmoid(logits)
            experts = torch.topk(self._group_limited(scores + self.score_bias), self.top_k,
                                 dim=-1).indices
            weights = scores.gather(1, experts)  # (N, k)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.routed_scaling_factor != 1.0:
            weights = weights * self.routed_scaling_factor
        return logits, weights, experts

    def _group_limited(self, choice: torch.Tensor) -> torch.Tensor:
        """``choice`` with every expert outside the ``topk_group`` best groups set to -inf."""
        if self.n_group == 1:
            return choice
        grouped = choice.view(choice.shape[0], self.n_group, -1)  # (N, groups, E / groups)
        merit = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, groups)
        best = merit.topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(merit, dtype=torch.bool).scatter(1, best, True)
        return grouped.masked_fill(~keep[..., None], float("-inf")).view_as(choice)


class MoEFeedForward(nn.Module):
    """``n_experts`` SwiGLU experts behind a ``Router``, plus optional shared experts.

    Each token runs only its ``top_k`` experts, their outputs added back weighted by their
    gates; ``n_shared_experts`` always-on experts (one SwiGLU of ``n_shared_experts *
    hidden_dim``) see every token (DeepSeek-V3). The last forward's router logits stay in
    ``router_logits`` [N, E] for the auxiliary loss. ``expert`` builds one expert from
    ``(emb_dim, hidden_dim)``: with ``SwiGLU`` (the default) the routed experts are one
    ``SwiGLUExperts`` (stacked weights, grouped matrix products); any other form is kept one
    module per expert (``ExpertModules``).
    """

    def __init__(self, emb_dim: int, hidden_dim: int, n_experts: int, top_k: int, *,
                 n_shared_experts: int = 0,
                 expert: Callable[[int, int], nn.Module] = SwiGLU,
                 **router: object) -> None:
        super().__init__()
        check_int("emb_dim", emb_dim, low=1)
        check_int("hidden_dim", hidden_dim, low=1)
        check_int("n_shared_experts", n_shared_experts, low=0)
        if not callable(expert):
            raise type_error("expert", f"expert must be a callable (emb_dim, hidden_dim) -> "
                                       f"nn.Module, got {type(expert).__name__}")
        self.gate = Router(emb_dim, n_experts, top_k, **router)
        self.experts = (SwiGLUExperts(n_experts, emb_dim, hidden_dim) if expert is SwiGLU else
                        ExpertModules(expert(emb_dim, hidden_dim) for _ in range(n_experts)))
        self.shared_experts = (expert(emb_dim, hidden_dim * n_shared_experts)
                               if n_shared_experts else None)
        self.router_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_tokens(x, self.gate.weight.shape[1], dims=range(1, 8))
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, emb)
        logits, weights, experts = self.gate(tokens)  # (N, E), (N, k), (N, k)
        self.router_logits = logits
        out = self.experts(tokens, weights, experts)
        if self.shared_experts is not None:
            out = out + self.shared_experts(tokens)
        return out.view(shape)


def load_balancing_loss(router_logits: Sequence[torch.Tensor], n_experts: int,
                        top_k: int) -> torch.Tensor:
    """The Switch Transformer auxiliary loss over every sparse layer's [N, E] router logits.

    ``n_experts * sum_e f_e * P_e``, where ``f_e`` is the share of the (token, layer) rows
    whose top ``k`` include expert ``e`` and ``P_e`` the mean router probability of ``e``, both
    over all layers' rows together (``f`` sums to ``top_k``, ``P`` to 1). A router whose
    probabilities are uniform scores ``top_k``; one that sends every token to the same experts
    with certainty scores ``n_experts``.
    """
    check_int("n_experts", n_experts, low=1)
    check_int("top_k", top_k, low=1)
    if top_k > n_experts:
        raise value_error("top_k", f"top_k must be <= n_experts={n_experts}, got {top_k}")
    if isinstance(router_logits, torch.Tensor) or not isinstance(router_logits, Sequence):
        raise type_error("router_logits", f"router_logits must be a sequence of [N, n_experts] "
                                          f"tensors (one per layer), got "
                                          f"{type(router_logits).__name__}")
    if len(router_logits) == 0:
        raise value_error("router_logits", "router_logits must hold at least one layer's "
                                           "[N, n_experts] logits, got none")
    for layer in router_logits:
        check_tensor("router_logits", layer, kind="floating", dims=2)
        if layer.shape[1] != n_experts:
            raise value_error("router_logits", f"router_logits must be [N, n_experts="
                                               f"{n_experts}] tensors, got {tuple(layer.shape)}")
    logits = torch.cat(list(router_logits), dim=0)  # (layers * N, E)
    probs = torch.softmax(logits, dim=-1)
    chosen = torch.topk(probs, top_k, dim=-1).indices
    share = F.one_hot(chosen, n_experts).sum(dim=1).to(probs.dtype).mean(dim=0)  # f_e, sums to k
    return n_experts * (share * probs.mean(dim=0)).sum()
