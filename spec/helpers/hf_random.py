"""``transformers`` models with every weight drawn at random, and ours read from them.

``random_hf_model`` builds a float64 model of a ``transformers`` class under ``Float64Mode`` (its
RoPE frequencies are then float64 too), with eager attention and experts, and draws every
parameter and float buffer (norm weights, routing biases) from a seeded generator;
``ours_from`` saves it in Hugging Face's layout and reads it back with ``from_pretrained``.
"""

from __future__ import annotations

import tempfile

import torch

from gpt_components import from_pretrained
from spec.helpers.hf_exact import Float64Mode
from spec.strategies import generator


def random_hf_model(model_class, config, seed: int, std: float = 0.4):
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"  # the grouped kernels refuse float64
    with Float64Mode():
        model = model_class(config).to(torch.float64)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=b.dtype) * std)
    return model.eval()


def ours_from(hf_model):
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        return from_pretrained(directory)
