"""Attention (chapter 3): forward and forward+backward of every attention class, per device.

GPT-2 small's attention shape: batch 8, 12 heads, d 768, T in {256, 1024}. References:
bare ``F.scaled_dot_product_attention`` (the attention core only: q, k, v already projected,
no projections, no ``out_proj``) and ``torch.nn.MultiheadAttention`` (projections included).

How each class is sized, so they compute comparable things:
- ``simple_self_attention``, ``SelfAttentionV1``, ``SelfAttentionV2``: no heads, no mask,
  d_in = d_out = 768 (one 768-wide head over all T tokens, non-causal).
- ``CausalAttention``: one causal head, d_out = 768.
- ``MultiHeadAttentionWrapper``: 12 heads of d_out = 768 // 12 = 64, so its output is 768 wide
  like ``MultiHeadAttention`` (the book's 12 heads of 768 each would be 12x the work).
- ``MultiHeadAttention`` and ``nn.MultiheadAttention``: 12 heads of 64, with ``out_proj``.

"forward" runs in eval mode under ``torch.no_grad()`` (inference); "forward+backward" runs in
train mode (dropout 0) and back-propagates ``out.sum()`` into the weights and the input.
Slow on a CPU: rounds are fixed and few (see ``ROUNDS``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt_components.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    simple_self_attention,
)

BATCH, HEADS, D = 8, 12, 768
TOKENS = [256, 1024]
ROUNDS = {256: 5, 1024: 3}  # after one warm-up round each

IMPLEMENTATIONS = [
    "sdpa",
    "simple_self_attention",
    "SelfAttentionV1",
    "SelfAttentionV2",
    "CausalAttention",
    "MultiHeadAttentionWrapper",
    "MultiHeadAttention",
    "nn.MultiheadAttention",
]


class _Sdpa(nn.Module):
    """Bare causal SDPA: the input is already ``q``, ``k``, ``v`` stacked, ``[3, B, nh, T, hd]``."""

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)


class _Simple(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return simple_self_attention(x)


class _TorchMHA(nn.Module):
    """``nn.MultiheadAttention`` as self-attention with a causal mask, weights not returned."""

    def __init__(self, tokens: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, dropout=0.0, bias=True, batch_first=True)
        mask = torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), diagonal=1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, attn_mask=self.mask, need_weights=False, is_causal=True)
        return out


def build(name: str, tokens: int) -> tuple[nn.Module, torch.Tensor]:
    """The module under test and its input (on the CPU, float32)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, tokens, D, generator=g)
    if name == "sdpa":
        qkv = torch.randn(3, BATCH, HEADS, tokens, D // HEADS, generator=g)  # (3, B, nh, T, hd)
        return _Sdpa(), qkv
    modules: dict[str, Callable[[], nn.Module]] = {
        "simple_self_attention": _Simple,
        "SelfAttentionV1": lambda: SelfAttentionV1(D, D, generator=g),
        "SelfAttentionV2": lambda: SelfAttentionV2(D, D),
        "CausalAttention": lambda: CausalAttention(D, D, tokens, 0.0),
        "MultiHeadAttentionWrapper": lambda: MultiHeadAttentionWrapper(
            D, D // HEADS, tokens, 0.0, HEADS),
        "MultiHeadAttention": lambda: MultiHeadAttention(D, D, tokens, 0.0, HEADS),
        "nn.MultiheadAttention": lambda: _TorchMHA(tokens),
    }
    return modules[name](), x


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_attention_forward(benchmark, run_synced, device, name, tokens):
    benchmark.group = f"attention forward T={tokens}"
    module, x = build(name, tokens)
    module, x = module.to(device).eval(), x.to(device)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    out = run_synced(forward, rounds=ROUNDS[tokens])
    assert out.shape[-2] == tokens


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_attention_forward_backward(benchmark, run_synced, device, name, tokens):
    benchmark.group = f"attention forward+backward T={tokens}"
    module, x = build(name, tokens)
    module = module.to(device).train()
    x = x.to(device).requires_grad_(True)

    def forward_backward() -> torch.Tensor:
        out = module(x)
        out.sum().backward()
        return out

    def reset_gradients() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None

    out = run_synced(forward_backward, rounds=ROUNDS[tokens], setup=reset_gradients)
    assert out.shape[-2] == tokens and x.grad is not None
