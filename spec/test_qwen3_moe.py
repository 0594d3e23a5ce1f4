"""Qwen3-MoE against ``transformers``' ``Qwen3MoeForCausalLM`` on drawn small configurations.

Drawn: the number of experts and of experts per token, renormalised gates or not, which layers
are sparse (``decoder_sparse_step``, ``mlp_only_layers``). Every weight is random; the reference
runs with eager experts in float64 under ``Float64Mode``, and stock ``transformers`` is checked
against it at a float32 bound.
"""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import save_pretrained
from gpt_components.generation import generate
from gpt_components.modern import (
    DecoderModel,
    MoEFeedForward,
    Qwen3MoeConfig,
    active_parameters,
)
from gpt_components.training import calc_loss_batch
from spec.helpers.hf_exact import Float64Mode
from spec.helpers.hf_random import ours_from, random_hf_model
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.modern

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def hf_qwen3_moe_configs(draw):
    n_kv = draw(st.sampled_from([1, 2]))
    n_layers = draw(st.integers(2, 3))
    n_experts = draw(st.integers(2, 5))
    return transformers.Qwen3MoeConfig(
        vocab_size=draw(st.integers(40, 90)), hidden_size=draw(st.sampled_from([16, 24])),
        intermediate_size=draw(st.sampled_from([20, 32])),
        moe_intermediate_size=draw(st.sampled_from([6, 12])), num_hidden_layers=n_layers,
        num_attention_heads=n_kv * draw(st.sampled_from([1, 2])), num_key_value_heads=n_kv,
        head_dim=draw(st.sampled_from([4, 8])), max_position_embeddings=32,
        num_experts=n_experts, num_experts_per_tok=draw(st.integers(1, n_experts)),
        norm_topk_prob=draw(st.booleans()), decoder_sparse_step=draw(st.integers(1, 2)),
        mlp_only_layers=draw(st.lists(st.integers(0, n_layers - 1), max_size=1, unique=True)),
        router_aux_loss_coef=draw(st.sampled_from([0.001, 0.5])),
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
        rope_parameters={"rope_type": "default", "rope_theta": draw(st.sampled_from([1e4, 1e6]))},
        tie_word_embeddings=draw(st.booleans()), pad_token_id=0, bos_token_id=1, eos_token_id=None)


def exact(hf_model, ids, **kwargs):
    with Float64Mode(), torch.no_grad():
        return hf_model(ids, **kwargs)


@settings(max_examples=4)
@given(hf_qwen3_moe_configs(), seeds, st.integers(1, 10))
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 t):
    hf_model = random_hf_model(transformers.Qwen3MoeForCausalLM, config, seed)
    ids = torch.randint(0, config.vocab_size, (2, t), generator=generator(seed))
    model = ours_from(hf_model)
    sparse = [isinstance(block.ff, MoEFeedForward) for block in model.trf_blocks]
    assert sparse == [type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock"
                      for layer in hf_model.model.layers]
    expected = exact(hf_model, ids).logits
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, **EXACT)
        stock = hf_model(ids).logits
    torch.testing.assert_close(stock, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=F64, attn_implementation="eager", experts_implementation="eager")
        assert type(back).__name__ == "Qwen3MoeForCausalLM"
        with Float64Mode():
            back.model.rotary_emb.__init__(back.config)  # float64 frequencies, as above
        torch.testing.assert_close(exact(back.eval(), ids).logits, expected, **EXACT)


@settings(max_examples=4)
@given(hf_qwen3_moe_configs(), seeds, st.integers(2, 10))
def test_training_adds_transformers_load_balancing_loss_and_evaluation_does_not(config, seed,
                                                                               t):
    hf_model = random_hf_model(transformers.Qwen3MoeForCausalLM, config, seed)
    model = ours_from(hf_model)
    g = generator(seed)
    x = torch.randint(0, config.vocab_size, (2, t), generator=g)
    y = torch.randint(0, config.vocab_size, (2, t), generator=g)
    sparse = any(isinstance(block.ff, MoEFeedForward) for block in model.trf_blocks)
    out = exact(hf_model, x, output_router_logits=sparse)  # (it fails with no router at all)
    cross_entropy = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    model.train()
    expected = cross_entropy + config.router_aux_loss_coef * out.aux_loss if sparse \
        else cross_entropy
    torch.testing.assert_close(calc_loss_batch(x, y, model, "cpu"), expected, **EXACT)
    model.eval()
    torch.testing.assert_close(calc_loss_batch(x, y, model, "cpu"), cross_entropy, **EXACT)


@settings(max_examples=3)
@given(hf_qwen3_moe_configs(), seeds, st.integers(1, 4))
def test_cached_generation_equals_uncached_and_transformers(config, seed, prompt_len):
    hf_model = random_hf_model(transformers.Qwen3MoeForCausalLM, config, seed)
    model = ours_from(hf_model)
    prompt = torch.randint(3, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=8)
    with Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                   attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, generate(model, prompt, max_new_tokens=8, use_cache=False))
    assert torch.equal(cached, theirs)


def test_qwen3_30b_a3b_has_its_published_parameter_counts():
    cfg = Qwen3MoeConfig.from_name("qwen3-30b-a3b")
    assert cfg.n_layers == 48 and all(cfg.is_sparse(i) for i in range(48))
    # Its 48 blocks are alike: count one on the meta device (18,000 experts take minutes to
    # build even there) and add 47 more of the same.
    with torch.device("meta"):
        model = DecoderModel(dataclasses.replace(cfg, n_layers=1))
    block = sum(p.numel() for p in model.trf_blocks[0].parameters())
    one_expert = 3 * 2048 * 768  # fc1, fc2, fc3
    assert sum(p.numel() for p in model.parameters()) + 47 * block == 30_532_122_624
    # 3.3B active: 8 of the 128 experts of each layer run for a token.
    active = active_parameters(model) + 47 * (block - 120 * one_expert)
    assert active == 30_532_122_624 - 48 * (128 - 8) * one_expert == 3_353_032_704


def test_sparse_layers_follow_the_step_and_the_dense_list():
    cfg = Qwen3MoeConfig.from_name("qwen3-moe-nano", n_layers=6, decoder_sparse_step=2,
                                   mlp_only_layers=(3,))
    assert [cfg.is_sparse(i) for i in range(6)] == [False, True, False, False, False, True]
    with pytest.raises(ValueError, match=r"n_experts_per_token must be an int in \[1, 8\], got 9"):
        Qwen3MoeConfig.from_name("qwen3-moe-nano", n_experts_per_token=9)
