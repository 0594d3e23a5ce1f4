"""Hypothesis strategies shared by the spec files."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**32 - 1)


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: properties never touch torch's global RNG."""
    return torch.Generator().manual_seed(seed)
