"""A nanoGPT-style GPT-2 written here, as the reference a training step is measured against.

The layout Karpathy's nanoGPT ``model.py`` uses: ``nn.LayerNorm``, one fused ``c_attn`` for the
query, key and value, ``F.scaled_dot_product_attention(is_causal=True)``, ``nn.GELU("tanh")``, an
untied bias-free head. It has exactly ``GPTModel``'s parameters for the same ``GPTConfig`` with
``qkv_bias=False`` and ``tie_weights=False`` (the book's GPT-2), so the two do the same arithmetic
and any difference in step time is implementation. ``reference_step`` is nanoGPT's training step
on a CPU: cross-entropy, backward, clipping to 1.0, a (foreach) ``AdamW`` step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt_components.model import GPTConfig


class _Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        d = cfg.emb_dim
        self.n_heads = cfg.n_heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        # (B, T, d) -> (B, nh, T, hd)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, d))  # (B, T, d)
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    """nanoGPT's ``GPT`` without dropout or weight tying."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.emb_dim)
        self.wpe = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.h = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.emb_dim)
        self.lm_head = nn.Linear(cfg.emb_dim, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, d)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)


def reference_optimizer(model: nn.Module, lr: float = 1e-4,
                        weight_decay: float = 0.1) -> torch.optim.AdamW:
    """nanoGPT's ``configure_optimizers``: decay tensors of 2+ dims; on a CPU, foreach AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def reference_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                   targets: torch.Tensor) -> float:
    """nanoGPT's training step: loss, backward, clip to 1.0, step, drop the gradients."""
    logits = model(inputs)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()
