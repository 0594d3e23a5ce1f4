"""The modern decoder (gpt_components.modern): decoding and training against transformers, the
KV-cache memory table, and the peak memory of from_pretrained.

- Decoding: a Llama-shaped model with random weights (emb 512, 8 layers, 8 query heads, 2
  key/value heads, SwiGLU 1408, vocabulary 32,000: 46M parameters), a 16-token prompt, 100 new
  tokens, greedy, batch 1; the same weights in ``DecoderModel`` (through ``from_pretrained``)
  and in ``transformers.LlamaForCausalLM.generate``, at 1 and 2 threads.
- Training: one AdamW step (forward, backward, step) of the same model on 4 x 128 tokens.
- ``python benchmarks/test_modern.py`` measures the ratios ours / transformers with the two
  sides alternating in one process (robust to a busy machine), prints the KV-cache table and
  runs the from_pretrained memory measurement in a fresh process.

Targets: decoding and a training step at least as fast as transformers; from_pretrained's
peak memory at most ~1.3x the file.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from gpt_components import from_pretrained, generate, save_pretrained
from gpt_components.machinery.registry import build_model, preset_config

transformers = pytest.importorskip("transformers")

SHAPE = {"vocab_size": 32000, "hidden_size": 512, "intermediate_size": 1408,
         "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2,
         "max_position_embeddings": 1024, "rope_parameters": {"rope_type": "default",
                                                              "rope_theta": 500000.0}}
NEW_TOKENS, PROMPT_TOKENS = 100, 16
BATCH, CONTEXT = 4, 128


def make_models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """transformers' Llama with random weights, and the same weights in ours."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        ours = from_pretrained(directory)
    return ours, hf


def _prompt() -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (1, PROMPT_TOKENS),
                         generator=torch.Generator().manual_seed(1))


def decode_ours(model: torch.nn.Module) -> torch.Tensor:
    return generate(model, _prompt(), NEW_TOKENS)


def decode_hf(model: torch.nn.Module) -> torch.Tensor:
    idx = _prompt()
    with torch.no_grad():
        return model.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              use_cache=True, pad_token_id=0)


def _batch() -> torch.Tensor:
    return torch.randint(0, SHAPE["vocab_size"], (BATCH, CONTEXT + 1),
                         generator=torch.Generator().manual_seed(2))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, hf: bool) -> float:
    tokens = _batch()
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs).logits if hf else model(inputs)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@pytest.fixture(scope="module")
def models():
    return make_models()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("side", ["ours", "transformers"])
def test_decode_tokens_per_second(benchmark, models, side, threads):
    ours, hf = models
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fn, model = (decode_ours, ours) if side == "ours" else (decode_hf, hf)
        out = benchmark.pedantic(fn, args=(model,), rounds=2, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out, (decode_hf(hf) if side == "ours" else decode_ours(ours)))
    benchmark.extra_info["tokens_per_s"] = NEW_TOKENS / benchmark.stats.stats.mean


@pytest.mark.parametrize("side", ["ours", "transformers"])
def test_training_step(benchmark, models, side):
    ours, hf = models
    model = (ours if side == "ours" else hf).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    benchmark.pedantic(train_step, args=(model, optimizer, side != "ours"), rounds=3,
                       warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = BATCH * CONTEXT / benchmark.stats.stats.mean
    model.eval()


def kv_cache_table(tokens: int = 8192) -> list[dict]:
    """KV-cache bytes of real caches (built on the meta device), MHA vs GQA vs MQA, bf16."""
    rows = []
    for name in ("llama3.2-1b", "llama3.2-3b", "llama3-8b", "qwen3-0.6b", "qwen3-1.7b"):
        cfg = preset_config(name)
        for label, n_kv in (("MHA", cfg.n_heads), ("GQA", cfg.n_kv_heads), ("MQA", 1)):
            with torch.device("meta"):
                model = build_model(preset_config(name, n_kv_heads=n_kv)).to(torch.bfloat16)
                cache = model.new_kv_cache(1, tokens)
            rows.append({"preset": name, "attention": label, "n_kv_heads": n_kv,
                         "kib_per_token": cache.memory_bytes() / tokens / 1024,
                         "gib_at_tokens": cache.memory_bytes() / 2**30})
    return rows


def test_kv_cache_table_matches_the_formula():
    for row in kv_cache_table(1024):
        cfg = preset_config(row["preset"])
        per_token = 2 * cfg.n_layers * row["n_kv_heads"] * cfg.head_dim * 2
        assert row["kib_per_token"] * 1024 == per_token


_MEMORY_SCRIPT = """
import json, re, sys
from gpt_components import from_pretrained

def status():
    text = open('/proc/self/status').read()
    return {key: int(re.search(key + r':\\s+(\\d+)', text).group(1)) for key in ('VmRSS', 'VmHWM')}

from_pretrained(sys.argv[2])  # a tiny model first: torch's one-time start-up is not the load
before = status()
model = from_pretrained(sys.argv[1])
after = status()
print(json.dumps({"before_kib": before, "after_kib": after}))
"""


def from_pretrained_peak_memory() -> dict:
    """Peak and final RSS growth of from_pretrained in a fresh process (Linux), vs the file."""
    cfg = preset_config("llama3-mini", vocab_size=32000, emb_dim=1024, n_layers=12, n_heads=16,
                        n_kv_heads=4, hidden_dim=2816)
    with tempfile.TemporaryDirectory() as directory, tempfile.TemporaryDirectory() as tiny:
        save_pretrained(build_model(cfg), directory)
        save_pretrained(build_model(preset_config("llama3-nano", vocab_size=100)), tiny)
        file_bytes = (Path(directory) / "model.safetensors").stat().st_size
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, directory, tiny],
                             check=True, capture_output=True, text=True, env=os.environ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    before, after = result["before_kib"], result["after_kib"]
    peak = (after["VmHWM"] - before["VmRSS"]) * 1024
    kept = (after["VmRSS"] - before["VmRSS"]) * 1024
    return {"file_mb": round(file_bytes / 2**20, 1), "peak_mb": round(peak / 2**20, 1),
            "kept_mb": round(kept / 2**20, 1), "peak_ratio": round(peak / file_bytes, 3)}


def test_from_pretrained_holds_the_weights_once():
    measured = from_pretrained_peak_memory()
    assert measured["peak_ratio"] <= 1.3, measured


def _alternate(first, second, rounds: int) -> tuple[float, float]:
    times = {0: [], 1: []}
    for _ in range(rounds):
        for key, fn in ((0, first), (1, second)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(parts: list[str]) -> None:
    """``parts``: any of kv, memory, decode1, decode2, train (default: all)."""
    parts = parts or ["kv", "memory", "decode1", "decode2", "train"]
    if "kv" in parts:
        print("| preset | attention | n_kv_heads | KiB per token (bf16) | GiB at 8,192 tokens |")
        print("|---|---|---:|---:|---:|")
        for row in kv_cache_table():
            print(f"| {row['preset']} | {row['attention']} | {row['n_kv_heads']} | "
                  f"{row['kib_per_token']:.0f} | {row['gib_at_tokens']:.2f} |")
    if "memory" in parts:
        print("from_pretrained:", from_pretrained_peak_memory(), flush=True)
    if not {"decode1", "decode2", "train"} & set(parts):
        return
    ours, hf = make_models()
    for threads in (1, 2):
        if f"decode{threads}" not in parts:
            continue
        torch.set_num_threads(threads)
        assert torch.equal(decode_ours(ours), decode_hf(hf))  # also the warm-up
        t_ours, t_hf = _alternate(lambda: decode_ours(ours), lambda: decode_hf(hf), 2)
        print(f"decode, {threads} thread(s): ours {NEW_TOKENS / t_ours:.1f} tok/s, transformers "
              f"{NEW_TOKENS / t_hf:.1f} tok/s, ratio {t_hf / t_ours:.2f}x", flush=True)
    if "train" in parts:
        torch.set_num_threads(2)
        opt_ours = torch.optim.AdamW(ours.train().parameters(), lr=1e-4)
        opt_hf = torch.optim.AdamW(hf.train().parameters(), lr=1e-4)
        train_step(ours, opt_ours, False), train_step(hf, opt_hf, True)  # warm-up
        t_ours, t_hf = _alternate(lambda: train_step(ours, opt_ours, False),
                                  lambda: train_step(hf, opt_hf, True), 3)
        print(f"training step, 2 threads, {BATCH}x{CONTEXT}: ours {t_ours * 1000:.0f} ms, "
              f"transformers {t_hf * 1000:.0f} ms, ratio {t_hf / t_ours:.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
