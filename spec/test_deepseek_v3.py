"""DeepSeek-V3 against ``transformers``' ``DeepseekV3ForCausalLM`` on drawn small configurations.

Drawn: the latent sizes (with and without the query bottleneck), the routed and shared experts,
group-limited routing, the scaling factor and how many first layers stay dense. Every weight is
random, the routers' selection biases too; the reference runs under ``Float64Mode`` (whose
widening covers the router's ``.type(torch.float32)``), checked against stock at a float32 bound.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from gpt_components import save_pretrained
from gpt_components.generation import generate
from gpt_components.modern import DeepseekV3Config, LatentKVCache, MoEFeedForward
from spec.helpers.hf_exact import Float64Mode
from spec.helpers.hf_random import ours_from, random_hf_model
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.modern

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def hf_deepseek_v3_configs(draw):
    n_layers = draw(st.integers(2, 3))
    n_group = draw(st.sampled_from([1, 2]))
    n_experts = n_group * draw(st.integers(2, 3))
    topk_group = draw(st.integers(1, n_group))
    n_heads = draw(st.integers(1, 3))
    return transformers.DeepseekV3Config(
        vocab_size=draw(st.integers(40, 90)), hidden_size=draw(st.sampled_from([16, 24])),
        intermediate_size=draw(st.sampled_from([20, 32])),
        moe_intermediate_size=draw(st.sampled_from([6, 12])), num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_heads,
        q_lora_rank=draw(st.sampled_from([None, 8])), kv_lora_rank=draw(st.sampled_from([4, 6])),
        qk_nope_head_dim=draw(st.sampled_from([2, 4])),
        qk_rope_head_dim=draw(st.sampled_from([2, 4])), v_head_dim=draw(st.sampled_from([3, 4])),
        n_routed_experts=n_experts, n_shared_experts=draw(st.integers(1, 2)),
        num_experts_per_tok=draw(st.integers(1, topk_group * n_experts // n_group)),
        n_group=n_group, topk_group=topk_group,
        routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])),
        norm_topk_prob=draw(st.booleans()),
        first_k_dense_replace=draw(st.integers(0, n_layers - 1)), max_position_embeddings=32,
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
        rope_parameters={"rope_type": "default", "rope_theta": draw(st.sampled_from([1e2, 1e4]))},
        attention_bias=draw(st.booleans()),
        tie_word_embeddings=draw(st.booleans()), pad_token_id=0, bos_token_id=1, eos_token_id=None)


@settings(max_examples=4)
@given(hf_deepseek_v3_configs(), seeds, st.integers(1, 10))
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 t):
    hf_model = random_hf_model(transformers.DeepseekV3ForCausalLM, config, seed)
    ids = torch.randint(0, config.vocab_size, (2, t), generator=generator(seed))
    model = ours_from(hf_model)
    assert [isinstance(block.ff, MoEFeedForward) for block in model.trf_blocks] == \
        [i >= config.first_k_dense_replace for i in range(config.num_hidden_layers)]
    with Float64Mode(), torch.no_grad():
        expected = hf_model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, **EXACT)
        stock = hf_model(ids).logits
    torch.testing.assert_close(stock, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=F64, attn_implementation="eager", experts_implementation="eager")
        assert type(back).__name__ == "DeepseekV3ForCausalLM"
        # transformers keeps the routers in float32 when it loads: compare the saved tensors
        # themselves, and its logits at a float32 bound.
        saved = load_file(f"{directory}/model.safetensors")
        with tempfile.TemporaryDirectory() as theirs:
            hf_model.save_pretrained(theirs)
            reference = load_file(f"{theirs}/model.safetensors")
        assert sorted(saved) == sorted(reference)
        for name, tensor in saved.items():
            assert torch.equal(tensor, reference[name]), name
        with torch.no_grad():
            torch.testing.assert_close(back.eval()(ids).logits.to(F64), expected, rtol=1e-4,
                                       atol=1e-4 * expected.abs().max())


@settings(max_examples=3)
@given(hf_deepseek_v3_configs(), seeds, st.integers(1, 4))
def test_cached_generation_equals_uncached_and_transformers(config, seed, prompt_len):
    hf_model = random_hf_model(transformers.DeepseekV3ForCausalLM, config, seed)
    model = ours_from(hf_model)
    prompt = torch.randint(3, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=8)
    with Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                   attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, generate(model, prompt, max_new_tokens=8, use_cache=False))
    assert torch.equal(cached, theirs)


def test_the_cache_holds_latents_and_rope_keys_only():
    from gpt_components.modern import DecoderModel

    cfg = DeepseekV3Config.from_name("deepseek-v3-nano")
    cache = DecoderModel(cfg).new_kv_cache(2, 10)
    assert all(isinstance(layer, LatentKVCache) for layer in cache.layers)
    per_token = cfg.kv_lora_rank + cfg.qk_rope_head_dim  # 20, where GQA-free MHA keeps 4 * 16
    assert cache.memory_bytes() == cfg.n_layers * 2 * 10 * per_token * 4
