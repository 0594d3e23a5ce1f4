"""Helpers shared by the training spec: a tiny language model that trains in milliseconds."""

from __future__ import annotations

import torch
from torch import nn


class TinyLM(nn.Module):
    """Embedding -> LayerNorm -> dropout -> Linear: every kind of parameter the optimizer sorts.

    Each position also sees the previous token (a one-step causal mix), so a repeating corpus
    is learnable.
    """

    def __init__(self, vocab_size: int = 32, emb_dim: int = 16, drop_rate: float = 0.0):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, emb_dim)
        self.mix = nn.Linear(2 * emb_dim, emb_dim)
        self.final_norm = nn.LayerNorm(emb_dim)
        self.drop = nn.Dropout(drop_rate)
        self.out_head = nn.Linear(emb_dim, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(idx)  # (B, T, D)
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)  # (B, T, D)
        h = torch.tanh(self.mix(torch.cat([x, prev], dim=-1)))
        return self.out_head(self.drop(self.final_norm(h)))  # (B, T, V)
