"""Gemma 3 against ``transformers``' ``Gemma3ForCausalLM`` on drawn small configurations.

Every weight of the reference is drawn at random (norm weights too, so Gemma's ``1 + weight``
matters), it is saved in Hugging Face's layout and read back with ``from_pretrained``. The
reference runs under ``Float64Mode`` (its float32 steps widened) with its embedding scale, which
``transformers`` keeps as a float32 number, set to the float64 ``sqrt(emb_dim)``; stock
``transformers`` is checked against it at a float32 bound, so the reference itself is tested.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import from_pretrained, save_pretrained
from gpt_components.generation import generate
from gpt_components.modern import DecoderModel, Gemma3Config
from gpt_components.modern.sliding_window import WindowLayerCache
from spec.helpers.decoding import stepwise_logits
from spec.helpers.hf_exact import Float64Mode
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.modern

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def hf_gemma3_configs(draw):
    n_kv = draw(st.sampled_from([1, 2]))
    n_layers = draw(st.integers(2, 3))
    kinds = ["sliding_attention", "full_attention"]
    return transformers.Gemma3TextConfig(
        vocab_size=draw(st.integers(40, 90)), hidden_size=draw(st.sampled_from([16, 24])),
        intermediate_size=draw(st.sampled_from([20, 32])), num_hidden_layers=n_layers,
        num_attention_heads=n_kv * draw(st.sampled_from([1, 2])), num_key_value_heads=n_kv,
        head_dim=draw(st.sampled_from([4, 8])), max_position_embeddings=32,
        sliding_window=draw(st.integers(2, 5)),
        layer_types=[draw(st.sampled_from(kinds)) for _ in range(n_layers)],
        query_pre_attn_scalar=draw(st.sampled_from([4, 8, 20])),
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
        rope_parameters={"full_attention": {"rope_type": "default",
                                            "rope_theta": draw(st.sampled_from([1e4, 1e6]))},
                         "sliding_attention": {"rope_type": "default",
                                               "rope_theta": draw(st.sampled_from([1e2, 1e4]))}},
        tie_word_embeddings=draw(st.booleans()),
        pad_token_id=0, bos_token_id=1, eos_token_id=None)


def random_hf_gemma3(config, seed):
    """A float64 ``Gemma3ForCausalLM`` (eager attention) with every weight drawn at random."""
    with Float64Mode():  # its RoPE frequencies are made in float64 too
        model = transformers.Gemma3ForCausalLM(config).to(F64)
    model.config._attn_implementation = "eager"
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.4)
    return model.eval()


def exact_logits(hf_model, ids):
    """The reference's float64 logits: float32 steps widened, the float64 embedding scale."""
    embed = hf_model.model.embed_tokens
    stock_scale = embed.embed_scale
    embed.embed_scale = torch.tensor(embed.scalar_embed_scale, dtype=F64)
    try:
        with Float64Mode(), torch.no_grad():
            return hf_model(ids).logits
    finally:
        embed.embed_scale = stock_scale


def ours_from(hf_model):
    with tempfile.TemporaryDirectory() as directory:
        hf_model.save_pretrained(directory)
        return from_pretrained(directory)


@settings(max_examples=4)
@given(hf_gemma3_configs(), seeds, st.data())
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 data):
    hf_model = random_hf_gemma3(config, seed)
    ids = torch.randint(0, config.vocab_size, (2, data.draw(st.integers(1, 12))),
                        generator=generator(seed))
    model = ours_from(hf_model)
    assert isinstance(model.cfg, Gemma3Config) and not model.training
    assert model.tok_emb.weight.dtype == F64
    expected = exact_logits(hf_model, ids)
    with torch.no_grad():
        got = model(ids)
        torch.testing.assert_close(got, expected, **EXACT)
        stock = hf_model(ids).logits  # float32 inside: a loose bound
    torch.testing.assert_close(stock, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=F64)
        assert type(back).__name__ == "Gemma3ForCausalLM"
        back.config._attn_implementation = "eager"
        with Float64Mode():
            back.model.rotary_emb.__init__(back.config)  # float64 frequencies, as above
        torch.testing.assert_close(exact_logits(back.eval(), ids), expected, **EXACT)


@settings(max_examples=3)
@given(hf_gemma3_configs(), seeds, st.integers(1, 4))
def test_cached_generation_equals_uncached_and_transformers_past_the_window(config, seed,
                                                                           prompt_len):
    hf_model = random_hf_gemma3(config, seed)
    model = ours_from(hf_model)
    new = config.sliding_window + 6  # well past the window
    prompt = torch.randint(3, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=new)
    uncached = generate(model, prompt, max_new_tokens=new, use_cache=False)
    embed = hf_model.model.embed_tokens
    embed.embed_scale = torch.tensor(embed.scalar_embed_scale, dtype=F64)
    with Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=new, do_sample=False,
                                   min_new_tokens=new, attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, theirs)


@settings(max_examples=6)
@given(seeds, st.integers(1, 4), st.integers(10, 20))
def test_windowed_layers_cache_window_positions_and_decode_as_without_a_cache(seed, window,
                                                                             length):
    cfg = Gemma3Config(vocab_size=50, context_length=24, emb_dim=16, n_layers=2, n_heads=2,
                       n_kv_heads=1, head_dim=8, hidden_dim=24, sliding_window=window,
                       query_pre_attn_scalar=8,
                       layer_types=("sliding_attention", "full_attention"))
    torch.manual_seed(0)
    model = DecoderModel(cfg).to(F64).eval()
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.4)
    ids = torch.randint(0, 50, (2, length), generator=g)
    cache = model.new_kv_cache(2)
    assert isinstance(cache.layers[0], WindowLayerCache)
    assert tuple(cache.layers[0].keys.shape) == (2, 1, window, 8)  # not context_length
    assert tuple(cache.layers[1].keys.shape) == (2, 1, 24, 8)
    with torch.no_grad():
        torch.testing.assert_close(stepwise_logits(model, ids, 3, cache), model(ids), **EXACT)
    assert tuple(cache.layers[0].keys.shape) == (2, 1, window, 8)


def test_trace_shows_windowed_layers_see_only_their_window():
    cfg = Gemma3Config.from_name("gemma3-nano", vocab_size=60, sliding_window=3)
    model = DecoderModel(cfg).eval()
    trace = model.trace(torch.arange(8)[None] % 60)
    t = torch.arange(8)
    band = (t[:, None] - t[None, :] >= 0) & (t[:, None] - t[None, :] < 3)
    causal = t[:, None] >= t[None, :]
    for kind, weights in zip(cfg.layer_types, trace.attentions, strict=True):
        assert bool((weights[..., ~(band if kind == "sliding_attention" else causal)] == 0).all())
        assert bool((weights[..., band] > 0).all())
    assert bool((trace.attentions[5][..., causal & ~band] > 0).all())  # the global layer


def test_published_sizes_have_their_parameter_counts():
    for name, count in (("gemma3-270m", 268_098_176), ("gemma3-1b", 999_885_952)):
        with torch.device("meta"):
            model = DecoderModel(Gemma3Config.from_name(name))
        assert sum(p.numel() for p in model.parameters()) == count


def test_the_config_refuses_what_gemma3_is_not():
    with pytest.raises(ValueError, match="layer_types must name 2 layers"):
        Gemma3Config(n_layers=2, layer_types=("sliding_attention",))
    with pytest.raises(ValueError, match="sliding_window must be an int >= 1"):
        Gemma3Config(n_layers=1, sliding_window=0)
    with pytest.raises(TypeError, match="query_pre_attn_scalar must be an int >= 1, got 16.5"):
        Gemma3Config(n_layers=1, query_pre_attn_scalar=16.5)
    config = transformers.Gemma3TextConfig(num_hidden_layers=1, hidden_size=8, head_dim=4,
                                           num_attention_heads=2, num_key_value_heads=1,
                                           intermediate_size=8, vocab_size=10,
                                           final_logit_softcapping=30.0)
    from gpt_components.modern.gemma3 import config_from_hf

    with pytest.raises(ValueError, match="config final_logit_softcapping must be null"):
        config_from_hf(config.to_dict())
