"""Per-layer input embeddings (Gemma 4's "PLE"): every layer gets its own view of each token.

In the usual decoder a token's identity enters once, as the embedding at the bottom of the
residual stream; every later layer sees it only through what the layers below wrote. Gemma 4's
small models also hand each layer ``i`` a small vector of its own for each token (``dim`` = 256
features), made of two halves averaged (times ``1 / sqrt(2)``):

- a lookup in a second embedding table, ``[vocab, n_layers * dim]``, cut into one slice of
  ``dim`` per layer and scaled by ``sqrt(dim)`` (as Gemma scales its main embedding);
- a projection of the main (scaled) embedding, ``[emb_dim -> n_layers * dim]``, scaled by
  ``1 / sqrt(emb_dim)``, cut the same way and RMS-normed per slice.

``PerLayerEmbedding`` makes all of them at once: [B, T, n_layers, dim]. Inside block ``i``,
``PerLayerGate`` adds its slice after the feed-forward: the residual stream is projected down to
``dim`` features, passed through the activation, multiplied feature by feature by the layer's
slice (a gate the token itself opens), projected back up and normed, and added:
``x + norm(up(gelu(down(x)) * slice))``. The table is large (262,144 x 35 x 256 = 2.3 billion
numbers in Gemma 4 E2B) but each token reads one row of it, so it can live in slow memory:
what the "E" (effective size) in the model's name counts without it.

>>> import torch
>>> ple = PerLayerEmbedding(vocab_size=10, emb_dim=8, n_layers=3, dim=4)
>>> ids = torch.tensor([[1, 2, 3]])
>>> inputs = ple(ids, torch.randn(1, 3, 8))
>>> inputs.shape  # (B, T, n_layers, dim)
torch.Size([1, 3, 3, 4])
>>> PerLayerGate(emb_dim=8, dim=4)(torch.randn(1, 3, 8), inputs[:, :, 0]).shape
torch.Size([1, 3, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from ..machinery.checks import check_int
from ..modern.feedforward import GATE_ACTIVATIONS
from ..modern.norms import RMSNorm

__all__ = ["PerLayerEmbedding", "PerLayerGate"]


class PerLayerEmbedding(nn.Module):
    """Each token's input to each layer: [B, T, n_layers, dim] from ids and main embeddings."""

    def __init__(self, vocab_size: int, emb_dim: int, n_layers: int, dim: int,
                 eps: float = 1e-6) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("emb_dim", emb_dim),
                            ("n_layers", n_layers), ("dim", dim)):
            check_int(name, value, low=1)
        self.emb_dim, self.n_layers, self.dim = emb_dim, n_layers, dim
        self.tok_emb = nn.Embedding(vocab_size, n_layers * dim)  # every layer's slice, packed
        self.proj = nn.Linear(emb_dim, n_layers * dim, bias=False)
        self.norm = RMSNorm(dim, eps=eps)

    def forward(self, idx: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """``idx`` [B, T] and the main embeddings [B, T, emb_dim] -> [B, T, n_layers, dim]."""
        b, t = idx.shape
        weight = self.tok_emb.weight
        # The lookup's scale is rounded to the weights' dtype first, as Gemma does.
        own = self.tok_emb(idx) * torch.tensor(self.dim**0.5, dtype=weight.dtype,
                                               device=weight.device)
        seen = self.proj(embeddings) * self.emb_dim**-0.5  # (B, T, n_layers * dim)
        seen = self.norm(seen.view(b, t, self.n_layers, self.dim))
        return (seen + own.view(b, t, self.n_layers, self.dim)) * 2**-0.5


class PerLayerGate(nn.Module):
    """What a layer adds from its slice: ``norm(up(act(down(x)) * slice))``, [B, T, emb_dim]."""

    def __init__(self, emb_dim: int, dim: int, eps: float = 1e-6,
                 activation: str = "gelu_tanh") -> None:
        super().__init__()
        self.activation = GATE_ACTIVATIONS[activation]
        self.gate = nn.Linear(check_int("emb_dim", emb_dim, low=1), check_int("dim", dim, low=1),
                              bias=False)
        self.projection = nn.Linear(dim, emb_dim, bias=False)
        self.norm = RMSNorm(emb_dim, eps=eps)

    def forward(self, x: torch.Tensor, layer_input: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(self.activation(self.gate(x)) * layer_input))
