"""Print the training comparisons of ``test_training.py`` as they are measured (no pytest).

``python -m benchmarks.measure_training [rounds]``: each rival of
``test_training_step_against_a_rival`` in turn, alternating one rival step and one of ours in
this process, then what an ``eval()``/``train()`` pair (the layout switch) costs beside an
evaluation, then each preset's tokens/s and MFU in the ``fast`` and ``book`` forms. Every
line is printed as soon as it is known, so a run cut short still leaves its results.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from benchmarks.test_training import (
    CASES,
    RIVAL_BATCH,
    RIVAL_SHAPE,
    _batch,
    _flops_per_token,
    _foreach_adamw,
    _matmul_flops,
    _our_step,
    _reference_step,
)
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.training import configure_optimizer, evaluate, train_step

RIVALS = ["nanogpt", "foreach-adamw", "book-layers", "row-major", "column-major", "compiled"]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(rival: str, rounds: int) -> None:
    cpu = torch.device("cpu")
    ours = _our_step(cpu)
    other = _reference_step(cpu) if rival == "nanogpt" else _our_step(cpu, rival)
    for _ in range(3 if rival == "compiled" else 1):
        other()
        ours()
    pairs = [(_timed(other), _timed(ours)) for _ in range(rounds)]
    rival_t, ours_t = (statistics.median(t) for t in zip(*pairs, strict=True))
    per_round = statistics.median(a / b for a, b in pairs)
    print(f"{rival:14s} rival {rival_t:7.2f} s  ours {ours_t:7.2f} s  speedup "
          f"{rival_t / ours_t:.3f}x (median of per-round ratios {per_round:.3f}x, "
          f"min {min(a for a, _ in pairs):.2f} / {min(b for _, b in pairs):.2f} s)", flush=True)


def toggle(rounds: int) -> None:
    """What ``eval()`` then ``train()`` (two layout changes) cost beside the evaluation they
    bracket: ``evaluate`` with the loop's default 5 training and 5 validation batches of the
    rival shape."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = GPTModel(RIVAL_SHAPE).train()
    batches = [_batch(RIVAL_SHAPE, RIVAL_BATCH, cpu)] * 5
    pairs = [(_timed(lambda: model.eval().train()),
              _timed(lambda: evaluate(model, batches, batches, cpu, 5)))
             for _ in range(rounds)]
    switch, evaluation = (statistics.median(t) for t in zip(*pairs, strict=True))
    print(f"eval()+train() {switch * 1000:.1f} ms, evaluate() over 5 + 5 batches "
          f"{evaluation * 1000:.0f} ms (its own eval()/train() included): "
          f"{switch / evaluation:.1%}", flush=True)


def presets(rounds: int) -> None:
    cpu = torch.device("cpu")
    peak = _matmul_flops(cpu)
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s", flush=True)
    for preset, batch in CASES.items():
        if preset == "gpt2-small":
            continue
        models = {}
        for layers in ("fast", "book"):
            extra = {"layer_kernel": "textbook"} if layers == "book" else {}
            cfg = GPTConfig.from_name(preset, drop_rate=0.0, **extra)
            torch.manual_seed(0)
            model = GPTModel(cfg).train()
            optimizer = configure_optimizer(model, 1e-4, 0.1)
            if layers == "book":
                _foreach_adamw(optimizer)
            micro = [_batch(cfg, batch, cpu)]
            models[layers] = (cfg, model, lambda m=model, o=optimizer, b=micro: train_step(
                m, o, b, cpu, grad_clip=1.0))
            models[layers][2]()
        times = {k: [] for k in models}
        for _ in range(rounds):
            for k, (_, _, step) in models.items():
                times[k].append(_timed(step))
        for k, (cfg, model, _) in models.items():
            median = statistics.median(times[k])
            per_s = batch * cfg.context_length / median
            mfu = _flops_per_token(cfg, model) * per_s / peak
            print(f"{preset:10s} {k:5s} step {median * 1000:6.0f} ms  {per_s:7.0f} tokens/s  "
                  f"MFU {mfu:.1%}", flush=True)


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    which = sys.argv[2].split(",") if len(sys.argv) > 2 else [*RIVALS, "toggle", "presets"]
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()}, shape {RIVAL_SHAPE} "
          f"batch {RIVAL_BATCH}", flush=True)
    for name in which:
        if name == "presets":
            presets(rounds)
        elif name == "toggle":
            toggle(rounds)
        else:
            compare(name, rounds)
    print(f"load {os.getloadavg()}", flush=True)
