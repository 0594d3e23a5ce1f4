"""Introspection: what a model computes on the way from token ids to logits.

Every model family implements ``model.trace(idx) -> ModelTrace``: one forward pass, without
gradients, in eval mode and without a KV cache, that keeps what a reader wants to look at:

- ``residuals``: ``n_layers + 1`` tensors ``[B, T, emb_dim]``, the residual stream entering each
  block, then the last block's output (before the final norm). ``residuals[0]`` is the embedding.
- ``attentions``: ``n_layers`` tensors ``[B, n_heads, T, T]``, the attention probabilities each
  layer really uses (one map per *query* head where heads share keys, as in grouped-query
  attention): row ``i`` is how query ``i`` spreads its attention over the keys; rows sum to one,
  or to less where a layer's heads have attention sinks (GPT-OSS), by the sink's share
  (``sink_shares``).
- ``logits``: ``[B, T, vocab_size]``, equal to ``model(idx)``.

``gpt_components.inspect.inspection`` builds its report from this and ``model.final_norm`` and
``model.out_head`` alone, so a family that implements ``trace`` can be inspected.

>>> import torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=100)).eval()
>>> trace = model.trace(torch.tensor([[1, 2, 3]]))
>>> len(trace.residuals), len(trace.attentions), tuple(trace.attentions[0].shape)
(4, 3, (1, 3, 3, 3))
>>> torch.allclose(trace.logits, model(torch.tensor([[1, 2, 3]])), atol=1e-6)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..machinery.checks import check_tensor, type_error, value_error

__all__ = ["ModelTrace"]


@dataclass(frozen=True)
class ModelTrace:
    """One forward pass laid open: residual stream, attention probabilities, logits."""

    residuals: Sequence[torch.Tensor]  # n_layers + 1 x [B, T, emb]: each block's input, then out
    attentions: Sequence[torch.Tensor]  # n_layers x [B, n_heads, T, T]: probabilities, causal
    logits: torch.Tensor  # [B, T, vocab]

    def __post_init__(self) -> None:
        for name in ("residuals", "attentions"):
            value = getattr(self, name)
            if isinstance(value, torch.Tensor) or not isinstance(value, Sequence):
                raise type_error(name, f"{name} must be a sequence of tensors (one per layer), "
                                       f"got {type(value).__name__}")
        residuals, attentions = list(self.residuals), list(self.attentions)
        check_tensor("logits", self.logits, kind="floating")
        if self.logits.dim() != 3:
            raise value_error("logits", f"logits must be a [B, T, vocab] tensor, got "
                                        f"{tuple(self.logits.shape)}")
        b, t, _ = self.logits.shape
        if len(residuals) != len(attentions) + 1:
            raise value_error("residuals", f"residuals must hold one tensor more than attentions "
                                           f"(n_layers + 1), got {len(residuals)} and "
                                           f"{len(attentions)}")
        for layer, stream in enumerate(residuals):
            check_tensor("residuals", stream, kind="floating")
            if stream.dim() != 3 or tuple(stream.shape[:2]) != (b, t):
                raise value_error("residuals", f"residuals[{layer}] must be [B={b}, T={t}, emb], "
                                               f"got {tuple(stream.shape)}")
        for layer, weights in enumerate(attentions):
            check_tensor("attentions", weights, kind="floating")
            if weights.dim() != 4 or weights.shape[0] != b or tuple(weights.shape[2:]) != (t, t):
                raise value_error("attentions", f"attentions[{layer}] must be [B={b}, n_heads, "
                                                f"T={t}, T={t}], got {tuple(weights.shape)}")
        object.__setattr__(self, "residuals", residuals)
        object.__setattr__(self, "attentions", attentions)

    @property
    def n_layers(self) -> int:
        return len(self.attentions)

    @property
    def sink_shares(self) -> list[torch.Tensor]:
        """``n_layers`` tensors [B, n_heads, T]: the share of each query's attention that went
        to no token, ``1 - row sum``: its head's attention sink's (GPT-OSS, ``newest/sinks.py``);
        zero, up to rounding, in a model without sinks."""
        return [1 - weights.sum(-1) for weights in self.attentions]
