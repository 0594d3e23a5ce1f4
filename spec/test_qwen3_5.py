"""The Qwen3.5 text model against ``transformers``' ``Qwen3_5ForCausalLM`` (``qwen3_5_text``).

The sizes are drawn as for Qwen3-Next (``spec/test_qwen3_next.py``: layer patterns with both
kinds, partial rotary factors, the DeltaNet's heads and sizes, tied or untied), without
experts; every weight random, float64 under ``Float64Mode``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.modern import DecoderModel
from gpt_components.newest import Qwen35Config
from spec.strategies import seeds
from spec.test_qwen3_next import (
    equals_transformers_both_ways,
    generates_as_transformers,
    hybrid_sizes,
)

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.newest


@st.composite
def hf_qwen3_5_configs(draw):
    sizes = draw(hybrid_sizes())
    # Text positions make the multimodal RoPE sections one table; any sections will do.
    sizes["rope_parameters"]["mrope_section"] = [1, 1, 0]
    return transformers.Qwen3_5TextConfig(**sizes)


@settings(deadline=None, max_examples=1)
@given(hf_qwen3_5_configs(), seeds, st.integers(1, 8))
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 t):
    equals_transformers_both_ways(transformers.Qwen3_5ForCausalLM, config, seed, t)


@pytest.mark.slow
@settings(deadline=None, max_examples=1)
@given(hf_qwen3_5_configs(), seeds, st.integers(1, 4))
def test_cached_generation_equals_uncached_and_transformers(config, seed, prompt_len):
    generates_as_transformers(transformers.Qwen3_5ForCausalLM, config, seed, prompt_len)


def test_the_qwen3_5_9b_text_model_has_transformers_parameter_count():
    # transformers' Qwen3_5TextConfig defaults, which its docstring calls "Qwen3.5-9B style":
    # 8.95B in the text model (the published 9B counts the vision encoder too).
    cfg = Qwen35Config.from_name("qwen3.5-9b")
    with torch.device("meta"):
        ours = DecoderModel(cfg)
        theirs = transformers.Qwen3_5ForCausalLM(transformers.Qwen3_5TextConfig())
    total = sum(p.numel() for p in ours.parameters())
    assert total == sum(p.numel() for p in theirs.parameters()) == 8_953_803_264
    assert not any(block.ff.__class__.__name__ != "SwiGLU" for block in ours.trf_blocks)
