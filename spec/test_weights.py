"""Spec of GPT-2 weights in and out (chapter 5), against Hugging Face transformers itself."""

import dataclasses
import json
import re
import sys
import tempfile
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from gpt_components import weights
from gpt_components.cli import main
from gpt_components.generation import generate
from gpt_components.model import GPTConfig, GPTModel, count_parameters
from gpt_components.weights import (
    BOOK_TO_HF,
    WeightsNotFoundError,
    config_from_hf,
    download_command,
    hf_config,
    hf_name,
    load_hf_state_dict,
    load_pretrained,
    save_pretrained,
    to_hf_state_dict,
)
from spec.strategies import generator, random_gpt_model, seeds, tiny_gpt_configs

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

pytestmark = pytest.mark.ch05


@st.composite
def hf_configs(draw):
    """Small random ``transformers.GPT2Config``s (no download)."""
    n_head = draw(st.sampled_from([1, 2, 4]))
    return transformers.GPT2Config(
        vocab_size=draw(st.integers(50, 100)),
        n_positions=draw(st.integers(4, 16)),
        n_embd=n_head * draw(st.sampled_from([2, 4, 8])),
        n_layer=draw(st.integers(1, 2)),
        n_head=n_head,
        tie_word_embeddings=draw(st.booleans()),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


def random_hf_model(config, seed, dtype):
    """A GPT2LMHeadModel with every parameter drawn (its own init zeroes biases)."""
    model = transformers.GPT2LMHeadModel(config).to(dtype).eval()
    g = generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=dtype) * 0.3
            p.copy_(noise + 1 if ".ln_" in name and name.endswith("weight") else noise)
    return model


def book_model_from(hf, dtype, kernel="sdpa"):
    cfg = config_from_hf(hf.config, drop_rate=0.0, attn_kernel=kernel)
    return load_hf_state_dict(GPTModel(cfg).to(dtype), hf.state_dict()).eval()


def token_ids(vocab_size, seed, batch, tokens):
    return torch.randint(0, vocab_size, (batch, tokens), generator=generator(seed))


@given(config=hf_configs(), seed=seeds, batch=st.integers(1, 3),
       kernel=st.sampled_from(["sdpa", "textbook"]), data=st.data())
def test_imported_gpt2_gives_transformers_logits(config, seed, batch, kernel, data):
    idx = token_ids(config.vocab_size, seed + 1, batch,
                    data.draw(st.integers(1, config.n_positions)))
    hf = random_hf_model(config, seed, torch.float64)
    # float64 pins the function; float32 only checks the dtype path, with an error bound that
    # grows with the logits' scale (two float32 summation orders differ by ~1e-6 of it).
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        hf = hf.to(dtype)
        model = book_model_from(hf, dtype, kernel)
        with torch.no_grad():
            expected = hf(idx).logits
        scale = 1.0 if dtype == torch.float64 else 1.0 + expected.abs().max().item()
        torch.testing.assert_close(model(idx), expected, rtol=tolerance,
                                   atol=tolerance * scale)


@given(config=hf_configs(), seed=seeds, data=st.data())
@pytest.mark.parametrize("use_cache", [True, False])
def test_imported_gpt2_continues_greedily_as_transformers_does(config, seed, use_cache, data):
    hf = random_hf_model(config, seed, torch.float64)
    model = book_model_from(hf, torch.float64)
    prompt = data.draw(st.integers(1, config.n_positions - 1))
    max_new_tokens = data.draw(st.integers(1, config.n_positions - prompt))
    idx = token_ids(config.vocab_size, seed + 1, data.draw(st.integers(1, 2)), prompt)
    expected = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False,
                           max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                           pad_token_id=0, eos_token_id=None)
    assert torch.equal(generate(model, idx, max_new_tokens, use_cache=use_cache), expected)


@given(cfg=tiny_gpt_configs(), seed=seeds)
def test_export_then_import_is_the_identity(cfg, seed):
    model = random_gpt_model(cfg, seed)
    back = load_hf_state_dict(GPTModel(cfg).double(), to_hf_state_dict(model))
    original, restored = model.state_dict(), back.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 2), data=st.data())
def test_exported_weights_load_into_transformers_with_no_missing_or_unexpected_keys(
        cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).double().eval()
    result = hf.load_state_dict(to_hf_state_dict(model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    idx = token_ids(cfg.vocab_size, seed + 1, batch, data.draw(st.integers(1, cfg.context_length)))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tie_weights", [False, True])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_saved_directories_round_trip_through_transformers_both_ways(tie_weights, qkv_bias):
    cfg = GPTConfig(vocab_size=64, context_length=8, emb_dim=16, n_heads=2, n_layers=2,
                    drop_rate=0.0, qkv_bias=qkv_bias, tie_weights=tie_weights)
    model = random_gpt_model(cfg, 7, dtype=torch.float32)
    idx = token_ids(64, 8, 2, 8)
    with tempfile.TemporaryDirectory() as ours, tempfile.TemporaryDirectory() as theirs:
        save_pretrained(model, ours)
        restored = load_pretrained(ours)
        assert restored.cfg == cfg and not restored.training
        torch.testing.assert_close(restored(idx), model(idx), rtol=0, atol=0)
        hf = transformers.GPT2LMHeadModel.from_pretrained(ours).eval()
        with torch.no_grad():
            torch.testing.assert_close(hf(idx).logits, model(idx), rtol=1e-5, atol=1e-5)
        hf.save_pretrained(theirs)
        again = GPTModel.from_pretrained(Path(theirs), drop_rate=0.25)  # overrides apply
        assert again.cfg == dataclasses.replace(cfg, drop_rate=0.25) and not again.training
        torch.testing.assert_close(again(idx), model(idx), rtol=0, atol=0)


def test_a_lone_safetensors_file_of_a_gpt2_size_is_recognized(monkeypatch):
    hf = random_hf_model(transformers.GPT2Config(vocab_size=64, n_positions=8, n_embd=16,
                                                 n_layer=2, n_head=2), 3, torch.float32)
    # OpenAI's own files drop the "transformer." prefix and keep the mask buffers.
    state = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items()
             if k != "lm_head.weight"}
    state["h.0.attn.bias"] = torch.ones(1, 1, 8, 8)
    idx = token_ids(64, 4, 1, 8)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        save_file(state, path)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not one of the four "
                                             r"GPT-2 sizes .*config\.json beside it$"):
            load_pretrained(path)
        monkeypatch.setitem(weights._GPT2_SIZES, (16, 2), ("test/tiny", 2))
        model = load_pretrained(path)
        # With a head of its own (not a copy of wte) the model is read as untied.
        hf_untied = random_hf_model(transformers.GPT2Config(
            vocab_size=64, n_positions=8, n_embd=16, n_layer=2, n_head=2,
            tie_word_embeddings=False), 4, torch.float32)
        save_file({k: v.contiguous() for k, v in hf_untied.state_dict().items()}, path)
        untied = load_pretrained(path)
    assert model.cfg.tie_weights and model.cfg.qkv_bias and not untied.cfg.tie_weights
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(untied(idx), hf_untied(idx).logits, rtol=1e-5, atol=1e-5)


def test_an_untied_model_takes_its_head_from_wte_when_the_checkpoint_has_none():
    # OpenAI's files hold no lm_head: the book's untied gpt2-small copies wte into out_head.
    hf = random_hf_model(transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=16,
                                                 n_layer=1, n_head=2), 5, torch.float64)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    cfg = config_from_hf(hf.config, tie_weights=False)
    model = load_hf_state_dict(GPTModel(cfg).double(), state).eval()
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, hf.state_dict()["transformer.wte.weight"])
    idx = token_ids(50, 6, 2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), hf(idx).logits, rtol=1e-10, atol=1e-10)
    # A tensor the model has no place for is named, not ignored.
    extra = {**state, "transformer.h.1.ln_1.weight": torch.ones(16)}
    for qkv_bias in (True, False):
        with pytest.raises(ValueError, match=r"^state_dict has tensor 'transformer\.h\.1\.ln_1\."
                                             r"weight', which the model has no place for"):
            load_hf_state_dict(GPTModel(dataclasses.replace(cfg, qkv_bias=qkv_bias)),
                               {**extra, "transformer.h.0.attn.c_attn.bias": torch.zeros(48)})


def test_zero_biases_exported_for_a_model_without_them_take_its_dtype():
    cfg = GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2, n_layers=1,
                    qkv_bias=False)
    for dtype in (torch.float64, torch.bfloat16):
        state = to_hf_state_dict(GPTModel(cfg).to(dtype))
        assert {t.dtype for t in state.values()} == {dtype}
        assert not state["transformer.h.0.attn.c_attn.bias"].any()


def test_a_saved_directory_holds_transformers_config_and_safetensors_metadata(tmp_path):
    cfg = GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2, n_layers=1,
                    drop_rate=0.25, qkv_bias=False, tie_weights=False)
    directory = save_pretrained(GPTModel(cfg), tmp_path / "not" / "yet" / "made")
    assert json.loads((directory / "config.json").read_text(encoding="utf-8")) == {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50,
        "n_positions": 4, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.25,
        "embd_pdrop": 0.25, "attn_pdrop": 0.25, "tie_word_embeddings": False, "qkv_bias": False,
        "dtype": "float32"}
    with safe_open(str(directory / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    config = transformers.AutoConfig.from_pretrained(directory)
    assert (config.model_type, config.attn_pdrop, config.embd_pdrop) == ("gpt2", 0.25, 0.25)


def test_a_config_is_read_from_a_dict_a_gpt2config_or_any_object_with_its_fields():
    fields = {"vocab_size": 50, "n_positions": 8, "n_embd": 16, "n_layer": 1, "n_head": 2}
    expected = GPTConfig(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=1,
                         drop_rate=0.1, qkv_bias=True, tie_weights=True)  # GPT-2's defaults
    assert config_from_hf(fields) == expected
    assert config_from_hf(types.SimpleNamespace(**fields)) == expected
    assert config_from_hf(transformers.GPT2Config(**fields)) == expected
    for accepted in ({"activation_function": "gelu_pytorch_tanh"}, {"n_inner": 64}):
        assert config_from_hf({**fields, **accepted}) == expected
    with pytest.raises(ValueError, match=r"^config n_inner must be None or 4 \* n_embd = 64, "
                                         r"got 48$"):
        config_from_hf({**fields, "n_inner": 48})
    with pytest.raises(ValueError, match=r"^config activation_function must be GPT-2's tanh "
                                         r"GELU \('gelu_new'\), got 'relu'$"):
        config_from_hf({**fields, "activation_function": "relu"})


def _fake_hub(monkeypatch, tmp_path, cached: bool, reachable: bool, serves: bool = True):
    """A huggingface_hub whose cache holds the files (or not) and a hub that answers (or not)."""
    asked = []

    def fake_download(repo, filename, local_files_only=False):
        asked.append((repo, filename, local_files_only))
        if local_files_only and not cached or not local_files_only and not serves:
            raise OSError("not in the cache" if local_files_only else "no network")
        return str(tmp_path / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(hf_hub_download=fake_download))
    monkeypatch.setattr(weights, "_hub_reachable", lambda timeout=3.0: reachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return asked


@pytest.mark.parametrize("cached", [True, False])
def test_a_model_name_is_read_from_the_hub_cache_first_then_downloaded(monkeypatch, tmp_path,
                                                                       cached):
    cfg = GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
    model = random_gpt_model(cfg, 3, dtype=torch.float32)
    save_pretrained(model, tmp_path)
    asked = _fake_hub(monkeypatch, tmp_path, cached=cached, reachable=True)
    loaded = load_pretrained("gpt2-medium")
    repo = "openai-community/gpt2-medium"
    cache = [(repo, "config.json", True), (repo, "model.safetensors", True)]
    assert asked == (cache if cached else cache[:1] + [(repo, "config.json", False),
                                                       (repo, "model.safetensors", False)])
    idx = token_ids(50, 1, 1, 4)
    torch.testing.assert_close(loaded(idx), model.eval()(idx), rtol=0, atol=0)


@pytest.mark.parametrize("why", ["HF_HUB_OFFLINE", "unreachable", "download fails",
                                 "no huggingface_hub"])
def test_a_model_name_offline_fails_at_once_with_the_hf_download_command(monkeypatch, tmp_path,
                                                                          why, capsys):
    asked = _fake_hub(monkeypatch, tmp_path, cached=False, reachable=why == "download fails",
                      serves=False)
    if why == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(weights, "_hub_reachable", lambda timeout=3.0: 1 / 0)
    if why == "no huggingface_hub":
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    command = "hf download openai-community/gpt2 config.json model.safetensors --local-dir gpt2"
    with pytest.raises(WeightsNotFoundError) as error:
        GPTModel.from_pretrained("gpt2")
    message = str(error.value)
    assert message.startswith("name_or_path 'gpt2' ") and message.endswith(f"run: {command}")
    assert "huggingface-cli" not in message and "\n" not in message
    if why in ("HF_HUB_OFFLINE", "unreachable"):  # no download was tried
        assert all(local for _, _, local in asked)
    monkeypatch.chdir(tmp_path)
    for flag, argv in (("source", ["generate", "gpt2"]),
                       ("--weights", ["finetune-classifier", "--weights", "gpt2", "--out", "o"])):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        # The flag (from error.parameter), then what the library said of the name.
        assert err.startswith(f"gpt-components: error: {flag} 'gpt2' ")
        assert err.endswith(f"run: {command}\n") and err.count("\n") == 1
    assert download_command("gpt2-xl") == ("hf download openai-community/gpt2-xl config.json "
                                           "model.safetensors --local-dir gpt2-xl")


def test_the_hub_probe_answers_quickly_without_a_network(monkeypatch):
    def refused(address, timeout):
        assert timeout <= 3
        raise OSError("Name or service not known")

    monkeypatch.setattr(weights.socket, "create_connection", refused)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    assert weights._hub_reachable() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert weights._hub_reachable() is True  # a proxy: let the hub itself try


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_are_refused_naming_the_tensor(dtype):
    cfg = GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
    state = to_hf_state_dict(GPTModel(cfg))
    state["transformer.h.0.mlp.c_fc.weight"] = state["transformer.h.0.mlp.c_fc.weight"].to(dtype)
    with pytest.raises(ValueError, match=rf"^state_dict tensor 'transformer\.h\.0\.mlp\.c_fc\."
                                         rf"weight' has dtype {dtype}, but 'trf_blocks\.0\.ff\."
                                         rf"layers\.0\.weight' needs floating-point"):
        load_hf_state_dict(GPTModel(cfg), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gpt2_weights_are_converted_with_a_warning(tmp_path, dtype):
    cfg = GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2, n_layers=1)
    model = random_gpt_model(cfg, 5, dtype=torch.float32).to(dtype)
    save_pretrained(model, tmp_path)
    with pytest.warns(UserWarning, match=f"converted GPT-2 weights from {dtype} to torch.float32"):
        loaded = load_pretrained(tmp_path)
    assert loaded.tok_emb.weight.dtype == torch.float32
    assert torch.equal(loaded.tok_emb.weight, model.tok_emb.weight.float())


@pytest.mark.parametrize("config, words", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object, got list"),
    ('{"n_embd": 8}', "config must give vocab_size, n_positions, n_embd, n_head, n_layer; it has "
                      "no vocab_size, n_positions, n_head, n_layer"),
])
def test_a_broken_config_json_is_named(tmp_path, config, words):
    save_pretrained(GPTModel(GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2,
                                       n_layers=1)), tmp_path)
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ValueError, match=re.escape(words)):
        load_pretrained(tmp_path)


@given(config=hf_configs(), seed=seeds,
       change=st.sampled_from(["vocab_size", "n_positions", "n_embd", "n_layer"]))
def test_a_checkpoint_of_another_shape_is_refused_naming_the_first_mismatching_tensor(
        config, seed, change):
    hf = random_hf_model(config, seed, torch.float32)
    cfg = config_from_hf(config)
    field, expected = {
        "vocab_size": ("vocab_size", "transformer.wte.weight"),
        "n_positions": ("context_length", "transformer.wpe.weight"),
        "n_embd": ("emb_dim", "transformer.wte.weight"),
        "n_layer": ("n_layers", f"transformer.h.{cfg.n_layers}.attn.c_attn.weight"),
    }[change]
    if change == "n_embd":
        other = dataclasses.replace(cfg, emb_dim=cfg.emb_dim * 2)
    else:
        other = dataclasses.replace(cfg, **{field: getattr(cfg, field) + 1})
    with pytest.raises(ValueError, match=expected.replace(".", r"\.")):
        load_hf_state_dict(GPTModel(other), hf.state_dict())


def test_nonzero_qkv_biases_are_not_silently_dropped():
    hf = random_hf_model(transformers.GPT2Config(vocab_size=50, n_positions=4, n_embd=8,
                                                 n_layer=1, n_head=2), 0, torch.float32)
    cfg = config_from_hf(hf.config, qkv_bias=False)
    with pytest.raises(ValueError, match=r"^state_dict tensor 'transformer\.h\.0\.attn\.c_attn\."
                                         r"bias' holds query/key/value biases, but the model has "
                                         r"none: build it with qkv_bias=True$"):
        load_hf_state_dict(GPTModel(cfg), hf.state_dict())


def test_the_name_map_covers_every_parameter_once_and_matches_transformers_names():
    cfg = GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2, n_layers=2,
                    qkv_bias=True)
    book = GPTModel(cfg).state_dict().keys()
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).state_dict()
    assert {hf_name(name) for name in book} == set(hf)
    assert len(BOOK_TO_HF) == 21


def test_gpt2_small_as_openai_released_it_has_transformers_parameter_count():
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
        ours = GPTModel(GPTConfig.from_name("gpt2-small", qkv_bias=True, tie_weights=True))
    assert count_parameters(hf) == count_parameters(ours) == 124_439_808
    assert config_from_hf(json.loads(json.dumps(hf_config(ours.cfg)))) == ours.cfg


def test_bad_inputs_are_refused_naming_the_parameter():
    model = GPTModel(GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2,
                               n_layers=1))
    with pytest.raises(ValueError, match="book_name"):
        hf_name("trf_blocks.0.att.W_q.weight")
    with pytest.raises(TypeError, match="^model must be a GPTModel, got Linear$"):
        load_hf_state_dict(torch.nn.Linear(2, 2), {})
    with pytest.raises(TypeError, match="^state_dict must be a mapping .* got list$"):
        load_hf_state_dict(model, [1, 2])
    with pytest.raises(ValueError, match="transformer.wte.weight"):
        load_hf_state_dict(model, {})
    with pytest.raises(TypeError, match="^model must be a GPTModel, got Linear$"):
        to_hf_state_dict(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="^name_or_path 'no/such/dir' does not exist"):
        load_pretrained("no/such/dir")
    with pytest.raises(TypeError, match="^name_or_path must be a str or Path, got int$"):
        load_pretrained(42)
    with tempfile.TemporaryDirectory() as empty:
        with pytest.raises(WeightsNotFoundError,
                           match=rf"^name_or_path '{re.escape(empty)}' has no model\.safetensors$"):
            load_pretrained(empty)
    with pytest.raises(ValueError, match="activation_function"):
        config_from_hf({**hf_config(model.cfg), "activation_function": "relu"})
    with pytest.raises(ValueError, match="layer_norm_epsilon"):
        config_from_hf({**hf_config(model.cfg), "layer_norm_epsilon": 1e-6})
    with tempfile.TemporaryDirectory() as empty, pytest.raises(ValueError, match="safetensors"):
        load_pretrained(empty)
