"""KV-cache memory of multi-head, grouped-query, latent and sliding-window attention.

``cache_bytes(kind, sizes, tokens)`` is the formula (bf16, batch 1):

- multi-head / grouped-query: ``2 * layers * kv_heads * head_dim`` per token;
- latent (MLA): ``layers * (kv_lora_rank + qk_rope_head_dim)`` per token;
- sliding window: the global layers as GQA, the local ones capped at ``window`` positions;
- hybrid (Qwen3-Next, Qwen3.5): the ``full`` attention layers as GQA, and each Gated DeltaNet
  layer's state ``value_heads * head_k_dim * head_v_dim`` plus its convolution's last
  ``conv_kernel - 1`` inputs of ``conv_dim``, whatever the length;
- layer by layer (GPT-OSS, OLMo 3, Gemma 4): each full layer ``2 * kv_heads * head_dim`` per
  token, each windowed one capped at its window, and a Gemma 4 layer that reads an earlier
  layer's cache nothing.

``test_small_presets_hold_what_the_formula_says`` builds the real caches of the small presets
(``llama3-nano``, ``gemma3-nano``, ``deepseek-v3-nano``, ``qwen3-next-nano``,
``qwen3.5-nano``, ``gpt-oss-nano``, ``olmo3-nano``, ``gemma4-nano``) and counts their
buffers' bytes against it. ``python -m benchmarks.test_kv_memory`` draws
``benchmarks/kv_cache_memory.png`` for the published sizes and prints the table recorded in
``benchmarks/README.md``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt_components.machinery.registry import build_model, preset_config

BF16 = 2
# Published sizes: what each model's cache is made of.
PUBLISHED = {
    "Llama 2 7B (MHA)": {"kind": "gqa", "layers": 32, "kv_heads": 32, "head_dim": 128},
    "Llama 3.1 8B (GQA, 8 kv heads)": {"kind": "gqa", "layers": 32, "kv_heads": 8,
                                       "head_dim": 128},
    "Qwen3-30B-A3B (GQA, 4 kv heads)": {"kind": "gqa", "layers": 48, "kv_heads": 4,
                                        "head_dim": 128},
    "Gemma 3 1B (1 kv head, 5:1 window 512)": {"kind": "window", "layers": 26, "kv_heads": 1,
                                               "head_dim": 256, "window": 512, "pattern": 6},
    "DeepSeek-V3 671B (MLA)": {"kind": "mla", "layers": 61, "kv_lora_rank": 512,
                               "qk_rope_head_dim": 64},
    "Qwen3-Next-80B-A3B (12 of 48 layers full, 2 kv heads)": {
        "kind": "hybrid", "layers": 48, "full": 12, "kv_heads": 2, "head_dim": 256,
        "value_heads": 32, "head_k_dim": 128, "head_v_dim": 128, "conv_dim": 8192,
        "conv_kernel": 4},
    "Qwen3.5-9B text (8 of 32 layers full, 4 kv heads)": {
        "kind": "hybrid", "layers": 32, "full": 8, "kv_heads": 4, "head_dim": 256,
        "value_heads": 32, "head_k_dim": 128, "head_v_dim": 128, "conv_dim": 8192,
        "conv_kernel": 4},
    # Built from the presets (each pinned to its published parameter count in the spec).
    "GPT-OSS-120B (8 kv heads; 18 of 36 layers banded at 128)": "gpt-oss-120b",
    "OLMo 3 7B (32 kv heads; 24 of 32 layers windowed at 4,096)": "olmo3-7b",
    "Gemma 4 E2B (1 kv head; 28 of 35 windowed at 512; the last 20 share earlier caches)":
        "gemma4-e2b",
}


def cache_bytes(sizes: dict, tokens: int, bytes_per: int = BF16) -> int:
    """The KV-cache bytes of one sequence of ``tokens`` positions."""
    if sizes["kind"] == "layers":  # layer by layer: full, windowed, or sharing another's
        held = 0
        for layer in sizes["layers"]:
            if layer[0] == "full":
                held += layer[1] * tokens
            elif layer[0] == "window":
                held += layer[1] * min(tokens, layer[2])
        return held * bytes_per
    if sizes["kind"] == "mla":
        return sizes["layers"] * (sizes["kv_lora_rank"] + sizes["qk_rope_head_dim"]) * tokens \
            * bytes_per
    per_position = 2 * sizes["kv_heads"] * sizes["head_dim"] * bytes_per
    if sizes["kind"] == "hybrid":  # the linear layers' states do not grow with the text
        state = sizes["value_heads"] * sizes["head_k_dim"] * sizes["head_v_dim"] \
            + sizes["conv_dim"] * (sizes["conv_kernel"] - 1)
        return sizes["full"] * per_position * tokens \
            + (sizes["layers"] - sizes["full"]) * state * bytes_per
    if sizes["kind"] == "gqa":
        return sizes["layers"] * per_position * tokens
    n_global = sizes["layers"] // sizes["pattern"]
    n_local = sizes["layers"] - n_global
    return (n_global * tokens + n_local * min(tokens, sizes["window"])) * per_position


def _sizes_of(cfg) -> dict:
    """The formula's sizes for one of our configs."""
    if cfg.family == "deepseek_v3":
        return {"kind": "mla", "layers": cfg.n_layers, "kv_lora_rank": cfg.kv_lora_rank,
                "qk_rope_head_dim": cfg.qk_rope_head_dim}
    if cfg.family in ("qwen3_next", "qwen3_5_text"):
        full = sum(cfg.layer_kind(i) == "full_attention" for i in range(cfg.n_layers))
        return {"kind": "hybrid", "layers": cfg.n_layers, "full": full,
                "kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim,
                "value_heads": cfg.linear_value_heads, "head_k_dim": cfg.linear_key_head_dim,
                "head_v_dim": cfg.linear_value_head_dim,
                "conv_dim": 2 * cfg.linear_key_heads * cfg.linear_key_head_dim
                + cfg.linear_value_heads * cfg.linear_value_head_dim,
                "conv_kernel": cfg.linear_conv_kernel}
    if cfg.family == "gemma3":
        return {"kind": "window", "layers": cfg.n_layers, "kv_heads": cfg.n_kv_heads,
                "head_dim": cfg.head_dim, "window": cfg.sliding_window, "pattern": 6}
    if cfg.family in ("gpt_oss", "olmo3", "gemma4_text"):
        return {"kind": "layers", "layers": _layers_of(cfg)}
    return {"kind": "gqa", "layers": cfg.n_layers, "kv_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim}


def _layers_of(cfg) -> list[tuple]:
    """Each layer's cache: ``("full", numbers per position)``, ``("window", numbers per
    position, window)``, or ``("shared",)`` for a Gemma 4 layer that reads an earlier one's."""
    sources = cfg.kv_sources() if cfg.family == "gemma4_text" else range(cfg.n_layers)
    layers = []
    for index, source in enumerate(sources):
        if source != index:
            layers.append(("shared",))
            continue
        sliding = cfg.layer_types[index] == "sliding_attention"
        if cfg.family == "gemma4_text":
            kv_heads, head_dim = cfg.attention_shape(index)
        else:
            kv_heads, head_dim = cfg.n_kv_heads, cfg.head_dim
        numbers = 2 * kv_heads * head_dim
        layers.append(("window", numbers, cfg.sliding_window) if sliding else ("full", numbers))
    return layers


PUBLISHED = {label: _sizes_of(preset_config(sizes)) if isinstance(sizes, str) else sizes
             for label, sizes in PUBLISHED.items()}


@pytest.mark.parametrize("preset", ["llama3-nano", "gemma3-nano", "deepseek-v3-nano",
                                    "qwen3-next-nano", "qwen3.5-nano", "gpt-oss-nano",
                                    "olmo3-nano", "gemma4-nano"])
def test_small_presets_hold_what_the_formula_says(preset):
    cfg = preset_config(preset, vocab_size=100)
    model = build_model(cfg).to(torch.bfloat16)  # the family's model (Gemma 4's shares)
    for tokens in (1, 8, cfg.context_length):
        cache = model.new_kv_cache(1, tokens)
        held = sum(b.numel() * b.element_size() for b in cache.buffers())
        # (Gemma's ring buffers hold min(tokens, window) positions, as the formula says.)
        assert held == cache_bytes(_sizes_of(cfg), tokens), (preset, tokens)


PICTURE = Path(__file__).with_name("kv_cache_memory.png")


def draw(path: Path = PICTURE) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [2**k for k in range(8, 18)]  # 256 .. 131,072
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for label, sizes in PUBLISHED.items():
        ax.plot(lengths, [cache_bytes(sizes, t) / 2**30 for t in lengths], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("KV cache per sequence (GiB, bf16)")
    ax.set_title("KV-cache memory: multi-head, grouped-query, windowed, latent, hybrid, shared")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    print(f"wrote {draw()}")
    print("| model | KiB per token at 4K | GiB at 4,096 | GiB at 32,768 | GiB at 131,072 |")
    print("|---|---:|---:|---:|---:|")
    for label, sizes in PUBLISHED.items():
        gib = [cache_bytes(sizes, t) / 2**30 for t in (4096, 32768, 131072)]
        print(f"| {label} | {cache_bytes(sizes, 4096) / 4096 / 1024:.1f} | {gib[0]:.2f} | "
              f"{gib[1]:.2f} | {gib[2]:.2f} |")


if __name__ == "__main__":
    main()
