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
        rope_parameters=draw(st.one_of(
            st.builds(dict, rope_type=st.just("default"), rope_theta=st.sampled_from([1e2, 1e4])),
            # YaRN as DeepSeek-V3 publishes it: mscale and mscale_all_dim, over a short context
            st.builds(dict, rope_type=st.just("yarn"), rope_theta=st.sampled_from([1e2, 1e4]),
                      factor=st.sampled_from([2.0, 4.0, 40.0]),
                      original_max_position_embeddings=st.sampled_from([4, 8]),
                      beta_fast=st.sampled_from([4.0, 32.0]), beta_slow=st.just(1.0),
                      mscale=st.sampled_from([0.707, 1.0]),
                      mscale_all_dim=st.sampled_from([0.0, 0.707, 1.0])))),
        rope_interleave=draw(st.booleans()),
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


# The published config.json of deepseek-ai/DeepSeek-V3 (its sizes and RoPE settings).
PUBLISHED = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
    "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc",
    "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
    "norm_topk_prob": True, "hidden_act": "silu", "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                     "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "attention_bias": False, "attention_dropout": 0.0}


def test_the_published_configuration_builds_with_yarn_and_has_671b_parameters_37b_active():
    import math

    from gpt_components.modern import DecoderModel, active_parameters
    from gpt_components.modern.deepseek_v3 import config_from_hf

    cfg = config_from_hf(PUBLISHED)
    assert cfg == DeepseekV3Config.from_name("deepseek-v3")
    with torch.device("meta"):
        model = DecoderModel(cfg)
    # 671B in all (the 14B multi-token-prediction module of the checkpoint left out), 37B run
    # per token: the dense layers, attention, 1 shared and 8 of the 256 routed experts.
    assert sum(p.numel() for p in model.parameters()) == 671_026_404_352
    assert active_parameters(model) == 37_552_282_624
    # YaRN's magnitude correction: 1 on cos and sin (mscale = mscale_all_dim), its square on
    # every score through the softmax scale, as transformers' yarn_apply_mscale does.
    assert model.rope["default"].attention_factor == 1.0
    expected = 192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2
    assert model.trf_blocks[0].att.scale == pytest.approx(expected, rel=1e-15)
    from transformers.modeling_rope_utils import yarn_apply_mscale

    assert expected == pytest.approx(yarn_apply_mscale(
        {"rope_type": "yarn", "factor": 40, "mscale_all_dim": 1.0}, 192 ** -0.5), rel=1e-15)
