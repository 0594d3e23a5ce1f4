"""Draw the pictures of the newest models' guides (docs/gpt-oss.md, docs/olmo3-gemma4.md).

- ``gpt-oss-sinks.png``: what a sink takes. Left, the share of a query's attention its head's
  sink takes as the query sees more tokens, for several sink logits (every score 0, so the
  share is ``e^s / (T + e^s)``), computed by ``sink_attention_weights`` and checked against that
  formula; right, one banded GPT-OSS layer of ``gpt-oss-nano`` (random weights, sink logits
  set to 1.5) as ``inspect`` sees it: each row sums to one less the sink's share, drawn as an
  extra column.
- ``gemma4-shared-caches.png``: Gemma 4 E2B's 35 layers, windowed or full, and which earlier
  layer's cache each of the last 20 reads (``Gemma4Config.kv_sources``).

Run from anywhere: ``python docs/make_newest_pictures.py`` (writes next to itself).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gpt_components.machinery.registry import build_model, preset_config  # noqa: E402
from gpt_components.newest import sink_attention_weights  # noqa: E402

HERE = Path(__file__).resolve().parent


def sink_shares(sink: float, lengths: list[int]) -> list[float]:
    """The sink's share for a query that sees ``t`` keys, every score 0 (float64)."""
    shares = []
    for t in lengths:
        weights = sink_attention_weights(torch.zeros(1, 1, 1, t, dtype=torch.float64),
                                         torch.tensor([sink], dtype=torch.float64))
        share = 1 - float(weights.sum())
        assert math.isclose(share, math.exp(sink) / (t + math.exp(sink)), rel_tol=1e-12)
        shares.append(share)
    return shares


def draw_sinks(path: Path) -> Path:
    lengths = list(range(1, 129))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2),
                                      gridspec_kw={"width_ratios": [1.2, 1]})
    for sink in (-2.0, 0.0, 2.0, 4.0):
        left.plot(lengths, sink_shares(sink, lengths), label=f"sink logit {sink:g}")
    left.set_xscale("log", base=2)
    left.set_xlabel("tokens the query sees")
    left.set_ylabel("share of attention the sink takes")
    left.set_title("A sink matters most when there is little to look at")
    left.legend(fontsize=8)
    left.grid(True, alpha=0.3)

    torch.manual_seed(0)
    model = build_model(preset_config("gpt-oss-nano", vocab_size=256)).eval()
    with torch.no_grad():
        for block in model.trf_blocks:
            block.att.sinks.fill_(1.5)
    trace = model.trace(torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1)))
    weights = trace.attentions[0][0, 0]  # layer 0 (banded), head 0: (T, T)
    shown = torch.cat([weights, (1 - weights.sum(-1, keepdim=True))], dim=-1)
    image = right.imshow(shown.numpy(), cmap="Blues", vmin=0, vmax=1)
    right.axvline(weights.shape[1] - 0.5, color="#dc2626", linewidth=1.5)
    right.set_xlabel("keys (last column: the sink)")
    right.set_ylabel("queries")
    right.set_title("gpt-oss-nano, layer 0 (banded), head 0")
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_shared_caches(path: Path) -> Path:
    cfg = preset_config("gemma4-e2b")
    sources = cfg.kv_sources()
    fig, ax = plt.subplots(figsize=(12, 2.8))
    for index, kind in enumerate(cfg.layer_types):
        own = sources[index] == index
        colour = "#4C72B0" if kind == "sliding_attention" else "#DD8452"
        ax.add_patch(plt.Rectangle((index, 0), 0.9, 1, facecolor=colour if own else "white",
                                   edgecolor=colour, linewidth=1.5))
        if not own:  # an arc from the layer it reads
            src = sources[index]
            ax.annotate("", xy=(index + 0.45, 1.0), xytext=(src + 0.45, 1.0),
                        arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.5,
                                    "connectionstyle": "arc3,rad=-0.25"})
    ax.set_xlim(-0.5, len(sources) + 0.5)
    ax.set_ylim(-0.6, 6.5)
    ax.set_yticks([])
    ax.set_xticks(range(0, len(sources), 5))
    ax.set_xlabel("layer")
    ax.text(0, -0.5, "filled: a layer with its own cache (blue windowed, orange full); "
            "hollow: reads the cache the arrow comes from", fontsize=9)
    ax.set_title(f"Gemma 4 E2B: {len(sources)} layers, "
                 f"{sum(s != i for i, s in enumerate(sources))} of them with no cache of "
                 "their own")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(draw_sinks(HERE / "gpt-oss-sinks.png"))
    print(draw_shared_caches(HERE / "gemma4-shared-caches.png"))
