"""OLMo 3 against ``transformers``' ``Olmo3ForCausalLM`` on drawn small configurations.

Every weight of the reference is drawn at random (the norms' too, so a missing or misplaced norm
shows), saved by ``transformers`` and read by ``from_pretrained``; the reference runs under
``Float64Mode`` (its float32 RoPE and norm steps widened), so the float64 logits agree to 1e-10;
stock ``transformers`` is checked against it at a float32 bound, so the reference is tested too.
The drawn configurations mix sliding and full layers with windows shorter than prompt plus
generation, YaRN of drawn factors on the full layers, separate RoPE bases for the two kinds,
grouped-query heads, biases, tied and untied heads.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import save_pretrained
from gpt_components.generation import generate
from gpt_components.machinery.registry import FAMILIES, build_model, preset_config
from gpt_components.model import count_parameters
from gpt_components.modern.norms import RMSNorm
from gpt_components.modern.sliding_window import WindowLayerCache
from gpt_components.newest.olmo3 import (
    Olmo3Config,
    Olmo3Model,
    ProjectionRMSNorm,
    config_from_hf,
    config_to_hf,
)
from spec.helpers.decoding import stepwise_logits
from spec.helpers.hf_exact import Float64Mode
from spec.helpers.hf_random import ours_from, random_hf_model
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.newest

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}
KINDS = ("sliding_attention", "full_attention")


@st.composite
def hf_olmo3_configs(draw, layers=(2, 3)):
    n_kv = draw(st.sampled_from([1, 2]))
    n_layers = draw(st.integers(*layers))
    kinds = [draw(st.sampled_from(KINDS)) for _ in range(n_layers)]
    kinds[draw(st.integers(0, n_layers - 1))] = "sliding_attention"  # both kinds, always
    if n_layers > 1:
        kinds[draw(st.integers(0, n_layers - 1))] = "full_attention"
    full_theta = draw(st.sampled_from([1e4, 5e5]))
    yarn = {"rope_type": "yarn", "factor": draw(st.sampled_from([2.0, 4.0, 8.0])),
            "original_max_position_embeddings": draw(st.sampled_from([4, 8, 16])),
            "beta_fast": 32.0, "beta_slow": 1.0}
    if draw(st.booleans()):  # as published; else transformers' default, 0.1 ln(factor) + 1
        yarn["attention_factor"] = draw(st.sampled_from([1.0, 1.2079441541679836]))
    full_rope = draw(st.sampled_from([{"rope_type": "default"}, yarn, yarn]))
    return transformers.Olmo3Config(
        vocab_size=draw(st.integers(40, 90)), hidden_size=draw(st.sampled_from([16, 24])),
        intermediate_size=draw(st.sampled_from([20, 32])), num_hidden_layers=n_layers,
        num_attention_heads=n_kv * draw(st.sampled_from([1, 2])), num_key_value_heads=n_kv,
        head_dim=draw(st.sampled_from([4, 8])), max_position_embeddings=32,
        sliding_window=draw(st.integers(2, 5)), layer_types=kinds,
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
        attention_bias=draw(st.booleans()),
        rope_parameters={
            "full_attention": {**full_rope, "rope_theta": full_theta},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": draw(st.sampled_from([1e2, full_theta]))}},
        tie_word_embeddings=draw(st.booleans()),
        pad_token_id=0, bos_token_id=1, eos_token_id=None)


def random_hf_olmo3(config, seed):
    return random_hf_model(transformers.Olmo3ForCausalLM, config, seed)


def exact_logits(hf_model, ids):
    with Float64Mode(), torch.no_grad():
        return hf_model(ids).logits


@settings(max_examples=4, deadline=None)
@given(hf_olmo3_configs(), seeds, st.data())
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 data):
    hf_model = random_hf_olmo3(config, seed)
    ids = torch.randint(0, config.vocab_size, (2, data.draw(st.integers(1, 12))),
                        generator=generator(seed))
    model = ours_from(hf_model)
    assert isinstance(model, Olmo3Model) and isinstance(model.cfg, Olmo3Config)
    assert model.tok_emb.weight.dtype == F64 and not model.training
    expected = exact_logits(hf_model, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, **EXACT)
        stock = hf_model(ids).logits  # float32 steps inside: a loose bound
    torch.testing.assert_close(stock, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=F64)
        assert type(back).__name__ == "Olmo3ForCausalLM"
        back.config._attn_implementation = "eager"
        with Float64Mode():
            back.model.rotary_emb.__init__(back.config)  # float64 frequencies, as above
        torch.testing.assert_close(exact_logits(back.eval(), ids), expected, **EXACT)


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(hf_olmo3_configs(layers=(5, 8)), seeds, st.data())
def test_deeper_models_equal_transformers_through_the_cache_too(config, seed, data):
    hf_model = random_hf_olmo3(config, seed)
    model = ours_from(hf_model)
    ids = torch.randint(0, config.vocab_size, (1, data.draw(st.integers(8, 20))),
                        generator=generator(seed))
    expected = exact_logits(hf_model, ids)
    first = data.draw(st.integers(1, ids.shape[1] - 1))
    torch.testing.assert_close(stepwise_logits(model, ids, first), expected, **EXACT)


@settings(max_examples=3, deadline=None)
@given(hf_olmo3_configs(), seeds, st.integers(1, 4))
def test_greedy_generation_with_and_without_cache_equals_transformers_past_every_window(
        config, seed, prompt_len):
    hf_model = random_hf_olmo3(config, seed)
    model = ours_from(hf_model)
    new = config.sliding_window + 6  # well past the window
    prompt = torch.randint(2, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=new)
    uncached = generate(model, prompt, max_new_tokens=new, use_cache=False)
    with Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=new, do_sample=False,
                                   min_new_tokens=new, attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, theirs)


@settings(max_examples=20, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 4), st.sampled_from([1e-6, 0.5]))
def test_projection_norm_is_one_rms_over_every_head_with_a_weight_per_feature(seed, heads,
                                                                             half, eps):
    g = generator(seed)
    head_dim = 2 * half
    x = torch.randn(3, 5, heads, head_dim, generator=g, dtype=F64)
    norm = ProjectionRMSNorm(heads, head_dim, eps=eps).to(F64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(heads * head_dim, generator=g, dtype=F64))
    flat = x.reshape(3, 5, heads * head_dim)
    expected = flat / torch.sqrt((flat**2).mean(-1, keepdim=True) + eps) * norm.weight
    torch.testing.assert_close(norm(x), expected.view_as(x), **EXACT)
    # Not Qwen3's per-head norm: scaling one head changes every head's output.
    scaled = x.clone()
    scaled[..., 0, :] *= 3.0
    if heads > 1:
        assert not torch.allclose(norm(scaled)[..., 1, :], norm(x)[..., 1, :])
    per_head = RMSNorm(head_dim, eps=eps).to(F64)
    assert torch.allclose(per_head(scaled)[..., 1:, :], per_head(x)[..., 1:, :])


@settings(max_examples=5, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(10, 20))
def test_sliding_layers_cache_window_positions_and_decode_as_without_a_cache(seed, window,
                                                                            length):
    cfg = Olmo3Config(vocab_size=50, context_length=24, emb_dim=16, n_layers=2, n_heads=2,
                      n_kv_heads=1, head_dim=8, hidden_dim=24, sliding_window=window,
                      layer_types=("sliding_attention", "full_attention"))
    model = Olmo3Model(cfg).to(F64).eval()
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.4 + 0.5)
    ids = torch.randint(0, 50, (2, length), generator=g)
    cache = model.new_kv_cache(2)
    assert isinstance(cache.layers[0], WindowLayerCache)
    assert tuple(cache.layers[0].keys.shape) == (2, 1, window, 8)  # not context_length
    with torch.no_grad():
        torch.testing.assert_close(stepwise_logits(model, ids, 3, cache), model(ids), **EXACT)


def test_a_block_has_no_pre_norms_and_its_norms_follow_the_branches():
    model = build_model(preset_config("olmo3-nano", vocab_size=60))
    names = {name for name, _ in model.named_parameters()}
    assert "trf_blocks.0.post_norm1.weight" in names and "trf_blocks.0.post_norm2.weight" in names
    assert not any(".norm1." in n or ".norm2." in n for n in names)
    att = model.trf_blocks[0].att
    assert tuple(att.q_norm.weight.shape) == (att.n_heads * att.head_dim,)
    assert tuple(att.k_norm.weight.shape) == (att.n_kv_heads * att.head_dim,)


@pytest.mark.parametrize(("name", "count"), [
    # The published checkpoints' totals (the sum of their safetensors shapes: 7,298,011,136 and
    # 32,233,522,176, "7.3B" and "32.2B" on their Hugging Face pages).
    ("olmo3-7b", 7_298_011_136), ("olmo3-32b", 32_233_522_176)])
def test_published_sizes_have_their_parameter_counts(name, count):
    with torch.device("meta"):
        model = build_model(preset_config(name))
    assert count_parameters(model) == count


def test_the_config_json_goes_both_ways_and_reads_the_published_spelling():
    cfg = Olmo3Config.from_name("olmo3-nano", rope_local_theta=100.0)
    assert config_from_hf(config_to_hf(cfg)) == cfg
    published = {**config_to_hf(Olmo3Config.from_name("olmo3-7b")), "rope_theta": 500000,
                 "rope_scaling": {"attention_factor": 1.2079441541679836, "beta_fast": 32,
                                  "beta_slow": 1, "factor": 8.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "yarn"}}
    del published["rope_parameters"], published["layer_types"]
    assert config_from_hf(published) == Olmo3Config.from_name("olmo3-7b")
    assert FAMILIES["olmo3"].model_class is Olmo3Model


def test_the_config_refuses_what_olmo3_is_not():
    with pytest.raises(ValueError, match="layer_types must name 2 layers") as error:
        Olmo3Config(n_layers=2, layer_types=("sliding_attention",))
    assert error.value.parameter == "layer_types"
    with pytest.raises(ValueError, match="layer_types must be one of") as error:
        Olmo3Config(n_layers=1, layer_types=("chunked_attention",))
    with pytest.raises(ValueError, match="sliding_window must be an int >= 1") as error:
        Olmo3Config(n_layers=1, sliding_window=0)
    assert error.value.parameter == "sliding_window"
    with pytest.raises(ValueError, match="qk_norm and post_norms must be True") as error:
        Olmo3Config(n_layers=1, qk_norm=False)
    assert error.value.parameter == "qk_norm"
    with pytest.raises(ValueError, match="rope_local_theta") as error:
        Olmo3Config(n_layers=1, rope_local_theta=float("nan"))
    with pytest.raises(ValueError, match="rope_parameters of sliding_attention must be"):
        config_from_hf({**config_to_hf(Olmo3Config.from_name("olmo3-nano")), "rope_parameters": {
            "sliding_attention": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8}}})
