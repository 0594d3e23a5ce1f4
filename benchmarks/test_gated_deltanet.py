"""Gated DeltaNet's rule: the chunked form against the recurrent textbook and transformers.

Qwen3-Next's per-layer shape, one sequence: 32 value heads, head_k_dim = head_v_dim = 128,
T in {512, 2048}, float32. Implementations: ``chunked_gated_delta_rule`` (chunks of 64, the
fast path), ``recurrent_gated_delta_rule`` (the textbook, one token at a time) and
``transformers``' ``torch_chunk_gated_delta_rule`` (its pure-torch fallback, the same
algorithm). Each run checks its output against the chunked form first. Slow on a CPU: rounds
are few.
"""

from __future__ import annotations

import pytest
import torch

from gpt_components.newest.gated_deltanet import (
    chunked_gated_delta_rule,
    l2_normalize,
    recurrent_gated_delta_rule,
)

HEADS, DK, DV = 32, 128, 128
TOKENS = [512, 2048]
IMPLEMENTATIONS = ["chunked", "recurrent", "transformers"]


def inputs(tokens: int, device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    q, k = (l2_normalize(torch.randn(1, HEADS, tokens, DK, generator=g)) for _ in range(2))
    v = torch.randn(1, HEADS, tokens, DV, generator=g)
    decay = -torch.rand(1, HEADS, tokens, generator=g)
    beta = torch.rand(1, HEADS, tokens, generator=g)
    return tuple(x.to(device) for x in (q, k, v, decay, beta))


def rule(name: str):
    if name == "chunked":
        return lambda *args: chunked_gated_delta_rule(*args, chunk_size=64)[0]
    if name == "recurrent":
        return lambda *args: recurrent_gated_delta_rule(*args)[0]
    hf = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")

    def theirs(q, k, v, decay, beta):  # its layout: (B, T, H, d)
        out, _ = hf.torch_chunk_gated_delta_rule(*(x.transpose(1, 2) for x in (q, k, v, decay,
                                                                                  beta)),
                                                 chunk_size=64)
        return out.transpose(1, 2)

    return theirs


@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_gated_delta_rule(benchmark, run_synced, device, name, tokens):
    benchmark.group = f"gated delta rule T={tokens}"
    args = inputs(tokens, device)
    fn = rule(name)
    with torch.no_grad():
        expected = chunked_gated_delta_rule(*args, chunk_size=64)[0]
        torch.testing.assert_close(fn(*args), expected, rtol=1e-3, atol=1e-3)

        def forward() -> torch.Tensor:
            return fn(*args)

        out = run_synced(forward, rounds=2 if name == "recurrent" else 3)
    assert out.shape == (1, HEADS, tokens, DV)
