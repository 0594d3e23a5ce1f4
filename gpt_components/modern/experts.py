"""Experts as grouped matrix products (past the book, Qwen3-MoE and DeepSeek-V3's experts).

A mixture's router sends each token to ``k`` of its experts (``moe.py``). The textbook runs
the chosen experts one at a time, each on the tokens routed to it (``per_expert_mixture``);
``transformers`` 5, and ``SwiGLUExperts`` here, stack every expert's matrices into one tensor
per projection and run all (token, expert) pairs at once: sorted by expert, each projection is
one grouped matrix product (``grouped_linear``, ``torch``'s ``grouped_mm``). The spec proves
the two equal, forward and gradients, in float64 (``spec/test_moe.py``).

Exports:

- ``SwiGLUExperts``: ``n_experts`` SwiGLU experts stacked (``gate_up``, ``down``, the layout of
  ``transformers``' ``gate_up_proj`` and ``down_proj``), mixed by the grouped kernel, by
  gathered batched products for a token or two, or by the textbook (``kernel``);
- ``ExpertModules``: experts of any other form, one module each, mixed by the textbook;
- ``per_expert_mixture(expert, x, weights, experts)``: the textbook dispatch;
- ``grouped_linear(rows, weight, ends)``: rows sorted by expert through their experts' matrices.

>>> import torch
>>> experts = SwiGLUExperts(n_experts=4, emb_dim=8, hidden_dim=16)
>>> x, gates = torch.randn(5, 8), torch.full((5, 2), 0.5)
>>> chosen = torch.tensor([[0, 1], [1, 2], [3, 0], [2, 3], [1, 0]])
>>> grouped = experts(x, gates, chosen)
>>> experts.kernel = "per_expert"
>>> grouped.shape, torch.allclose(experts(x, gates, chosen), grouped, atol=1e-6)
(torch.Size([5, 8]), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..machinery.checks import check_choice, check_int, check_tensor, value_error

__all__ = ["SwiGLUExperts", "ExpertModules", "per_expert_mixture", "grouped_linear"]

# The most weights (numbers) a batch's (token, expert) pairs may copy out for the gathered path.
# Roughly, on the CPU, one thread, one token: gathering wins at qwen3-moe-nano's experts (2 x 4.6K
# numbers), ties at 2 x 98K and loses 2-10x above, where the copies outweigh the sorting.
GATHER_LIMIT = 2**17
# torch's grouped matrix product (public from 2.10, private before; None where absent).
_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def _check_routing(x: object, weights: object, experts: object, emb_dim: int,
                   n_experts: int) -> None:
    """Tokens [N, emb_dim], and the router's gates (floating) and choices (integers in
    ``[0, n_experts)``), both [N, k]."""
    check_tensor("x", x, kind="floating", dims=2)
    if x.shape[1] != emb_dim:
        raise value_error("x", f"x must have emb_dim={emb_dim} features last, got shape "
                               f"{tuple(x.shape)}")
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
    # ``weight``: the operand [experts, in, out], either contiguous or the transpose of a
    # contiguous [experts, out, in] (how the kernel reads nn.Linear's layout).
    if (_GROUPED_MM is None or rows.shape[0] == 0  # (its backward fails on no rows)
            or not (rows.is_contiguous() and (weight.is_contiguous()
                                              or weight.transpose(-2, -1).is_contiguous()))):
        return False
    if rows.device.type == "cpu":
        if rows.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return False
    elif not (rows.device.type == "cuda" and rows.dtype == torch.bfloat16
              and torch.cuda.get_device_capability(rows.device) >= (8, 0)):
        return False
    step = 16 // rows.element_size()
    return rows.shape[1] % step == 0 and weight.shape[1] % step == 0 \
        and weight.shape[2] % step == 0


def gathers(experts: torch.Tensor, n_experts: int, per_expert: int) -> bool:
    """Whether a batch's (token, expert) pairs (``experts`` [N, k]) are few enough to copy each
    pair's matrices out (``per_expert`` numbers each) rather than sort and group them: no more
    pairs than experts, and ``GATHER_LIMIT`` numbers in all."""
    pairs = experts.numel()
    return pairs <= n_experts and pairs * per_expert <= GATHER_LIMIT


def sort_pairs(experts: torch.Tensor, n_experts: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (token, slot) pairs of ``experts`` [N, k] sorted by expert for ``grouped_linear``:
    ``order`` [S] (indices into the flattened pairs, tokens in order within each expert),
    ``token`` [S] (each sorted pair's token) and ``ends`` (int32 cumulative counts per expert)."""
    pairs = experts.flatten()  # (S = N k,) expert of each (token, slot) pair
    order = pairs.argsort(stable=True)
    ends = torch.bincount(pairs, minlength=n_experts).cumsum(0, dtype=torch.int32)
    return order, order // experts.shape[1], ends


class _ContiguousGradient(torch.autograd.Function):
    """The identity, whose backward hands a contiguous gradient on: the grouped kernel's
    backward refuses an expanded one (``out.sum().backward()``'s)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def grouped_linear(rows: torch.Tensor, weight: torch.Tensor, ends: torch.Tensor, *,
                   in_out: bool = False) -> torch.Tensor:
    """Rows grouped by expert, each group through its expert's matrix: [S, in] -> [S, out].

    ``rows`` are sorted by expert, expert ``e``'s group ending before row ``ends[e]`` (int32,
    cumulative counts); ``weight`` is [experts, out, in] (``nn.Linear``'s layout), or
    [experts, in, out] with ``in_out=True`` (GPT-OSS's, for ``rows @ weight[e]``). One call of
    torch's grouped matrix product where it can (float32 on the CPU: one kernel, its backward
    included), else one product per group (float64).
    """
    operand = weight if in_out else weight.transpose(-2, -1)  # (E, in, out)
    if _fast_grouped_mm(rows, operand):
        out = _GROUPED_MM(rows, operand, offs=ends)  # (S, out)
        return _ContiguousGradient.apply(out) if out.requires_grad else out
    bounds = [0, *ends.tolist()]
    groups = zip(bounds, bounds[1:], weight.unbind(0), strict=False)
    if in_out:
        return torch.cat([rows[start:end] @ w for start, end, w in groups])
    return torch.cat([F.linear(rows[start:end], w) for start, end, w in groups])


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
        if gathers(experts, len(self), self.gate_up[0].numel() + self.down[0].numel()):
            return self._gathered(x, weights, experts)
        return self._grouped(x, weights, experts)

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor,
                 experts: torch.Tensor) -> torch.Tensor:
        order, token, ends = sort_pairs(experts, len(self))
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
