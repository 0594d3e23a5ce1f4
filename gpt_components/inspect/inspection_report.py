"""Drawing an ``Inspection``: one self-contained HTML page, or PNG files for notes.

``render_html(inspection)`` returns a page that works offline, from a file, in any browser:
the data sit in the page as JSON, and inline JavaScript draws the tokens, a head view and a
model view of the attention (every layer x head as small canvases), the next-token
distribution, the surprisal over the text, the logit lens table and the stage sizes (inline
SVG). Clicking or hovering a token highlights what it attends to. Nothing is fetched: the page
holds no external URL. ``write_report`` saves it; ``write_pngs`` draws the main pictures with
matplotlib.

Why not bertviz: its head and model views are the field's reference pictures, and they accept
attention tensors like these, but ``head_view``/``model_view`` load require.js, d3 5.7 and
jQuery 2.0 from a CDN at view time (the addresses are written into its ``.js`` files), so an
offline page stays blank; making them inline would mean vendoring three libraries and patching
bertviz's loader, and it brings IPython, boto3, requests and sentencepiece as install
requirements. Its views also stand alone, with their own styling, rather than as parts of one
page that links a token to its losses and logit lens. Drawing a causal heatmap on a canvas is a
few lines, so the page does it itself (``assets/inspection_report.html``).

>>> import torch
>>> from gpt_components.inspect.inspection import inspect_prompt
>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.tokenizers import gpt2_tokenizer
>>> _ = torch.manual_seed(0)
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50257))
>>> page = render_html(inspect_prompt(model, gpt2_tokenizer(), "Every effort moves you"))
>>> page.startswith("<!DOCTYPE html>"), "http" in page
(True, False)
"""

from __future__ import annotations

import html
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..machinery.checks import check_instance, check_str
from .inspection import Inspection

__all__ = ["report_data", "render_html", "write_report", "write_pngs"]

_DIGITS = 5  # decimals kept in the page: enough for a picture, a tenth of the bytes of repr


def display_piece(piece: bytes) -> str:
    """A token's bytes as text; bytes that are not whole UTF-8 characters read as ``\\xNN``."""
    return piece.decode("utf-8", errors="backslashreplace")


def _rounded(values: torch.Tensor) -> Any:
    return torch.round(values.double(), decimals=_DIGITS).tolist()


def _candidates(ids: torch.Tensor, probs: torch.Tensor) -> Any:
    """[..., k] ids and probabilities as nested lists of ``{"id", "p"}``."""
    if ids.dim() == 1:
        return [{"id": i, "p": p} for i, p in zip(ids.tolist(), _rounded(probs), strict=True)]
    return [_candidates(i, p) for i, p in zip(ids, probs, strict=True)]


def report_data(inspection: Inspection) -> dict[str, Any]:
    """The page's data as JSON-ready lists and strings (what ``render_html`` embeds)."""
    check_instance("inspection", inspection, Inspection, "an Inspection (from inspect_prompt)")
    seen = inspection
    return {
        "text": seen.text,
        "summary": seen.model_summary,
        "tokens": [
            {"id": i, "piece": display_piece(piece), "hex": piece.hex(" "), "start": start,
             "end": end}
            for i, piece, (start, end) in zip(seen.token_ids, seen.pieces, seen.spans, strict=True)
        ],
        "attn": [_rounded(maps[:seen.heads_of(layer)])  # each layer its own heads
                 for layer, maps in enumerate(seen.attentions)],
        "top": _candidates(seen.top_ids, seen.top_probs),
        "surprisal": _rounded(seen.surprisal),
        "lens": _candidates(seen.lens_top_ids, seen.lens_top_probs),
        "lensTarget": _rounded(seen.lens_target_probs),
        "residualNorms": _rounded(seen.residual_norms),
        "updateNorms": _rounded(seen.update_norms),
        "finalNorms": _rounded(seen.final_norms),
        "vocab": {str(i): display_piece(piece) for i, piece in seen.vocab.items()},
    }


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no "</script>" or "<!--" can end it early."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_html(inspection: Inspection, title: str | None = None) -> str:
    """The report as one self-contained HTML page (see the module docstring)."""
    data = report_data(inspection)
    check_str("title", title, empty=True, optional=True)
    if title is None:
        title = f"Inside {inspection.model_summary.split(':')[0]}: {inspection.text[:60]!r}"
    template = (resources.files("gpt_components") / "assets" / "inspection_report.html"
                ).read_text(encoding="utf-8")
    page = template.replace("__TITLE__", html.escape(title))
    return page.replace("__DATA__", _script_json(data))


def write_report(inspection: Inspection, path: str | Path, title: str | None = None) -> Path:
    """Write ``render_html(inspection, title)`` to ``path`` (UTF-8) and return the path."""
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    page = render_html(inspection, title)  # every argument checked before anything is written
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _labels(inspection: Inspection) -> list[str]:
    return [f"{i}:{display_piece(p)!r}"[:18] for i, p in enumerate(inspection.pieces)]


def _attention_figure(inspection: Inspection) -> Any:
    from matplotlib.figure import Figure

    n_layers, n_heads, t = inspection.n_layers, inspection.n_heads, len(inspection.token_ids)
    size = 1.6 if t <= 16 else 2.2
    fig = Figure(figsize=(size * n_heads + 1, size * n_layers + 0.6))
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            if head >= inspection.heads_of(layer):  # a layer with fewer heads than the widest
                ax.axis("off")
                continue
            ax.imshow(inspection.attentions[layer, head].float().numpy(), cmap="Blues",
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    fig.suptitle("attention (rows: queries, columns: keys)", fontsize=10)
    return fig


def _surprisal_figure(inspection: Inspection) -> Any:
    from matplotlib.figure import Figure

    labels = _labels(inspection)[1:]
    fig = Figure(figsize=(max(4.0, 0.45 * len(labels) + 1.5), 3.2))
    ax = fig.subplots()
    ax.bar(range(len(labels)), inspection.surprisal.float().numpy(), color="#dc2626")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("surprisal (nats)")
    ax.set_title("loss of each token given the ones before it", fontsize=10)
    return fig


def _lens_figure(inspection: Inspection) -> Any:
    from matplotlib.figure import Figure

    probs = inspection.lens_top_probs[:, :, 0].float().numpy()  # (L + 1, T)
    ids = inspection.lens_top_ids[:, :, 0].tolist()
    n_rows, t = probs.shape
    fig = Figure(figsize=(max(4.0, 0.9 * t + 1.8), 0.42 * n_rows + 1.6))
    ax = fig.subplots()
    ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for row in range(n_rows):
        for col in range(t):
            text = display_piece(inspection.vocab[ids[row][col]])[:8]
            ax.text(col, row, text, ha="center", va="center", fontsize=7,
                    color="white" if probs[row, col] > 0.6 else "black")
    ax.set_xticks(range(t), _labels(inspection), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n_rows), ["embedding", *(f"block {b}" for b in range(n_rows - 1))],
                  fontsize=8)
    ax.set_title("logit lens: each layer's top next token (shade: its probability)", fontsize=10)
    return fig


def _sizes_figure(inspection: Inspection) -> Any:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    norms = inspection.residual_norms.float().numpy()  # (L + 1, T)
    left.plot(norms, color="#9ca3af", linewidth=1)
    left.plot(norms.mean(axis=1), color="#1d4ed8", linewidth=2.5, label="mean over tokens")
    left.set_xlabel("layer (0: the embedding)")
    left.set_ylabel("residual norm")
    left.legend(fontsize=8)
    right.plot(inspection.update_norms.float().numpy(), color="#9ca3af", linewidth=1)
    right.plot(inspection.update_norms.float().numpy().mean(axis=1), color="#1d4ed8",
               linewidth=2.5)
    right.set_xlabel("block")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_ylabel("norm of what the block adds")
    fig.suptitle("stage sizes (grey: one line per token)", fontsize=10)
    return fig


def write_pngs(inspection: Inspection, directory: str | Path) -> list[Path]:
    """Draw the attention grid, surprisal, logit lens and stage sizes as PNGs in ``directory``."""
    report_data(inspection)  # the same type check as the page
    check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    figures = {
        "attention.png": _attention_figure,
        "surprisal.png": _surprisal_figure,
        "logit_lens.png": _lens_figure,
        "stage_sizes.png": _sizes_figure,
    }
    written = []
    with warnings.catch_warnings():  # a character DejaVu Sans lacks is drawn as a box
        warnings.filterwarnings("ignore", message="Glyph .* missing from font",
                                category=UserWarning)
        for name, draw in figures.items():
            if name == "surprisal.png" and len(inspection.token_ids) < 2:
                continue  # one token has no loss to draw
            # A tight box, not a constrained layout: the same room for labels, half the time.
            draw(inspection).savefig(directory / name, dpi=110, bbox_inches="tight",
                                     pad_inches=0.1)
            written.append(directory / name)
    return written
