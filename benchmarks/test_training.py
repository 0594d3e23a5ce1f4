"""Pretraining (chapter 5): training-step tokens per second, MFU, and a nanoGPT-style rival.

``test_training_step_tokens_per_second``: one optimizer step (forward, backward, clipping,
AdamW) of each small preset with GPT-2's vocabulary, as the project trains by default
(``fast``: fused LayerNorm/GELU, fused AdamW) and as it trained before those
(``book``: the book's LayerNorm and GELU, torch's default foreach AdamW); on CUDA also
``gpt2-small`` at context 256. MFU divides the step's model FLOPs (nanoGPT's estimate:
``6 * N`` per token for the matmul parameters plus ``12 * L * T * D`` for attention) by the
device's own measured float32 matmul throughput. Each result stores ``tokens_per_s``,
``model_tflops`` and ``mfu`` in ``extra_info``.

``test_training_step_against_a_rival``: the project's step against a rival step of the same
shape (4 layers, emb 384, context 256, batch 4), in one process, alternating one rival step and
one of ours, so that the load of a shared machine falls on both alike. Rivals: ``nanogpt`` (the
reference model of ``benchmarks/reference.py``), ``row-major`` (our model with every weight made
contiguous after ``train()``: the same layout as ours, which training mode keeps row-major, so it
reads as the noise floor), ``column-major`` (our model training with the column-major widening
weights that eval mode keeps for decoding, as every mode did before), ``book-layers`` (our
model with the book's LayerNorm and GELU), ``foreach-adamw`` (our model with torch's default
AdamW) and ``compiled`` (our model under ``torch.compile``). ``extra_info["speedup"]`` is the
rival's median step time over ours (above 1: ours is faster). Target: >= 1.05 against
``nanogpt`` on CPU.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import pytest
import torch

from benchmarks.conftest import synchronize
from benchmarks.reference import ReferenceGPT, reference_optimizer, reference_step
from gpt_components.machinery.language_model import lay_out_blocks
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.training import configure_optimizer, train_step

CASES = {"gpt-nano": 8, "gpt-micro": 4, "gpt-mini": 2, "gpt2-small": 2}  # preset -> batch
RIVAL_SHAPE = GPTConfig(emb_dim=384, n_layers=4, n_heads=6, context_length=256, drop_rate=0.0)
RIVAL_BATCH = 4
RIVAL_ROUNDS = 7


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


def _foreach_adamw(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer with torch's default (foreach) AdamW kernel instead of the fused one."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = None, None
    return optimizer


def _batch(cfg: GPTConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1),
                        generator=torch.Generator().manual_seed(1)).to(device)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("layers", ["fast", "book"])
@pytest.mark.parametrize("preset", list(CASES))
def test_training_step_tokens_per_second(benchmark, run_synced, device, preset, layers):
    if preset == "gpt2-small" and device.type == "cpu":
        pytest.skip("gpt2-small steps take seconds on a CPU; measured on CUDA only")
    overrides = {"context_length": 256} if preset == "gpt2-small" else {}
    if layers == "book":
        overrides["layer_kernel"] = "textbook"
    cfg = GPTConfig.from_name(preset, drop_rate=0.0, **overrides)
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device).train()
    optimizer = configure_optimizer(model, 1e-4, 0.1)
    if layers == "book":
        _foreach_adamw(optimizer)
    batch = CASES[preset]
    micro = [_batch(cfg, batch, device)]
    run_synced(train_step, model, optimizer, micro, device, grad_clip=1.0, rounds=3)
    tokens = batch * cfg.context_length
    per_s = tokens / benchmark.stats.stats.mean
    flops = _flops_per_token(cfg, model) * per_s
    benchmark.extra_info.update(preset=preset, batch=batch, context=cfg.context_length,
                                tokens_per_s=per_s, model_tflops=flops / 1e12,
                                mfu=flops / _matmul_flops(device))


def _our_step(device: torch.device, rival: str = "") -> Callable[[], object]:
    """One training step of GPTModel at the rival shape, configured as ``rival`` asks."""
    cfg = RIVAL_SHAPE
    if rival == "book-layers":
        cfg = dataclasses.replace(cfg, layer_kernel="textbook")
    torch.manual_seed(0)
    model = GPTModel(cfg).to(device).train()
    if rival == "row-major":
        for p in model.parameters():
            p.data = p.data.contiguous()
    if rival == "column-major":  # eval mode's decoding layout, kept for training
        lay_out_blocks(model.trf_blocks, decoding=True)
    optimizer = configure_optimizer(model, 1e-4, 0.1)
    if rival == "foreach-adamw":
        _foreach_adamw(optimizer)
    stepped = torch.compile(model) if rival == "compiled" else model
    micro = [_batch(cfg, RIVAL_BATCH, device)]
    return lambda: train_step(stepped, optimizer, micro, device, grad_clip=1.0)


def _reference_step(device: torch.device) -> Callable[[], object]:
    torch.manual_seed(0)
    model = ReferenceGPT(RIVAL_SHAPE).to(device).train()
    optimizer = reference_optimizer(model)
    inputs, targets = _batch(RIVAL_SHAPE, RIVAL_BATCH, device)
    return lambda: reference_step(model, optimizer, inputs, targets)


@pytest.mark.parametrize("rival", ["nanogpt", "row-major", "column-major", "book-layers",
                                   "foreach-adamw", "compiled"])
def test_training_step_against_a_rival(benchmark, device, rival):
    ours = _our_step(device)
    other = _reference_step(device) if rival == "nanogpt" else _our_step(device, rival)
    rival_times: list[float] = []

    def run_rival() -> None:  # untimed by pytest-benchmark: timed here, between our rounds
        synchronize(device)
        start = time.perf_counter()
        other()
        synchronize(device)
        rival_times.append(time.perf_counter() - start)

    def run_ours() -> None:
        ours()
        synchronize(device)

    warmup = 3 if rival == "compiled" else 1  # compiling takes the first calls
    for _ in range(warmup):
        other()
        ours()
    rival_times.clear()
    benchmark.extra_info["device"] = str(device)
    benchmark.pedantic(run_ours, setup=run_rival, rounds=RIVAL_ROUNDS, iterations=1)
    ours_median = statistics.median(benchmark.stats.stats.data)
    rival_median = statistics.median(rival_times)
    benchmark.extra_info.update(rival=rival, rival_median_s=rival_median,
                                ours_median_s=ours_median, speedup=rival_median / ours_median,
                                rival_times_s=rival_times)
