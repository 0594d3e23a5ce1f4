"""Llama 3 and Qwen3 (gpt_components.modern) against transformers' LlamaForCausalLM and
Qwen3ForCausalLM: drawn small configurations with every weight random, float64 logits equal to
~1e-10 through from_pretrained and back through save_pretrained; attention maps; greedy
generation with and without the cache equal to transformers' generate; the registry."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import from_pretrained, generate, save_pretrained
from gpt_components.machinery.registry import (
    build_model,
    config_from_dict,
    config_to_dict,
    family_for_model_type,
    preset_config,
    preset_names,
)
from gpt_components.model import GPTConfig, GPTModel, count_parameters
from gpt_components.modern import DecoderModel, LlamaConfig, Qwen3Config, llama, qwen3
from spec.helpers.hf_exact import Float64Mode
from spec.strategies import decoding_layout, generator, layouts, seeds

pytestmark = pytest.mark.modern
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
f64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}


@st.composite
def hf_configs(draw, family):
    """A small config.json dict of ``family`` ("llama" or "qwen3"): GQA, MQA and MHA, tied and
    untied, head_dim free of emb_dim / n_heads, llama3 RoPE scaling on and off."""
    n_kv = draw(st.sampled_from([1, 2]))
    n_heads = n_kv * draw(st.sampled_from([1, 2, 3]))
    config = {
        "vocab_size": draw(st.integers(32, 63)),
        "hidden_size": draw(st.sampled_from([12, 24])),
        "intermediate_size": draw(st.integers(8, 40)),
        "num_hidden_layers": draw(st.integers(1, 2)),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": draw(st.sampled_from([4, 6, 8])),
        "max_position_embeddings": 24,
        "rms_norm_eps": draw(st.sampled_from([1e-6, 1e-5, 1e-2])),
        "tie_word_embeddings": draw(st.booleans()),
        "attn_implementation": "eager",
    }
    theta = draw(st.sampled_from([100.0, 10000.0, 500000.0]))
    if family == "llama":
        config["attention_bias"] = draw(st.booleans())
    if family == "llama" and draw(st.booleans()):
        config["rope_parameters"] = {
            "rope_type": "llama3", "rope_theta": theta, "factor": draw(st.sampled_from([2., 8.])),
            "low_freq_factor": 1.0, "high_freq_factor": draw(st.sampled_from([2.0, 4.0])),
            "original_max_position_embeddings": draw(st.sampled_from([4, 8, 16]))}
    else:
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    return config


HF_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
              "qwen3": ("Qwen3Config", "Qwen3ForCausalLM")}


def random_hf_model(family, config, seed):
    """transformers' model of ``config`` in float64, every parameter drawn (norms around 1)."""
    config_class, model_class = (getattr(transformers, name) for name in HF_CLASSES[family])
    g = generator(seed)
    with Float64Mode():  # HF computes its RoPE frequencies at construction
        hf = model_class(config_class(**config)).to(f64).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=f64) * 0.5
            p.copy_(noise + 1 if "norm" in name else noise)
    return hf


def hf_logits(hf, ids, **kwargs):
    with torch.no_grad(), Float64Mode():
        return hf(ids, **kwargs)


def check_equal_to_transformers(family, config, seed):
    hf = random_hf_model(family, config, seed)
    g = generator(seed + 1)
    ids = torch.randint(0, config["vocab_size"], (2, 9), generator=g)
    with tempfile.TemporaryDirectory() as theirs, tempfile.TemporaryDirectory() as ours_dir:
        hf.save_pretrained(theirs)
        ours = from_pretrained(theirs)
        assert type(ours.cfg) is {"llama": LlamaConfig, "qwen3": Qwen3Config}[family]
        assert ours.tok_emb.weight.dtype == f64 and not ours.training
        assert count_parameters(ours) == count_parameters(hf)
        assert layouts(ours) == decoding_layout(ours)  # laid out for decoding as it was read
        expected = hf_logits(hf, ids, output_attentions=True)
        torch.testing.assert_close(ours(ids), expected.logits, **EXACT)
        ours.train()  # every weight row-major for training: the same function
        assert all(p.is_contiguous() for p in ours.parameters())
        torch.testing.assert_close(ours(ids), expected.logits, **EXACT)
        ours.eval()
        trace = ours.trace(ids)
        for mine, theirs_att in zip(trace.attentions, expected.attentions, strict=True):
            torch.testing.assert_close(mine, theirs_att, **EXACT)
        # The float64 mode is itself checked: stock transformers agrees, loosely.
        with torch.no_grad():
            stock = hf(ids).logits
        torch.testing.assert_close(stock, expected.logits, rtol=1e-4, atol=1e-4)
        # And back: transformers loads what we save, with the same logits.
        save_pretrained(ours, ours_dir)
        with Float64Mode():
            again = transformers.AutoModelForCausalLM.from_pretrained(ours_dir, dtype=f64).eval()
        torch.testing.assert_close(hf_logits(again, ids).logits, expected.logits, **EXACT)
        # Greedy decoding: cached == uncached == transformers' generate, token for token.
        prompt = ids[:, :3]
        with torch.no_grad(), Float64Mode():
            hf_out = hf.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, attention_mask=torch.ones_like(prompt))
        assert torch.equal(generate(ours, prompt, 8), hf_out)
        assert torch.equal(generate(ours, prompt, 8, use_cache=False), hf_out)


@given(hf_configs("llama"), seeds)
@settings(deadline=None, max_examples=6)
def test_llama_equals_transformers_both_ways_logits_attentions_and_greedy_generation(config,
                                                                                     seed):
    check_equal_to_transformers("llama", config, seed)


@given(hf_configs("qwen3"), seeds)
@settings(deadline=None, max_examples=6)
def test_qwen3_equals_transformers_both_ways_logits_attentions_and_greedy_generation(config,
                                                                                     seed):
    check_equal_to_transformers("qwen3", config, seed)


@st.composite
def tiny_decoder_configs(draw):
    family = draw(st.sampled_from([LlamaConfig, Qwen3Config]))
    n_kv = draw(st.sampled_from([1, 2]))
    return family(vocab_size=draw(st.integers(16, 63)), context_length=draw(st.integers(4, 12)),
                  emb_dim=draw(st.sampled_from([8, 16])), n_layers=draw(st.integers(1, 2)),
                  n_heads=n_kv * draw(st.sampled_from([1, 2])), n_kv_heads=n_kv,
                  head_dim=draw(st.sampled_from([2, 4, 6])), hidden_dim=draw(st.integers(4, 24)),
                  rope_theta=draw(st.sampled_from([100.0, 10000.0])),
                  tie_weights=draw(st.booleans()),
                  attn_kernel=draw(st.sampled_from(["sdpa", "textbook"])))


def random_decoder(cfg, seed):
    model = DecoderModel(cfg).to(f64)
    g = generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=f64) * 0.5
            p.copy_(noise + 1 if "norm" in name else noise)
    return model.eval()


@given(tiny_decoder_configs(), seeds, st.integers(1, 4), st.integers(1, 20))
@settings(deadline=None, max_examples=25)
def test_cached_generation_equals_uncached_past_the_context_too(cfg, seed, prompt_len, steps):
    model = random_decoder(cfg, seed)
    prompt = torch.randint(0, cfg.vocab_size, (2, min(prompt_len, cfg.context_length)),
                           generator=generator(seed + 1))
    cached = generate(model, prompt, steps, temperature=1.0, generator=generator(seed))
    plain = generate(model, prompt, steps, temperature=1.0, generator=generator(seed),
                     use_cache=False)
    assert torch.equal(cached, plain)


@given(tiny_decoder_configs(), seeds, st.integers(1, 6), st.data())
@settings(deadline=None, max_examples=25)
def test_logits_with_a_kv_cache_equal_logits_without(cfg, seed, first, data):
    model = random_decoder(cfg, seed)
    t = data.draw(st.integers(first, cfg.context_length)) if first <= cfg.context_length else 0
    if t == 0:
        return
    ids = torch.randint(0, cfg.vocab_size, (2, t), generator=generator(seed + 1))
    cache = model.new_kv_cache(2)
    pieces = [model(ids[:, :first], kv_cache=cache)]
    pieces += [model(ids[:, i:i + 1], kv_cache=cache) for i in range(first, t)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(ids), **EXACT)
    assert cache.length == t


@given(tiny_decoder_configs())
@settings(deadline=None, max_examples=15)
def test_a_saved_config_dict_builds_the_same_model_through_json(cfg):
    saved = json.loads(json.dumps(config_to_dict(cfg)))
    assert saved["family"] == cfg.family and config_from_dict(saved) == cfg
    assert type(build_model(saved)) is DecoderModel
    assert family_for_model_type(cfg.family).config_class is type(cfg)
    module = {"llama": llama, "qwen3": qwen3}[cfg.family]
    back = module.config_from_hf(json.loads(json.dumps(module.config_to_hf(cfg))))
    assert back == dataclasses.replace(cfg, attn_kernel="sdpa")  # a kernel is not a weight


def test_gpt2_runs_saved_without_a_family_key_still_build():
    fields = {"vocab_size": 50, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 1}
    assert config_from_dict(fields) == GPTConfig(**fields)
    assert config_from_dict(config_to_dict(GPTConfig(**fields))) == GPTConfig(**fields)
    assert type(build_model(fields)) is GPTModel
    with pytest.raises(ValueError, match=r"^family must be one of \[.*'gpt2'.*\], got 'mamba' "
                                         r"\(did you mean 'llama'\?\)$"):
        config_from_dict({"family": "mamba"})
    with pytest.raises(ValueError, match=r"^config model_type must be one of .*got 'bert'$"):
        family_for_model_type("bert")


@pytest.mark.parametrize(("name", "count"), [
    ("llama3.2-1b", 1_235_814_400), ("llama3.2-3b", 3_212_749_824), ("llama3-8b", 8_030_261_248),
    ("qwen3-0.6b", 596_049_920), ("qwen3-1.7b", 1_720_574_976)])
def test_published_sizes_have_their_published_parameter_counts(name, count):
    assert name in preset_names()
    with torch.device("meta"):
        model = build_model(preset_config(name))
    assert count_parameters(model) == count


def test_from_pretrained_reads_both_rope_spellings_and_refuses_what_it_cannot_build(tmp_path):
    model = random_decoder(LlamaConfig.from_name("llama3-nano", vocab_size=40, n_layers=1), 0)
    directory = save_pretrained(model, tmp_path / "llama")
    config = json.loads((directory / "config.json").read_text())
    del config["rope_theta"], config["rope_scaling"]
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": model.cfg.rope_theta}
    (directory / "config.json").write_text(json.dumps(config))
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(from_pretrained(directory)(ids), model(ids), **EXACT)
    (directory / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="^config hidden_act must be 'silu', got 'gelu'$"):
        from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match=r"^file '.*' has no tensor 'model\.layers\.1\."):
        from_pretrained(directory)
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(ValueError, match="^config model_type must be one of"):
        from_pretrained(directory)


def test_from_pretrained_refuses_a_checkpoint_of_mixed_precision_naming_tensor_and_file(
        tmp_path):
    from safetensors.torch import load_file, save_file

    model = random_decoder(LlamaConfig.from_name("llama3-nano", vocab_size=40, n_layers=1), 0)
    directory = save_pretrained(model.float(), tmp_path / "llama")
    file = directory / "model.safetensors"
    state = load_file(file)
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"].half()
    save_file(state, file)
    with pytest.raises(ValueError, match=rf"^file '{file}' tensor 'model\.layers\.0\.mlp\."
                                         r"up_proj\.weight' has dtype torch\.float16, but .* has "
                                         r"torch\.float32"):
        from_pretrained(directory)
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(state, file)
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\.mlp\.up_proj\.weight' has "
                                         r"shape \(3, 3\), but 'trf_blocks\.0\.ff\.fc2\.weight' "
                                         r"needs \(128, 48\)"):
        from_pretrained(directory)
    file.write_bytes(file.read_bytes()[:-8])  # truncated: named from the header alone
    with pytest.raises(ValueError, match="is truncated or corrupted"):
        from_pretrained(directory)


def test_a_config_json_that_is_not_json_is_named(tmp_path):
    model = random_decoder(LlamaConfig.from_name("llama3-nano", vocab_size=40, n_layers=1), 0)
    directory = save_pretrained(model, tmp_path / "llama")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"^'{directory / 'config.json'}' is not valid JSON"):
        from_pretrained(directory)
    (directory / "config.json").write_text("[1]")
    with pytest.raises(ValueError, match="must hold a JSON object, got list"):
        from_pretrained(directory)


@pytest.mark.parametrize(("preset", "field", "value"), [
    ("llama3-nano", "norm_eps", math.inf), ("llama3-nano", "norm_eps", math.nan),
    ("qwen3-nano", "rope_theta", math.nan), ("llama3-nano", "drop_rate", math.nan),
    ("deepseek-v3-nano", "routed_scaling_factor", math.nan),
    ("gemma3-nano", "rope_local_theta", math.inf),
    ("qwen3-moe-nano", "aux_loss_coef", math.nan)])
def test_configs_refuse_nan_and_infinite_floats_naming_the_field(preset, field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be a float .*got {value}") as error:
        preset_config(preset, **{field: value})
    assert error.value.parameter == field


def test_rope_scaling_refuses_nan_and_infinite_factors():
    from gpt_components.modern.rope import Llama3RopeScaling

    for field in ("factor", "low_freq_factor", "high_freq_factor"):
        for value in (math.nan, math.inf):
            scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_context_length": 8192, field: value}
            if field == "low_freq_factor" and value == math.inf:
                continue  # refused as > high_freq_factor: no finite check needed to catch it
            with pytest.raises(ValueError, match=rf"{field} must be a float > 0"):
                LlamaConfig.from_name("llama3-nano", rope_scaling=Llama3RopeScaling(**scaling))


def test_a_misspelt_preset_is_answered_with_the_closest_name():
    with pytest.raises(ValueError, match=r"^preset must be the name of a preset, got 'llama3-nan' "
                                         r"\(did you mean 'llama3-nano'\?\)$") as error:
        preset_config("llama3-nan")  # one letter off: the name meant, no list to read
    assert error.value.parameter == "preset"
    with pytest.raises(ValueError, match=r"^preset must be one of the presets \(the smallest of "
                                         r"each family: gpt-nano, .*\), got 'llama-huge'"):
        preset_config("llama-huge")  # nothing close enough: each family's smallest
    with pytest.raises(ValueError, match=r"did you mean 'qwen3-nano'\?"):
        Qwen3Config.from_name("qwen3-nanoo")
    with pytest.raises(TypeError, match="^preset must be a non-empty str, got int$"):
        preset_config(3)
    with pytest.raises(ValueError, match=r"llama3-nano.*got 'zzz'$"):
        preset_config("zzz")
