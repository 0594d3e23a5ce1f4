"""The small presets of the windowed and mixture families against transformers, same weights.

Each preset (``gemma3-nano``, ``qwen3-moe-nano``, ``deepseek-v3-nano``, ``qwen3-next-nano``,
``gpt-oss-nano``, vocabulary cut to
8,000) gets random weights in ``transformers``' class, saved and read back with
``from_pretrained``. Decoding: a 16-token prompt, 48 greedy tokens (past Gemma's 16-token
window), batch 1, ours with its cache against ``generate``. Training: one AdamW step on 4 x 64
tokens (the mixture's auxiliary loss left out on both sides). ``python -m
benchmarks.test_modern_families [preset ...]`` names the machine, then alternates the two sides
in one process, with 1 thread and with 2 (the two thread counts in turn, preset by preset), and
prints the ratios recorded in ``benchmarks/README.md``; ``--kernel per_expert`` runs our
mixtures with the textbook per-expert dispatch instead of the grouped kernel, for comparison.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pytest
import torch

from gpt_components import from_pretrained, generate, save_pretrained
from gpt_components.machinery.registry import build_model, preset_config
from gpt_components.modern.experts import SwiGLUExperts
from gpt_components.newest.clamped_swiglu import ClampedSwiGLUExperts

transformers = pytest.importorskip("transformers")

PRESETS = ("gemma3-nano", "qwen3-moe-nano", "deepseek-v3-nano", "qwen3-next-nano", "gpt-oss-nano")
VOCAB, NEW_TOKENS, PROMPT_TOKENS = 8000, 48, 16
BATCH, CONTEXT = 4, 63


def make_models(preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our preset with random weights, and the same weights in transformers' class."""
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(0)
    ours = build_model(preset_config(preset, vocab_size=VOCAB)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.05)
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(ours, directory)
        # SDPA where transformers has it; GPT-OSS's sinks are eager only there.
        attention = "eager" if preset.startswith("gpt-oss") else "sdpa"
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            directory, attn_implementation=attention).eval()
        ours = from_pretrained(directory)
    return ours, hf


def _prompt() -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(1))


def decode_ours(model: torch.nn.Module) -> torch.Tensor:
    return generate(model, _prompt(), NEW_TOKENS)


def decode_hf(model: torch.nn.Module) -> torch.Tensor:
    idx = _prompt()
    with torch.no_grad():
        return model.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              use_cache=True, pad_token_id=0)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, hf: bool) -> float:
    tokens = torch.randint(0, VOCAB, (BATCH, CONTEXT + 1),
                           generator=torch.Generator().manual_seed(2))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs).logits if hf else model(inputs)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("side", ["ours", "transformers"])
def test_decode(benchmark, preset, side):
    ours, hf = make_models(preset)
    fn, model = (decode_ours, ours) if side == "ours" else (decode_hf, hf)
    benchmark.pedantic(fn, args=(model,), rounds=2, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = NEW_TOKENS / benchmark.stats.stats.mean


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("side", ["ours", "transformers"])
def test_training_step(benchmark, preset, side):
    ours, hf = make_models(preset)
    model = (ours if side == "ours" else hf).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    benchmark.pedantic(train_step, args=(model, optimizer, side != "ours"), rounds=3,
                       warmup_rounds=1)


def _alternate(first, second, rounds: int) -> tuple[float, float]:
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(rounds):
        for key, fn in ((0, first), (1, second)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def set_expert_kernel(model: torch.nn.Module, kernel: str) -> None:
    """Our mixtures' experts run with ``kernel`` ("grouped" or the textbook "per_expert")."""
    for module in model.modules():
        if isinstance(module, (SwiGLUExperts, ClampedSwiGLUExperts)):
            module.kernel = kernel


def measure(preset: str, threads: tuple[int, ...] = (1, 2), kernel: str = "grouped",
            rounds: int = 3) -> dict[int, str]:
    """One table row per thread count: decoding and a training step, ours against
    transformers on the same weights, the two sides alternated (medians of ``rounds``)."""
    ours, hf = make_models(preset)
    set_expert_kernel(ours, kernel)
    same = torch.equal(decode_ours(ours), decode_hf(hf))
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-4)
    decode, train = {}, {}
    for n in threads:
        torch.set_num_threads(n)
        ours.eval(), hf.eval()
        decode[n] = _alternate(lambda: decode_ours(ours), lambda: decode_hf(hf), rounds)
        ours.train(), hf.train()
        train_step(ours, opt_ours, False), train_step(hf, opt_hf, True)  # warm-up
        train[n] = _alternate(lambda: train_step(ours, opt_ours, False),
                              lambda: train_step(hf, opt_hf, True), rounds)
    rows = {}
    for n in threads:
        (d_ours, d_hf), (t_ours, t_hf) = decode[n], train[n]
        rows[n] = (f"| {preset}{'' if same else ' (tokens differ in float32)'} | {n} | "
                   f"{NEW_TOKENS / d_ours:.0f} | {NEW_TOKENS / d_hf:.0f} | {d_hf / d_ours:.2f}x | "
                   f"{t_ours * 1000:.0f} | {t_hf * 1000:.0f} | {t_hf / t_ours:.2f}x |")
    return rows


def machine() -> str:
    """The CPU's name (``/proc/cpuinfo``), its cores, torch's and transformers' versions."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in
             (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
             if line.startswith("model name")]
    return (f"{names[0] if names else platform.processor() or platform.machine()}, "
            f"{len(names) or '?'} logical CPUs; torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("presets", nargs="*", default=list(PRESETS))
    parser.add_argument("--kernel", choices=("grouped", "per_expert"), default="grouped")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"Machine: {machine()}; our experts' kernel: {args.kernel}")
    print("| preset | threads | decode ours (tok/s) | decode transformers (tok/s) | ratio | "
          "train step ours (ms) | train step transformers (ms) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        for row in measure(preset, kernel=args.kernel, rounds=args.rounds).values():
            print(row, flush=True)


if __name__ == "__main__":
    main()
