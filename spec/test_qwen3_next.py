"""Qwen3-Next against ``transformers``' ``Qwen3NextForCausalLM`` on drawn small configurations.

Drawn: layer patterns holding both kinds of layer, partial rotary factors, the DeltaNet's head
counts and sizes, expert counts and top-k, which layers are sparse, tied or untied heads.
Every weight is random; the reference runs in float64 under ``Float64Mode`` (its gated delta
rule and norms compute in float32 otherwise) with eager attention and experts. The default
tier runs one tiny example of each; ``-m slow`` runs more, the training loss and the published
parameter counts.
"""

from __future__ import annotations

import dataclasses
import tempfile

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import from_pretrained, save_pretrained
from gpt_components.generation import generate
from gpt_components.machinery.registry import FAMILIES, build_model, preset_config
from gpt_components.modern import DecoderModel, MoEFeedForward, active_parameters
from gpt_components.newest import GatedDeltaNet, Qwen3NextConfig
from gpt_components.training import calc_loss_batch
from spec.helpers.hf_exact import Float64Mode
from spec.helpers.hf_random import ours_from, random_hf_model
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.newest

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def layer_patterns(draw, n_layers: int) -> list[str]:
    """One kind per layer, both kinds present."""
    full = draw(st.integers(0, n_layers - 1))
    linear = draw(st.integers(0, n_layers - 1).filter(lambda i: i != full))
    kinds = draw(st.lists(st.sampled_from(["linear_attention", "full_attention"]),
                          min_size=n_layers, max_size=n_layers))
    kinds[full], kinds[linear] = "full_attention", "linear_attention"
    return kinds


@st.composite
def hybrid_sizes(draw) -> dict:
    """The sizes Qwen3-Next and Qwen3.5 share, as transformers' config keywords."""
    n_kv = draw(st.sampled_from([1, 2]))
    n_layers = draw(st.integers(2, 3))
    head_dim = draw(st.sampled_from([4, 8]))
    n_key = draw(st.integers(1, 2))
    return {
        "vocab_size": draw(st.integers(40, 90)), "hidden_size": draw(st.sampled_from([16, 24])),
        "intermediate_size": draw(st.sampled_from([20, 32])), "num_hidden_layers": n_layers,
        "num_attention_heads": n_kv * draw(st.sampled_from([1, 2])),
        "num_key_value_heads": n_kv, "head_dim": head_dim, "max_position_embeddings": 32,
        "layer_types": draw(layer_patterns(n_layers)),
        "linear_num_key_heads": n_key, "linear_num_value_heads": n_key * draw(st.integers(1, 2)),
        "linear_key_head_dim": draw(st.integers(2, 6)),
        "linear_value_head_dim": draw(st.integers(2, 6)),
        "linear_conv_kernel_dim": draw(st.integers(2, 4)),
        "rms_norm_eps": draw(st.sampled_from([1e-6, 1e-3])),
        "rope_parameters": {"rope_type": "default",
                            "rope_theta": draw(st.sampled_from([1e4, 1e6])),
                            "partial_rotary_factor": draw(st.sampled_from(
                                [f for f in (0.25, 0.5, 1.0) if head_dim * f >= 2]))},
        "tie_word_embeddings": draw(st.booleans()), "pad_token_id": 0, "bos_token_id": 1,
        "eos_token_id": None}


@st.composite
def hf_qwen3_next_configs(draw):
    sizes = draw(hybrid_sizes())
    n_experts = draw(st.integers(2, 5))
    return transformers.Qwen3NextConfig(
        **sizes, num_experts=n_experts, num_experts_per_tok=draw(st.integers(1, n_experts)),
        moe_intermediate_size=draw(st.sampled_from([6, 12])),
        shared_expert_intermediate_size=draw(st.sampled_from([5, 10])),
        norm_topk_prob=draw(st.booleans()), decoder_sparse_step=draw(st.integers(1, 2)),
        mlp_only_layers=draw(st.lists(st.integers(0, sizes["num_hidden_layers"] - 1),
                                      max_size=1, unique=True)),
        router_aux_loss_coef=draw(st.sampled_from([0.001, 0.5])))


def exact(hf_model, ids, **kwargs):
    with Float64Mode(), torch.no_grad():
        return hf_model(ids, **kwargs)


def equals_transformers_both_ways(model_class, config, seed: int, t: int) -> None:
    """``from_pretrained`` of a random ``transformers`` model gives its float64 logits, and
    ``save_pretrained`` writes what ``transformers`` reads back to the same logits."""
    hf_model = random_hf_model(model_class, config, seed)
    ids = torch.randint(0, config.vocab_size, (2, t), generator=generator(seed))
    model = ours_from(hf_model)
    kinds = [type(block.att) is GatedDeltaNet for block in model.trf_blocks]
    assert kinds == [kind == "linear_attention" for kind in config.layer_types]
    expected = exact(hf_model, ids).logits
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, **EXACT)
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=F64, attn_implementation="eager", experts_implementation="eager")
        assert type(back) is model_class
        with Float64Mode():
            back.model.rotary_emb.__init__(back.config)  # float64 frequencies, as above
        torch.testing.assert_close(exact(back.eval(), ids).logits, expected, **EXACT)


def generates_as_transformers(model_class, config, seed: int, prompt_len: int) -> None:
    """Greedy tokens with and without our cache equal ``transformers``' ``generate``."""
    hf_model = random_hf_model(model_class, config, seed)
    model = ours_from(hf_model)
    prompt = torch.randint(3, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=8)
    with Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                   attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, generate(model, prompt, max_new_tokens=8, use_cache=False))
    assert torch.equal(cached, theirs)


@settings(deadline=None, max_examples=1)
@given(hf_qwen3_next_configs(), seeds, st.integers(1, 8))
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 t):
    equals_transformers_both_ways(transformers.Qwen3NextForCausalLM, config, seed, t)


@pytest.mark.slow
@settings(deadline=None, max_examples=4)
@given(hf_qwen3_next_configs(), seeds, st.integers(1, 12))
def test_more_drawn_configurations_equal_transformers_both_ways(config, seed, t):
    equals_transformers_both_ways(transformers.Qwen3NextForCausalLM, config, seed, t)


@settings(deadline=None, max_examples=1)
@given(hf_qwen3_next_configs(), seeds, st.integers(1, 4))
def test_cached_generation_equals_uncached_and_transformers(config, seed, prompt_len):
    generates_as_transformers(transformers.Qwen3NextForCausalLM, config, seed, prompt_len)


@pytest.mark.slow
@settings(deadline=None, max_examples=3)
@given(hf_qwen3_next_configs(), seeds, st.integers(2, 10))
def test_training_adds_transformers_load_balancing_loss(config, seed, t):
    hf_model = random_hf_model(transformers.Qwen3NextForCausalLM, config, seed)
    model = ours_from(hf_model)
    g = generator(seed)
    x = torch.randint(0, config.vocab_size, (2, t), generator=g)
    y = torch.randint(0, config.vocab_size, (2, t), generator=g)
    sparse = any(isinstance(block.ff, MoEFeedForward) for block in model.trf_blocks)
    out = exact(hf_model, x, output_router_logits=sparse)
    cross_entropy = F.cross_entropy(out.logits.flatten(0, 1), y.flatten())
    model.train()
    expected = cross_entropy + config.router_aux_loss_coef * out.aux_loss if sparse \
        else cross_entropy
    torch.testing.assert_close(calc_loss_batch(x, y, model, "cpu"), expected, **EXACT)


@pytest.mark.slow
def test_qwen3_next_80b_a3b_has_its_published_parameter_counts():
    # config.json of Qwen/Qwen3-Next-80B-A3B-Instruct (the preset); the model card says "80B
    # total, 3B active" (the active count there leaves out the embedding and the head).
    cfg = Qwen3NextConfig.from_name("qwen3-next-80b-a3b")
    assert [cfg.layer_kind(i) for i in range(4)] == ["linear_attention"] * 3 + ["full_attention"]
    # Its 48 layers are 12 repeats of one pattern of 4: count one on the meta device (2,048
    # experts take seconds to build even there), and add 11 more of the same.
    with torch.device("meta"):
        model = DecoderModel(dataclasses.replace(cfg, n_layers=4))
    blocks = sum(p.numel() for p in model.trf_blocks.parameters())
    outside = sum(p.numel() for p in model.parameters()) - blocks  # embedding, head, final norm
    total = outside + 12 * blocks
    active = outside + 12 * (active_parameters(model) - outside)
    assert total == 79_674_391_296
    assert active == 3_874_929_408 and active - 2 * 151936 * 2048 == 3_252_599_552
    # transformers' model of the same config.json, built on the meta device, agrees.
    hf_config = transformers.Qwen3NextConfig(
        num_hidden_layers=48, intermediate_size=5120, max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 1e7,
                         "partial_rotary_factor": 0.25})
    with torch.device("meta"):
        theirs = transformers.Qwen3NextForCausalLM(hf_config)
    assert sum(p.numel() for p in theirs.parameters()) == total


def test_the_layer_pattern_follows_the_interval_or_the_list():
    cfg = Qwen3NextConfig.from_name("qwen3-next-nano", n_layers=6, full_attention_interval=3,
                                    decoder_sparse_step=2, mlp_only_layers=(3,))
    assert [cfg.layer(i).attention for i in range(6)] == \
        ["gated_deltanet", "gated_deltanet", "gated_attention"] * 2
    assert [cfg.layer(i).rope for i in range(3)] == [None, None, "default"]
    assert [cfg.is_sparse(i) for i in range(6)] == [False, True, False, False, False, True]
    listed = Qwen3NextConfig.from_name("qwen3-next-nano", layer_types=[
        "full_attention", "linear_attention", "linear_attention", "full_attention"])
    assert listed.layer_types == ("full_attention", "linear_attention", "linear_attention",
                                  "full_attention")


def test_bad_configurations_are_refused_naming_the_field():
    for bad, error, field in (({"layer_types": ["linear_attention"] * 3 + ["attention"]},
                               ValueError, "layer_types"),
                              ({"layer_types": ["linear_attention"] * 3}, ValueError,
                               "layer_types"),
                              ({"layer_types": "full_attention"}, TypeError, "layer_types"),
                              ({"chunk_size": 0}, ValueError, "chunk_size"),
                              ({"full_attention_interval": 0}, ValueError,
                               "full_attention_interval"),
                              ({"partial_rotary_factor": 0.05}, ValueError,
                               "partial_rotary_factor"),
                              ({"partial_rotary_factor": float("nan")}, ValueError,
                               "partial_rotary_factor"),
                              ({"linear_value_heads": 3}, ValueError, "linear_value_heads"),
                              ({"deltanet_kernel": "fused"}, ValueError, "deltanet_kernel"),
                              ({"n_experts_per_token": 9}, ValueError, "n_experts_per_token")):
        with pytest.raises(error, match=field) as caught:
            Qwen3NextConfig.from_name("qwen3-next-nano", **bad)
        assert caught.value.parameter == field


def test_the_published_config_json_reads_as_the_preset():
    # The keys of Qwen/Qwen3-Next-80B-A3B-Instruct's config.json that set the architecture, in
    # its own (transformers 4) spelling: the top-level RoPE keys and the layer interval.
    published = {
        "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next",
        "vocab_size": 151936, "max_position_embeddings": 262144, "hidden_size": 2048,
        "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2,
        "head_dim": 256, "intermediate_size": 5120, "hidden_act": "silu",
        "rms_norm_eps": 1e-06, "rope_theta": 10000000, "rope_scaling": None,
        "partial_rotary_factor": 0.25, "attention_bias": False, "attention_dropout": 0.0,
        "tie_word_embeddings": False, "full_attention_interval": 4, "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
        "linear_value_head_dim": 128, "num_experts": 512, "num_experts_per_tok": 10,
        "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "router_aux_loss_coef": 0.001}
    family = FAMILIES["qwen3_next"]
    assert family.layout.config_from_hf(published) == Qwen3NextConfig.from_name(
        "qwen3-next-80b-a3b")


def test_the_multi_token_prediction_head_of_a_checkpoint_is_skipped(tmp_path):
    from safetensors.torch import load_file, save_file

    model = build_model(preset_config("qwen3-next-nano", vocab_size=64)).eval()
    directory = save_pretrained(model, tmp_path / "next")
    tensors = load_file(directory / "model.safetensors")
    save_file({**tensors, "mtp.fc.weight": torch.zeros(2, 2)}, directory / "model.safetensors",
              metadata={"format": "pt"})
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(from_pretrained(directory)(ids), model(ids))


def drawn_model(cfg, seed: int):
    """``cfg``'s model in float64 with every weight drawn from ``seed``, in eval mode."""
    model = build_model(cfg).to(F64)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.3)
    return model.eval()


@settings(deadline=None, max_examples=2)
@given(seed=seeds, chunk=st.integers(1, 5), t=st.integers(1, 12))
def test_the_whole_model_computes_one_function_with_either_rule(seed, chunk, t):
    cfg = preset_config("qwen3-next-nano", vocab_size=64, chunk_size=chunk)
    chunked = drawn_model(cfg, seed)
    recurrent = drawn_model(dataclasses.replace(cfg, deltanet_kernel="recurrent"), seed)
    ids = torch.randint(0, 64, (2, t), generator=generator(seed))
    with torch.no_grad():
        torch.testing.assert_close(recurrent(ids), chunked(ids), **EXACT)


def test_cached_generation_equals_uncached_past_the_context():
    # A full window refills the cache from the last tokens: the states start again from zero.
    model = drawn_model(preset_config("qwen3-next-nano", vocab_size=64, context_length=6), 0)
    prompt = torch.tensor([[5, 9, 2]])
    cached = generate(model, prompt, max_new_tokens=10)
    assert torch.equal(cached, generate(model, prompt, max_new_tokens=10, use_cache=False))
