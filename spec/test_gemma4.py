"""Gemma 4's text model against ``transformers``' ``Gemma4ForCausalLM`` on drawn small configs.

Every weight of the reference is drawn at random (norms and the stored layer scalars too), saved
by ``transformers`` and read by ``from_pretrained``. The reference runs under ``Float64Mode``
(its float32 RoPE and norm steps widened) with its two embedding scales, which ``transformers``
keeps as float32 numbers, set to the float64 square roots; stock ``transformers`` is checked
against it at a float32 bound. The drawn configurations mix sliding and full layers (the last
full) with windows shorter than prompt plus generation, full layers with wider heads, fewer
key/value heads and keys equal to values, proportional RoPE of drawn fractions and factors,
0 to all-but-one layers sharing caches, per-layer inputs on and off, double-wide feed-forwards,
experts beside the feed-forward or none, soft-capped and plain logits, tied and untied heads.
"""

from __future__ import annotations

import tempfile

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpt_components import save_pretrained
from gpt_components.finetune.lora import replace_linear_with_lora
from gpt_components.generation import generate
from gpt_components.machinery.registry import FAMILIES, build_model, preset_config
from gpt_components.model import count_parameters
from gpt_components.modern.rope import RotaryEmbedding
from gpt_components.modern.sliding_window import WindowLayerCache
from gpt_components.newest.gemma4 import (
    Gemma4Config,
    Gemma4Model,
    ProportionalRotaryEmbedding,
    SoftCappedHead,
    config_from_hf,
    config_to_hf,
)
from gpt_components.newest.shared_kv import SharedKVAttention, kv_sources
from spec.helpers.decoding import stepwise_logits
from spec.helpers.hf_exact import Float64Mode
from spec.helpers.hf_random import ours_from, random_hf_model
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.newest

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}
SLIDING, FULL = "sliding_attention", "full_attention"


def shareable(kinds: list[str], n_shared: int) -> bool:
    """Whether every kind among the last ``n_shared`` layers has an earlier layer to share."""
    return set(kinds[len(kinds) - n_shared:]) <= set(kinds[:len(kinds) - n_shared])


@st.composite
def hf_gemma4_configs(draw, layers=(2, 5)):
    n_layers = draw(st.integers(*layers))
    kinds = [draw(st.sampled_from([SLIDING, FULL])) for _ in range(n_layers - 1)] + [FULL]
    kinds[draw(st.integers(0, n_layers - 2))] = SLIDING  # both kinds, the last one full
    n_shared = draw(st.sampled_from([n for n in range(n_layers) if shareable(kinds, n)]))
    n_kv = draw(st.sampled_from([1, 2]))
    n_heads = 2 * draw(st.sampled_from([1, 2]))
    k_eq_v = draw(st.booleans())
    ple = draw(st.sampled_from([0, 4]))
    vocab = draw(st.integers(40, 90))
    experts = draw(st.sampled_from([{}, {"enable_moe_block": True, "num_experts": 4,
                                          "top_k_experts": draw(st.integers(1, 3)),
                                          "moe_intermediate_size": 6}]))
    full_rope = draw(st.sampled_from([
        {"rope_type": "default"},
        {"rope_type": "proportional", "partial_rotary_factor": draw(st.sampled_from([0.25, 0.5,
                                                                                    1.0]))},
        {"rope_type": "proportional", "partial_rotary_factor": 0.5, "factor": 2.0}]))
    return transformers.Gemma4TextConfig(
        vocab_size=vocab, hidden_size=draw(st.sampled_from([16, 24])),
        intermediate_size=draw(st.sampled_from([20, 32])), num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_kv,
        head_dim=draw(st.sampled_from([4, 8])), global_head_dim=draw(st.sampled_from([8, 16])),
        num_global_key_value_heads=draw(st.sampled_from([None, 1, 2])) if k_eq_v else None,
        attention_k_eq_v=k_eq_v, num_kv_shared_layers=n_shared,
        use_double_wide_mlp=draw(st.booleans()), max_position_embeddings=32,
        sliding_window=draw(st.integers(2, 5)), layer_types=kinds,
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-3])),
        hidden_size_per_layer_input=ple, vocab_size_per_layer_input=vocab,
        final_logit_softcapping=draw(st.sampled_from([None, 3.0, 30.0])),
        rope_parameters={
            SLIDING: {"rope_type": "default", "rope_theta": draw(st.sampled_from([1e2, 1e4]))},
            FULL: {**full_rope, "rope_theta": draw(st.sampled_from([1e4, 1e6]))}},
        tie_word_embeddings=draw(st.booleans()),
        pad_token_id=0, bos_token_id=1, eos_token_id=None, **experts)


def random_hf_gemma4(config, seed):
    """A float64 ``Gemma4ForCausalLM``, every weight and layer scalar drawn at random."""
    model = random_hf_model(transformers.Gemma4ForCausalLM, config, seed)
    g = generator(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.layer_scalar.copy_(torch.rand(1, generator=g, dtype=F64) + 0.5)
    return model


class ExactScales:
    """Within ``with ExactScales(hf_model):``, its embedding scales are float64 square roots."""

    def __init__(self, hf_model):
        inner = hf_model.model
        self.embeddings = [e for e in (inner.embed_tokens,
                                       getattr(inner, "embed_tokens_per_layer", None)) if e]

    def __enter__(self):
        self.stock = [e.embed_scale for e in self.embeddings]
        for e in self.embeddings:
            e.embed_scale = torch.tensor(e.scalar_embed_scale, dtype=F64)

    def __exit__(self, *exc):
        for e, scale in zip(self.embeddings, self.stock, strict=True):
            e.embed_scale = scale


def exact_logits(hf_model, ids):
    with ExactScales(hf_model), Float64Mode(), torch.no_grad():
        return hf_model(ids).logits


@settings(max_examples=3, deadline=None)
@given(hf_gemma4_configs(), seeds, st.data())
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 data):
    hf_model = random_hf_gemma4(config, seed)
    ids = torch.randint(0, config.vocab_size, (2, data.draw(st.integers(1, 12))),
                        generator=generator(seed))
    model = ours_from(hf_model)
    assert isinstance(model, Gemma4Model) and isinstance(model.cfg, Gemma4Config)
    assert model.tok_emb.weight.dtype == F64 and not model.training
    expected = exact_logits(hf_model, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, **EXACT)
        stock = hf_model(ids).logits  # float32 steps inside: a loose bound
    torch.testing.assert_close(stock, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=F64, experts_implementation="eager")  # its grouped kernel: no f64
        assert type(back).__name__ == "Gemma4ForCausalLM"
        back.config._attn_implementation = "eager"
        with Float64Mode():
            back.model.rotary_emb.__init__(back.config)  # float64 frequencies, as above
        torch.testing.assert_close(exact_logits(back.eval(), ids), expected, **EXACT)


@pytest.mark.slow
@settings(max_examples=4, deadline=None)
@given(hf_gemma4_configs(layers=(6, 9)), seeds, st.data())
def test_deeper_models_equal_transformers_through_the_cache_too(config, seed, data):
    hf_model = random_hf_gemma4(config, seed)
    model = ours_from(hf_model)
    ids = torch.randint(0, config.vocab_size, (1, data.draw(st.integers(8, 20))),
                        generator=generator(seed))
    expected = exact_logits(hf_model, ids)
    first = data.draw(st.integers(1, ids.shape[1] - 1))
    torch.testing.assert_close(stepwise_logits(model, ids, first), expected, **EXACT)


@settings(max_examples=2, deadline=None)
@given(hf_gemma4_configs(), seeds, st.integers(1, 4))
def test_greedy_generation_with_and_without_cache_equals_transformers_past_every_window(
        config, seed, prompt_len):
    hf_model = random_hf_gemma4(config, seed)
    model = ours_from(hf_model)
    new = config.sliding_window + 6  # well past the window
    prompt = torch.randint(2, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=new)
    uncached = generate(model, prompt, max_new_tokens=new, use_cache=False)
    with ExactScales(hf_model), Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=new, do_sample=False,
                                   min_new_tokens=new, attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, theirs)


def random_model(cfg, seed):
    model = Gemma4Model(cfg).to(F64).eval()
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.4)
    return model


@settings(max_examples=3, deadline=None)
@given(seeds, st.integers(1, 4), st.integers(1, 2), st.integers(10, 16))
def test_sharing_layers_hold_their_sources_cache_and_decode_as_without_a_cache(
        seed, window, n_shared, length):
    kinds = (SLIDING, FULL, SLIDING, FULL)
    cfg = Gemma4Config(vocab_size=50, context_length=24, emb_dim=16, n_layers=4, n_heads=2,
                       n_kv_heads=1, head_dim=8, hidden_dim=24, global_head_dim=8,
                       sliding_window=window, layer_types=kinds, kv_shared_layers=n_shared,
                       per_layer_dim=4, keys_equal_values=True)
    model = random_model(cfg, seed)
    cache = model.new_kv_cache(2)
    sources = kv_sources(kinds, n_shared)
    for i, source in enumerate(sources):
        assert cache.layers[i] is cache.layers[source]  # one object at every reader's position
        assert (model.trf_blocks[i].att.W_key is None) == (source != i)  # readers: no k, v
    owned = {id(c): c for c in cache.layers}.values()
    assert len(owned) == 4 - n_shared
    assert cache.memory_bytes() == sum(
        2 * 2 * 1 * 8 * 8 * (min(window, 24) if isinstance(c, WindowLayerCache) else 24)
        for c in owned)  # k and v, B=2, one head of 8, float64: the distinct caches only
    ids = torch.randint(0, 50, (2, length), generator=generator(seed + 1))
    with torch.no_grad():
        torch.testing.assert_close(stepwise_logits(model, ids, 3, cache), model(ids), **EXACT)
    assert all(c.length == length for c in owned)


def test_a_sharing_layer_reads_what_its_source_stored_this_pass_and_only_then():
    owner = SharedKVAttention(8, 2, 1, 4, window=2, layer=0).to(F64)
    reader = SharedKVAttention(8, 2, 1, 4, window=2, layer=1, reads_from=0).to(F64)
    x = torch.randn(1, 5, 8, dtype=F64, generator=generator(0))
    with pytest.raises(ValueError, match="attends to layer 0's keys and values") as error:
        reader(x, shared={})
    assert error.value.parameter == "shared"
    cache, shared = owner.new_cache(1, 8, dtype=F64), {}
    owner(x, cache=cache, shared=shared)
    keys, values = shared[0]
    assert keys.shape == (1, 1, 5, 4)  # every position the queries saw, past the ring of 2
    assert tuple(cache.keys.shape) == (1, 1, 2, 4)
    # keys = values where the layer says so: one projection, normed (and rotated: not here).
    same = SharedKVAttention(8, 2, 1, 4, window=None, keys_equal_values=True).to(F64)
    same(x, shared=(pair := {}))
    torch.testing.assert_close(pair[0][0], pair[0][1], **EXACT)
    assert same.W_value is None


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.sampled_from([0.25, 0.5, 0.75, 1.0]), st.sampled_from([1.0, 4.0]),
       st.sampled_from([1e4, 1e6]))
def test_proportional_rope_turns_the_first_pairs_at_full_speed_and_leaves_the_rest(
        half, fraction, factor, theta):
    head_dim = 4 * half
    rope = ProportionalRotaryEmbedding(head_dim, theta, fraction, factor)
    plain = RotaryEmbedding(head_dim, theta)
    turning = int(fraction * head_dim // 2)
    torch.testing.assert_close(rope.inv_freq[:turning], plain.inv_freq[:turning] / factor,
                               **EXACT)
    assert bool((rope.inv_freq[turning:] == 0).all())
    cos, sin = rope(torch.arange(7), dtype=F64)
    still = torch.cat([torch.arange(turning, head_dim // 2),
                       torch.arange(turning + head_dim // 2, head_dim)])
    assert bool((cos[:, still] == 1).all() and (sin[:, still] == 0).all())


@settings(max_examples=20, deadline=None)
@given(seeds, st.sampled_from([3.0, 30.0]))
def test_soft_capped_logits_stay_within_the_cap_and_keep_their_order(seed, cap):
    g = generator(seed)
    head = SoftCappedHead(8, 20, cap).to(F64)
    with torch.no_grad():  # logits of a few units: far from tanh's float64 saturation
        head.linear.weight.copy_(torch.randn(20, 8, generator=g, dtype=F64) * 0.5)
    x = torch.randn(5, 8, generator=g, dtype=F64)
    plain = x @ head.weight.T
    capped = head(x)
    assert bool((capped.abs() < cap).all())
    torch.testing.assert_close(capped, cap * torch.tanh(plain / cap), **EXACT)
    assert torch.equal(capped.argsort(dim=-1), plain.argsort(dim=-1))
    # LoRA adapts the linear layer inside the cap, and its merge keeps the cap.
    adapted = replace_linear_with_lora(head, rank=2, alpha=4.0, generator=g)
    with torch.no_grad():
        adapted.linear.lora.B.normal_(generator=g)
        before = adapted(x)
        adapted.linear = adapted.linear.merged()
    assert bool((before.abs() < cap).all())
    torch.testing.assert_close(adapted(x), before, **EXACT)


def test_published_e2b_text_model_has_its_parameter_count():
    # transformers' Gemma4ForCausalLM of google/gemma-4-E2B's text_config counts 4,628,569,344
    # parameters; less the per-layer embedding table (262,144 x 35 x 256), 2,279,759,104: the
    # "2.3B effective parameters" of the model card. (The card's 5.1B adds vision and audio.)
    with torch.device("meta"):
        model = build_model(preset_config("gemma4-e2b"))
    assert count_parameters(model) == 4_628_569_344
    assert count_parameters(model) - model.per_layer.tok_emb.weight.numel() == 2_279_759_104
    hf = transformers.Gemma4TextConfig(**{k: v for k, v in config_to_hf(model.cfg).items()
                                          if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        theirs = transformers.Gemma4ForCausalLM(hf)
    assert sum(p.numel() for p in theirs.parameters()) == count_parameters(model)


def test_published_26b_a4b_text_model_has_its_total_and_active_parameter_counts():
    # transformers' count for google/gemma-4-26B-A4B's text_config: 25,233,141,760 ("25.2B
    # total" on the model card); a token runs through all but 120 of each layer's 128 experts:
    # 3,822,530,560 ("3.8B active").
    with torch.device("meta"):
        model = build_model(preset_config("gemma4-26b-a4b"))
    total = count_parameters(model)
    assert total == 25_233_141_760
    left_out = sum((block.moe.router.n_experts - block.moe.router.top_k)
                   * sum(p[0].numel() for p in block.moe.experts.parameters())
                   for block in model.trf_blocks)
    assert total - left_out == 3_822_530_560
    hf = transformers.Gemma4TextConfig(**{k: v for k, v in config_to_hf(model.cfg).items()
                                          if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        theirs = transformers.Gemma4ForCausalLM(hf)
    assert sum(p.numel() for p in theirs.parameters()) == total


def test_the_config_json_goes_both_ways_and_reads_the_published_text_config():
    for cfg in (Gemma4Config.from_name("gemma4-nano"), Gemma4Config.from_name("gemma4-e2b"),
                Gemma4Config.from_name("gemma4-26b-a4b")):
        assert config_from_hf(config_to_hf(cfg)) == cfg
    published = {"model_type": "gemma4", "text_config": {
        "hidden_size": 1536, "num_hidden_layers": 35, "num_attention_heads": 8,
        "num_key_value_heads": 1, "head_dim": 256, "global_head_dim": 512,
        "num_global_key_value_heads": None, "attention_k_eq_v": False, "sliding_window": 512,
        "vocab_size": 262144, "vocab_size_per_layer_input": 262144,
        "hidden_size_per_layer_input": 256, "num_kv_shared_layers": 20,
        "use_double_wide_mlp": True, "intermediate_size": 6144,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh", "final_logit_softcapping": 30.0,
        "layer_types": list(Gemma4Config.from_name("gemma4-e2b").layer_types)}}
    assert config_from_hf(published) == Gemma4Config.from_name("gemma4-e2b")
    assert FAMILIES["gemma4_text"].model_class is Gemma4Model


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([SLIDING, FULL]), min_size=1, max_size=6), st.data())
def test_a_sharing_layer_with_nothing_to_share_from_is_refused_naming_the_parameter(kinds, data):
    kinds[-1] = FULL
    n_shared = data.draw(st.integers(0, len(kinds)))
    fields = {"vocab_size": 20, "context_length": 8, "emb_dim": 8, "n_layers": len(kinds),
              "n_heads": 2, "n_kv_heads": 1, "head_dim": 4, "hidden_dim": 8,
              "global_head_dim": 4, "per_layer_dim": 0, "layer_types": tuple(kinds),
              "kv_shared_layers": n_shared}
    if shareable(kinds, n_shared) and n_shared < len(kinds):
        assert len(Gemma4Config(**fields).kv_sources()) == len(kinds)
        return
    with pytest.raises(ValueError, match="kv_shared_layers") as error:
        Gemma4Config(**fields)
    assert error.value.parameter == "kv_shared_layers"
    assume(n_shared < len(kinds))
    hf = transformers.Gemma4TextConfig(num_hidden_layers=len(kinds), layer_types=list(kinds),
                                       num_kv_shared_layers=n_shared)
    with pytest.raises(ValueError):  # transformers refuses it too
        hf.kv_sharing_modes  # noqa: B018


def test_the_config_refuses_what_gemma4_is_not():
    for fields, parameter in (
        ({"layer_types": (FULL, SLIDING)}, "layer_types"),
        ({"layer_types": (FULL,)}, "layer_types"),
        ({"global_kv_heads": 1}, "global_kv_heads"),
        ({"partial_rotary_factor": 0.0}, "partial_rotary_factor"),
        ({"rope_factor": float("inf")}, "rope_factor"),
        ({"logit_softcap": 0.0}, "logit_softcap"),
        ({"global_head_dim": 7}, "global_head_dim"),
        ({"per_layer_dim": -1}, "per_layer_dim"),
        ({"n_experts": 4, "n_experts_per_token": 5}, "n_experts_per_token"),
        ({"n_experts": 4, "n_experts_per_token": 2, "moe_hidden_dim": 0}, "moe_hidden_dim"),
    ):
        with pytest.raises(ValueError) as error:
            Gemma4Config(n_layers=2, **fields)
        assert error.value.parameter == parameter
    with pytest.raises(TypeError) as error:
        Gemma4Config(n_layers=2, keys_equal_values=1)
    assert error.value.parameter == "keys_equal_values"
    nano = config_to_hf(Gemma4Config.from_name("gemma4-nano"))
    with pytest.raises(ValueError, match="vocab_size_per_layer_input must equal vocab_size"):
        config_from_hf({**nano, "vocab_size_per_layer_input": 7})
