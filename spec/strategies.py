"""Hypothesis strategies shared by the spec files."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: properties never touch torch's global RNG."""
    return torch.Generator().manual_seed(seed)


@st.composite
def tiny_gpt_configs(draw, **fixed):
    """Small ``GPTConfig``s (emb 8-32, 1-2 layers, vocab 50-100) that run in milliseconds.

    Keyword arguments pin fields (``drop_rate`` defaults to 0 so train and eval agree).
    """
    from gpt_components.model import GPTConfig

    n_heads = draw(st.sampled_from([1, 2, 4]))
    fields = {
        "vocab_size": draw(st.integers(50, 100)),
        "context_length": draw(st.integers(4, 16)),
        "emb_dim": n_heads * draw(st.sampled_from([2, 4, 8])),
        "n_heads": n_heads,
        "n_layers": draw(st.integers(1, 2)),
        "drop_rate": 0.0,
        "qkv_bias": draw(st.booleans()),
        "tie_weights": draw(st.booleans()),
        "attn_kernel": draw(st.sampled_from(["sdpa", "textbook"])),
        "layer_kernel": draw(st.sampled_from(["fused", "textbook"])),
    }
    fields.update(fixed)
    return GPTConfig(**fields)


def random_gpt_model(cfg, seed: int, dtype: torch.dtype = torch.float64, std: float = 0.3):
    """A ``GPTModel`` in eval mode whose every parameter is drawn from ``generator(seed)``.

    Layer-norm scales are drawn around 1, everything else around 0, so every weight, bias and
    norm parameter matters (default inits leave biases at zero and would hide mapping errors).
    """
    from gpt_components.model import GPTModel

    model = GPTModel(cfg).to(dtype)
    g = generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=dtype) * std
            p.copy_(noise + 1 if name.endswith(".scale") else noise)
    return model.eval()


def layouts(model) -> dict[str, tuple[int, ...]]:
    """Each weight matrix's strides, by name."""
    return {name: p.stride() for name, p in model.named_parameters() if p.dim() == 2}


def decoding_layout(model) -> dict[str, tuple[int, ...]]:
    """The strides eval mode promises (GPTModel, DecoderModel): the blocks' widening weights
    [out, in] column-major, every other matrix (narrowing ones, embeddings, head) row-major."""
    expected = {name: (p.shape[1], 1) for name, p in model.named_parameters() if p.dim() == 2}
    for name, module in model.trf_blocks.named_modules():
        if isinstance(module, torch.nn.Linear) and module.out_features >= module.in_features:
            expected[f"trf_blocks.{name}.weight"] = (1, module.out_features)
    return expected
