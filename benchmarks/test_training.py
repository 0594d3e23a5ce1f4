"""Pretraining (chapter 5): training-step tokens per second and model FLOPs utilisation (MFU).

One optimizer step (forward, backward, clipping, AdamW) of each small preset with GPT-2's
vocabulary; on CUDA also ``gpt2-small`` at context 256. MFU divides the step's model FLOPs
(nanoGPT's estimate: ``6 * N`` per token for the matmul parameters plus ``12 * L * T * D`` for
attention) by the device's own measured float32 matmul throughput, so it says how much of what
this machine can do the step uses. Each result stores ``tokens_per_s``, ``model_tflops`` and
``mfu`` in ``extra_info``.
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.conftest import synchronize
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.training import configure_optimizer, train_step

CASES = {"gpt-nano": 8, "gpt-micro": 4, "gpt-mini": 2, "gpt2-small": 2}  # preset -> batch


def _matmul_flops(device: torch.device) -> float:
    """Measured float32 matmul throughput of ``device`` (FLOP/s), best of a few runs."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(4):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _flops_per_token(cfg: GPTConfig, model: GPTModel) -> float:
    matmul_params = sum(p.numel() for n, p in model.named_parameters() if n not in
                        ("tok_emb.weight", "pos_emb.weight"))
    if cfg.tie_weights:
        matmul_params += model.tok_emb.weight.numel()
    attention = 12 * cfg.n_layers * cfg.context_length * cfg.emb_dim
    return 6 * matmul_params + attention


@pytest.mark.parametrize("preset", list(CASES))
def test_training_step_tokens_per_second(benchmark, run_synced, device, preset):
    if preset == "gpt2-small" and device.type == "cpu":
        pytest.skip("gpt2-small steps take seconds on a CPU; measured on CUDA only")
    overrides = {"context_length": 256} if preset == "gpt2-small" else {}
    cfg = GPTConfig.from_name(preset, drop_rate=0.0, **overrides)
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device).train()
    optimizer = configure_optimizer(model, 1e-4, 0.1)
    batch = CASES[preset]
    ids = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1),
                        generator=torch.Generator().manual_seed(1)).to(device)
    micro = [(ids[:, :-1], ids[:, 1:])]
    run_synced(train_step, model, optimizer, micro, device, grad_clip=1.0, rounds=3)
    tokens = batch * cfg.context_length
    per_s = tokens / benchmark.stats.stats.mean
    flops = _flops_per_token(cfg, model) * per_s
    benchmark.extra_info.update(preset=preset, batch=batch, context=cfg.context_length,
                                tokens_per_s=per_s, model_tflops=flops / 1e12,
                                mfu=flops / _matmul_flops(device))
