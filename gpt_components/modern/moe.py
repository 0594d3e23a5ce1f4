"""Mixture of experts (past the book, Qwen3-MoE and DeepSeek-V3): a few feed-forwards per token.

A router scores each token against ``n_experts`` experts, keeps the ``top_k`` best and weights
those experts' outputs by their gate values; the other experts never run for that token. The
layer holds ``n_experts`` times the parameters of one feed-forward but computes ``top_k`` of
them per token (Qwen3-30B-A3B: 30.5B parameters, 3.3B active).

Exports:

- ``Router``: a linear layer, then either a softmax over experts and the top ``k`` (Qwen3-MoE),
  optionally renormalised; or DeepSeek-V3's sigmoid scores with a selection bias, group-limited
  routing (``n_group`` groups, the best ``topk_group`` of them) and ``routed_scaling_factor``.
- ``MoEFeedForward``: the router plus ``SwiGLU`` experts, dispatched so each expert runs once on the
  tokens routed to it, plus optional always-on shared experts (DeepSeek-V3).
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
from typing import Any

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
from .feedforward import SwiGLU

__all__ = ["Router", "MoEFeedForward", "SwiGLUExperts", "ExpertModules", "per_expert_mixture",
           "grouped_linear", "load_balancing_loss"]

SCORINGS = ("softmax", "sigmoid")
# The most weights (numbers) a batch's (token, expert) pairs may copy out for the gathered path.
# Roughly, on the CPU, one thread, one token: gathering wins at qwen3-moe-nano's experts (2 x 4.6K
# numbers), ties at 2 x 98K and loses 2-10x above, where the copies outweigh the sorting.
GATHER_LIMIT = 2**17
# torch's grouped matrix product (public from 2.10, private before; None where absent).
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def _check_tokens(x: object, emb_dim: int, dims: int | tuple[int, ...]) -> None:
    """``x`` must be a floating tensor of ``dims`` dimensions with ``emb_dim`` features last."""
    check_tensor("x", x, kind="floating", dims=dims)
    if x.shape[-1] != emb_dim:
        raise value_error("x", f"x must have emb_dim={emb_dim} features last, got shape "
                               f"{tuple(x.shape)}")


def _check_routing(x: object, weights: object, experts: object, emb_dim: int,
                   n_experts: int) -> None:
    """Tokens [N, emb_dim], and the router's gates (floating) and choices (integers in
    ``[0, n_experts)``), both [N, k]."""
    _check_tokens(x, emb_dim, dims=2)
    check_tensor("weights", weights, kind="floating", dims=2)
    check_tensor("experts", experts, kind="integer", dims=2)
    if weights.shape != experts.shape or weights.shape[0] != x.shape[0]:
        raise value_error("experts", f"weights and experts must both be [N={x.shape[0]}, k], got "
                                     f"{tuple(weights.shape)} and {tuple(experts.shape)}")
    if experts.numel():
        low, high = (int(v) for v in torch.aminmax(experts))
        if low < 0 or high >= n_experts:
            raise value_error("experts", f"experts must be in [0, {n_experts}), got values "
                                         f"from {low} to {high}")


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


def per_expert_mixture(expert: Callable[[int, torch.Tensor], torch.Tensor], x: torch.Tensor,
                       weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """The textbook dispatch: each chosen expert runs once, on the tokens routed to it.

    ``expert(e, rows)`` is expert ``e`` on some of ``x``'s rows; ``x`` [N, emb], ``weights`` and
    ``experts`` [N, k] the router's gates and choices. Returns [N, emb]: each token's sum over
    its ``k`` experts of gate times output.
    """
    out = torch.zeros_like(x)
    for e in experts.unique().tolist():
        token, slot = torch.where(experts == e)  # the tokens routed to expert e
        out.index_add_(0, token, expert(e, x[token]) * weights[token, slot, None])
    return out


def _fast_grouped_mm(rows: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether torch's grouped kernel takes these operands: on the CPU float32 or narrower (it
    refuses float64), on CUDA bfloat16 on an Ampere or newer GPU; some rows, contiguous, every
    row and column stride a multiple of 16 bytes (its backward's too)."""
    if (_GROUPED_MM is None or rows.shape[0] == 0  # (its backward fails on no rows)
            or not (rows.is_contiguous() and weight.is_contiguous())):
        return False
    if rows.device.type == "cpu":
        if rows.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return False
    elif not (rows.device.type == "cuda" and rows.dtype == torch.bfloat16
              and torch.cuda.get_device_capability(rows.device) >= (8, 0)):
        return False
    step = 16 // rows.element_size()
    return rows.shape[1] % step == 0 and weight.shape[1] % step == 0


class _ContiguousGradient(torch.autograd.Function):
    """The identity, whose backward hands a contiguous gradient on: the grouped kernel's
    backward refuses an expanded one (``out.sum().backward()``'s)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Rows grouped by expert, each group through its expert's matrix: [S, in] -> [S, out].

    ``rows`` are sorted by expert, expert ``e``'s group ending before row ``ends[e]`` (int32,
    cumulative counts); ``weight`` is [experts, out, in]. One call of torch's grouped matrix
    product where it can (float32 on the CPU: one kernel, its backward included), else one
    ``F.linear`` per group (float64).
    """
    if _fast_grouped_mm(rows, weight):
        out = _GROUPED_MM(rows, weight.transpose(-2, -1), offs=ends)  # (S, out)
        return _ContiguousGradient.apply(out) if out.requires_grad else out
    bounds = [0, *ends.tolist()]
    return torch.cat([F.linear(rows[start:end], w) for start, end, w in
                      zip(bounds, bounds[1:], weight.unbind(0), strict=False)])


class SwiGLUExperts(nn.Module):
    """``n_experts`` SwiGLU feed-forwards stacked: one parameter per projection, as
    ``transformers`` 5 holds them (``gate_up_proj``, ``down_proj``).

    ``gate_up`` [experts, 2 * hidden, emb] holds each expert's ``fc1`` (gate) rows above its
    ``fc2`` (up) rows, so one product makes both; ``down`` [experts, emb, hidden] is ``fc3``.
    Expert ``e`` is ``SwiGLU``'s ``fc3(silu(fc1 x) * fc2 x)`` with ``e``'s slices.
    ``forward(x, weights, experts)`` mixes them for tokens [N, emb] given the router's [N, k]
    gates and choices. ``kernel`` picks how, both computing the same function
    (``spec/test_moe.py``):

    - ``"per_expert"``: the textbook, ``per_expert_mixture`` over the experts' slices;
    - ``"grouped"`` (default): the (token, expert) pairs sorted by expert and pushed through
      each projection by one grouped matrix product (``grouped_linear``), then scattered back;
      when a batch has no more pairs than experts (decoding one token) and their matrices are
      small (``GATHER_LIMIT`` numbers in all: a cache's worth), each pair's matrices are copied
      out instead and multiplied as one batch (``torch.bmm``), with no sorting at all; copying
      large experts would cost more than the sorting saves.

    Checkpoints name the stacked tensors (``experts.gate_up``); ``unstacked()`` lends each
    expert's matrices under the per-expert names (``experts.3.fc1.weight``) that Hugging Face
    files and this project's older checkpoints use; ``load_state_dict`` takes either naming, and
    ``restack`` renames an older state dict's per-expert tensors (as loading a run's checkpoint
    does).
    """

    KERNELS = ("grouped", "per_expert")

    def __init__(self, n_experts: int, emb_dim: int, hidden_dim: int) -> None:
        super().__init__()
        for name, value in (("n_experts", n_experts), ("emb_dim", emb_dim),
                            ("hidden_dim", hidden_dim)):
            check_int(name, value, low=1)
        self.kernel = "grouped"
        self.hidden_dim = hidden_dim
        self.gate_up = nn.Parameter(torch.empty(n_experts, 2 * hidden_dim, emb_dim))
        self.down = nn.Parameter(torch.empty(n_experts, emb_dim, hidden_dim))
        for weight in (self.gate_up, self.down):
            if not weight.is_meta:  # Llama's N(0, 0.02), as the per-expert nn.Linears had
                nn.init.normal_(weight, std=0.02)
        self.register_load_state_dict_pre_hook(_restack)

    def __len__(self) -> int:
        return self.gate_up.shape[0]

    def _swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` from the two halves of a ``gate_up`` product [..., 2 * hidden]."""
        gate, up = gate_up.split(self.hidden_dim, dim=-1)
        return F.silu(gate) * up

    def expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` alone on ``rows`` [n, emb] (the textbook SwiGLU)."""
        return F.linear(self._swiglu(F.linear(rows, self.gate_up[e])), self.down[e])

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                experts: torch.Tensor) -> torch.Tensor:
        _check_routing(x, weights, experts, self.gate_up.shape[2], len(self))
        kernel = check_choice("kernel", self.kernel, self.KERNELS)
        if kernel == "per_expert":
            return per_expert_mixture(self.expert, x, weights, experts)
        pairs = experts.numel()
        per_expert = self.gate_up[0].numel() + self.down[0].numel()
        if pairs <= len(self) and pairs * per_expert <= GATHER_LIMIT:
            return self._gathered(x, weights, experts)
        return self._grouped(x, weights, experts)

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor,
                 experts: torch.Tensor) -> torch.Tensor:
        pairs = experts.flatten()  # (S = N k,) expert of each (token, slot) pair
        order = pairs.argsort(stable=True)  # pairs by expert, tokens in order within each
        token = order // experts.shape[1]
        ends = torch.bincount(pairs, minlength=len(self)).cumsum(0, dtype=torch.int32)
        hidden = self._swiglu(grouped_linear(x[token], self.gate_up, ends))  # (S, hidden)
        out = grouped_linear(hidden, self.down, ends) * weights.flatten()[order, None]
        return torch.zeros_like(x).index_add_(0, token, out)  # (N, emb)

    def _gathered(self, x: torch.Tensor, weights: torch.Tensor,
                  experts: torch.Tensor) -> torch.Tensor:
        n, k = experts.shape
        pairs = experts.flatten()  # (S,)
        rows = x.repeat_interleave(k, dim=0)[:, None, :]  # (S, 1, emb)
        hidden = self._swiglu(torch.bmm(rows, self.gate_up[pairs].transpose(1, 2)))
        out = torch.bmm(hidden, self.down[pairs].transpose(1, 2))[:, 0]  # (S, emb)
        return (out * weights.flatten()[:, None]).view(n, k, x.shape[1]).sum(dim=1)  # (N, emb)

    def restack(self, state: dict[str, Any], prefix: str = "") -> None:
        """An older checkpoint's per-expert tensors in ``state`` (``{prefix}3.fc1.weight``, ...)
        replaced, in place, by the stacked ones (``{prefix}gate_up``, ``{prefix}down``); a state
        without all of them, or already stacked, is left as it is."""
        keys = {name: [f"{prefix}{e}.{name}.weight" for e in range(len(self))]
                for name in ("fc1", "fc2", "fc3")}
        if prefix + "gate_up" in state or not all(k in state for names in keys.values()
                                                  for k in names):
            return
        fc1, fc2, fc3 = ([state.pop(k) for k in names] for names in keys.values())
        state[prefix + "gate_up"] = torch.stack([torch.cat(pair) for pair in zip(fc1, fc2,
                                                                                  strict=True)])
        state[prefix + "down"] = torch.stack(fc3)

    def unstacked(self) -> dict[str, torch.Tensor]:
        """Each expert's matrices under their per-expert names, as views (``"3.fc1.weight"``:
        expert 3's gate, the top half of ``gate_up[3]``)."""
        gate_up, down, h = self.gate_up.detach(), self.down.detach(), self.hidden_dim
        return {name: tensor for e in range(len(self)) for name, tensor in (
            (f"{e}.fc1.weight", gate_up[e, :h]), (f"{e}.fc2.weight", gate_up[e, h:]),
            (f"{e}.fc3.weight", down[e]))}


def _restack(module: SwiGLUExperts, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """``load_state_dict``'s pre-hook: ``module.restack``."""
    module.restack(state, prefix)


class ExpertModules(nn.ModuleList):
    """Experts of any form, one module each (``MoEFeedForward``'s ``expert`` other than
    ``SwiGLU``), mixed by ``per_expert_mixture``: the same call as ``SwiGLUExperts``."""

    def forward(self, x: torch.Tensor, weights: torch.Tensor,
                experts: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, kind="floating", dims=2)
        _check_routing(x, weights, experts, x.shape[1], len(self))
        return per_expert_mixture(lambda e, rows: self[e](rows), x, weights, experts)


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
