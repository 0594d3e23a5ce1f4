"""Draw ``serving-block-tables.png`` for docs/serving.md: three sequences' block tables over
one pool of pages, two of them sharing a cached prefix.

The state drawn is the real allocator's (``BlockPool``, ``block_hashes``), set up as the
engine would: A's prompt fills blocks, which are cached as they fill; B's prompt begins with
the same 8 tokens, so its table starts with A's two blocks (reference count 2); C shares
nothing. Run from anywhere: ``python docs/make_serving_pictures.py`` (writes next to itself).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

from gpt_components.serving.paged_cache import BlockPool, block_hashes  # noqa: E402

BLOCK_SIZE, NUM_BLOCKS = 4, 12
COLOURS = {"A": "#4C72B0", "B": "#DD8452", "C": "#55A868"}


def build() -> tuple[BlockPool, dict[str, tuple[list[int], int]]]:
    """The pool and each sequence's (block table, tokens held)."""
    pool = BlockPool(NUM_BLOCKS, BLOCK_SIZE)
    system = [11, 12, 13, 14, 15, 16, 17, 18]  # a shared system prompt: two full blocks
    prompts = {"A": system + [21, 22, 23], "C": [31, 32, 33, 34, 35], "B": system + [41]}
    tables: dict[str, tuple[list[int], int]] = {}
    for name, prompt in prompts.items():
        keys = block_hashes(prompt[:-1], BLOCK_SIZE)
        table = [b for b in (pool.take_cached(k) for k in keys) if b is not None]
        table += [pool.allocate() for _ in range(-(-len(prompt) // BLOCK_SIZE) - len(table))]
        for index, key in enumerate(block_hashes(prompt, BLOCK_SIZE)):
            pool.register(table[index], key)  # full blocks go to the prefix cache
        tables[name] = (table, len(prompt))
    return pool, tables


def draw(path: Path) -> None:
    pool, tables = build()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.set_xlim(-0.5, 13)
    ax.set_ylim(-0.8, 4.6)
    ax.axis("off")
    # The pool: one square per block, coloured by its holders.
    holders = {b: [n for n, (t, _) in tables.items() if b in t] for b in range(NUM_BLOCKS)}
    for b in range(NUM_BLOCKS):
        x, y = 1 + b, 0
        names = holders[b]
        colour = COLOURS[names[0]] if names else "#EEEEEE"
        ax.add_patch(Rectangle((x, y), 0.9, 0.9, facecolor=colour, edgecolor="black",
                               hatch="//" if len(names) > 1 else None, alpha=0.9))
        ax.text(x + 0.45, y + 0.45, str(b), ha="center", va="center", fontsize=10)
        ax.text(x + 0.45, y - 0.35, f"ref {pool.ref_counts[b]}", ha="center", fontsize=7)
    ax.text(0.85, 0.45, "pool", ha="right", va="center", fontsize=10)
    # Each sequence's block table, its slots filled up to its length, arrows to the pool.
    for row, (name, (table, held)) in enumerate(tables.items()):
        y = 3.6 - row * 1.1
        ax.text(0.85, y + 0.3, f"{name}: {held} tokens", ha="right", va="center", fontsize=9)
        for slot, block in enumerate(table):
            x = 1 + slot * 1.2
            filled = min(BLOCK_SIZE, held - slot * BLOCK_SIZE)
            for p in range(BLOCK_SIZE):
                ax.add_patch(Rectangle((x + p * 0.25, y), 0.23, 0.6, edgecolor="black",
                                       facecolor=COLOURS[name] if p < filled else "white"))
            ax.text(x + 0.5, y + 0.75, f"-> {block}", ha="center", fontsize=8)
            ax.add_patch(FancyArrowPatch((x + 0.5, y), (1.45 + block, 0.95),
                                         arrowstyle="-|>", mutation_scale=8, color="grey",
                                         alpha=0.5))
    ax.set_title("Block tables over one pool of pages (block_size 4): B reuses A's cached "
                 "prefix", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    draw(Path(__file__).resolve().parent / "serving-block-tables.png")
