"""GPT-OSS: attention sinks, clamped SwiGLU experts, the family against ``transformers``.

References: a float64 recomputation of the sink's softmax written out here; ``transformers``'
``GptOssForCausalLM`` on drawn small configurations (every weight random, sinks and biases
included, run in float64 under ``Float64Mode`` with eager attention and experts; stock
``transformers`` is checked against it at a float32 bound, so the reference itself is tested)
and its ``generate``; the parameter counts of OpenAI's model card.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components import save_pretrained
from gpt_components.generation import generate
from gpt_components.modern import DecoderModel, GroupedQueryAttention, SlidingWindowAttention
from gpt_components.modern.sliding_window import WindowLayerCache
from gpt_components.newest import (
    ClampedSwiGLUExperts,
    ClampedSwiGLUMoE,
    GptOssConfig,
    SinkAttention,
    TopKSoftmaxRouter,
    clamped_swiglu,
    sink_attention_weights,
)
from spec.helpers.hf_exact import Float64Mode
from spec.helpers.hf_random import ours_from, random_hf_model
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.newest

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-10}
KINDS = ["sliding_attention", "full_attention"]


# -- the sink -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seeds, st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))
def test_weights_over_the_real_tokens_sum_to_one_less_exactly_the_sinks_share(seed, heads, t,
                                                                              extra):
    g = generator(seed)
    s = t + extra - 1
    scores = torch.randn(2, heads, t, s, generator=g, dtype=F64) * 3
    hidden = torch.rand(t, s, generator=g) < 0.3
    scores = scores.masked_fill(hidden, float("-inf"))
    sinks = torch.randn(heads, generator=g, dtype=F64) * 3
    weights = sink_attention_weights(scores, sinks)
    # float64, written out: exp(z) / (exp(s) + sum exp(z)); the sink's share exp(s) / (...).
    exp_scores = scores.exp()
    exp_sinks = sinks.exp().view(1, heads, 1, 1)
    denominator = exp_sinks + exp_scores.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, exp_scores / denominator, **EXACT)
    share = (exp_sinks / denominator)[..., 0]
    torch.testing.assert_close(weights.sum(-1), 1 - share, **EXACT)
    assert bool((weights.sum(-1) < 1).all()) and bool((weights[..., hidden] == 0).all())


def random_weights(module, seed, std=0.4):
    g = generator(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


@st.composite
def sink_attentions(draw):
    n_kv = draw(st.sampled_from([1, 2]))
    window = draw(st.one_of(st.none(), st.integers(1, 5)))
    att = SinkAttention(16, n_kv * draw(st.sampled_from([1, 2])), n_kv, 4, window=window,
                        qkv_bias=True, out_bias=True).to(F64)
    return random_weights(att, draw(seeds)).eval()


@settings(max_examples=15, deadline=None)
@given(sink_attentions(), seeds, st.integers(1, 9))
def test_sink_attention_fast_path_equals_its_textbook_softmax_and_the_cache(att, seed, t):
    x = torch.randn(2, t, 16, generator=generator(seed), dtype=F64)
    with torch.no_grad():
        fast, (textbook, weights) = att(x), att(x, need_weights=True)
        torch.testing.assert_close(fast, textbook, **EXACT)
        # The textbook's weights, written out: per head, scores over the visible keys and a sink.
        q = att.W_query(x).view(2, t, att.n_heads, 4).transpose(1, 2)
        k = att.W_key(x).view(2, t, att.n_kv_heads, 4).transpose(1, 2)
        k = k.repeat_interleave(att.group, dim=1)
        position = torch.arange(t)
        visible = (position[:, None] >= position[None, :])
        if att.window is not None:
            visible &= position[:, None] - position[None, :] < att.window
        exp_scores = ((q @ k.transpose(2, 3)) / 2).exp() * visible  # scale 1 / sqrt(4)
        expected = exp_scores / (att.sinks.exp().view(1, -1, 1, 1) + exp_scores.sum(-1, True))
        torch.testing.assert_close(weights, expected, **EXACT)
        cache = att.new_cache(2, t, dtype=F64)
        assert isinstance(cache, WindowLayerCache) == (att.window is not None)
        steps = []
        for i in range(t):
            steps.append(att(x[:, i:i + 1], cache=cache))
            cache.advance(1)
        torch.testing.assert_close(torch.cat(steps, dim=1), fast, **EXACT)


@settings(max_examples=10, deadline=None)
@given(sink_attentions(), seeds, st.integers(1, 8))
def test_a_sink_at_minus_infinity_is_plain_windowed_or_causal_attention(att, seed, t):
    x = torch.randn(1, t, 16, generator=generator(seed), dtype=F64)
    options = {"qkv_bias": True, "out_bias": True}
    plain = (GroupedQueryAttention(16, att.n_heads, att.n_kv_heads, 4, **options)
             if att.window is None else
             SlidingWindowAttention(16, att.n_heads, att.n_kv_heads, 4, window=att.window,
                                    **options)).to(F64).eval()
    state = {k: v for k, v in att.state_dict().items() if k != "sinks"}
    plain.load_state_dict(state)
    with torch.no_grad():
        att.sinks.fill_(float("-inf"))
        torch.testing.assert_close(att(x), plain(x), **EXACT)


# -- the experts ----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seeds, st.floats(0.5, 3.0), st.floats(0.5, 10.0))
def test_clamped_swiglu_is_its_formula_with_gate_and_up_interleaved(seed, alpha, limit):
    gate_up = torch.randn(5, 12, generator=generator(seed), dtype=F64) * 8
    gate, up = gate_up[:, 0::2], gate_up[:, 1::2]
    g = torch.minimum(gate, torch.tensor(limit, dtype=F64))
    expected = (up.clamp(-limit, limit) + 1) * g / (1 + torch.exp(-alpha * g))
    torch.testing.assert_close(clamped_swiglu(gate_up, alpha, limit), expected, **EXACT)
    # Bounded whatever the input: |up + 1| <= limit + 1, and g * sigmoid(alpha * g) lies in
    # [-0.2785 / alpha, limit] (its minimum, at a negative g, is -0.27846... / alpha).
    bound = (limit + 1) * max(limit, 0.2785 / alpha)
    assert bool((clamped_swiglu(gate_up * 1e3, alpha, limit).abs() <= bound).all())


@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 6), st.data())
def test_the_router_chooses_the_top_logits_then_weighs_them_by_a_softmax_over_those(seed, e,
                                                                                    data):
    k = data.draw(st.integers(1, e))
    moe = random_weights(ClampedSwiGLUMoE(8, 6, e, k).to(F64), seed)
    x = torch.randn(7, 8, generator=generator(seed + 1), dtype=F64)
    logits, weights, experts = moe.gate(x)
    torch.testing.assert_close(logits, x @ moe.gate.weight.T + moe.gate.bias, **EXACT)
    for row in range(7):
        chosen = logits[row].argsort(descending=True)[:k]
        assert set(experts[row].tolist()) == set(chosen.tolist())
        torch.testing.assert_close(weights[row].sum(), torch.tensor(1.0, dtype=F64), **EXACT)
    # The mixture, token by token: the chosen experts' outputs, weighted.
    with torch.no_grad():
        out = moe(x)
        for row in range(7):
            expected = sum(w * moe.experts.expert(int(i), x[row:row + 1])[0]
                           for w, i in zip(weights[row], experts[row], strict=True))
            torch.testing.assert_close(out[row], expected, **EXACT)


# -- the family against transformers --------------------------------------------------------------


@st.composite
def ropes(draw):
    """Default RoPE, or YaRN as GPT-OSS uses it (and with its other options drawn)."""
    theta = draw(st.sampled_from([1e4, 1.5e5]))
    if draw(st.booleans()):
        return {"rope_type": "default", "rope_theta": theta}
    return {"rope_type": "yarn", "rope_theta": theta, "factor": draw(st.sampled_from([2.0, 32.0])),
            "original_max_position_embeddings": draw(st.sampled_from([4, 16])),
            "beta_fast": draw(st.sampled_from([32.0, 8.0])),
            "beta_slow": draw(st.sampled_from([1.0, 2.0])), "truncate": draw(st.booleans())}


@st.composite
def hf_gpt_oss_configs(draw):
    n_kv = draw(st.sampled_from([1, 2]))
    n_layers = draw(st.integers(2, 3))
    n_experts = draw(st.integers(1, 4))
    return transformers.GptOssConfig(
        vocab_size=draw(st.integers(40, 90)), hidden_size=draw(st.sampled_from([16, 24])),
        intermediate_size=draw(st.sampled_from([6, 10])), num_hidden_layers=n_layers,
        num_attention_heads=n_kv * draw(st.sampled_from([1, 2])), num_key_value_heads=n_kv,
        head_dim=draw(st.sampled_from([4, 8])), max_position_embeddings=32,
        sliding_window=draw(st.integers(1, 5)),
        layer_types=[draw(st.sampled_from(KINDS)) for _ in range(n_layers)],
        num_local_experts=n_experts, num_experts_per_tok=draw(st.integers(1, n_experts)),
        swiglu_alpha=draw(st.sampled_from([1.702, 1.0])),
        swiglu_limit=draw(st.sampled_from([7.0, 0.5])),
        rms_norm_eps=draw(st.sampled_from([1e-5, 1e-3])),
        rope_parameters=draw(ropes()),
        tie_word_embeddings=draw(st.booleans()), pad_token_id=0, bos_token_id=1,
        eos_token_id=None)


def exact(hf_model, ids):
    with Float64Mode(), torch.no_grad():
        return hf_model(ids).logits


@settings(max_examples=4, deadline=None)
@given(hf_gpt_oss_configs(), seeds, st.integers(1, 12))
def test_from_pretrained_gives_transformers_logits_and_save_pretrained_goes_back(config, seed,
                                                                                 t):
    hf_model = random_hf_model(transformers.GptOssForCausalLM, config, seed)
    ids = torch.randint(0, config.vocab_size, (2, t), generator=generator(seed))
    model = ours_from(hf_model)
    assert isinstance(model.cfg, GptOssConfig) and not model.training
    assert [block.att.window for block in model.trf_blocks] == [
        config.sliding_window if kind == "sliding_attention" else None
        for kind in config.layer_types]
    expected = exact(hf_model, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, **EXACT)
        stock = hf_model(ids).logits  # float32 inside: a loose bound
    torch.testing.assert_close(stock, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
    with tempfile.TemporaryDirectory() as directory:
        save_pretrained(model, directory)
        back = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=F64, attn_implementation="eager", experts_implementation="eager")
        assert type(back).__name__ == "GptOssForCausalLM"
        assert back.config.rope_parameters["rope_type"] == config.rope_parameters["rope_type"]
        with Float64Mode():
            back.model.rotary_emb.__init__(back.config)  # float64 frequencies, as above
        torch.testing.assert_close(exact(back.eval(), ids), expected, **EXACT)


@pytest.mark.slow
@settings(max_examples=3, deadline=None)
@given(hf_gpt_oss_configs(), seeds, st.integers(1, 4))
def test_cached_generation_equals_uncached_and_transformers_past_the_window(config, seed,
                                                                           prompt_len):
    # A window of one position: transformers' (5.25) cached generate disagrees with its own
    # greedy decoding without a cache, which ours agrees with (the forward pass is compared
    # above for windows from 1): windows of 2 or more here.
    config.sliding_window = max(config.sliding_window, 2)
    hf_model = random_hf_model(transformers.GptOssForCausalLM, config, seed)
    model = ours_from(hf_model)
    new = config.sliding_window + 6  # well past the window
    prompt = torch.randint(3, config.vocab_size, (1, prompt_len), generator=generator(seed))
    cached = generate(model, prompt, max_new_tokens=new)
    with Float64Mode(), torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=new, min_new_tokens=new,
                                   do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(cached, generate(model, prompt, max_new_tokens=new, use_cache=False))
    assert torch.equal(cached, theirs)


def _experts_step(moe, x, upstream, kernel):
    """Output and gradients (input, every parameter) of ``(moe(x) * upstream).sum()``."""
    moe.experts.kernel = kernel
    x = x.clone().requires_grad_(True)
    params = list(moe.parameters())
    out = moe(x)
    grads = torch.autograd.grad((out * upstream).sum(), [x, *params])
    return out.detach(), grads


@settings(max_examples=25, deadline=None)
@given(seeds, st.sampled_from([1, 2]) | st.integers(1, 24),  # 1-2: the gathered path
       st.sampled_from([(4, 1), (6, 2), (8, 4)]),
       st.sampled_from([F64, torch.float32]))
def test_the_grouped_experts_equal_the_textbook_loop_forward_and_gradients(seed, tokens, routing,
                                                                          dtype):
    # The grouped kernel (pairs sorted by expert, one grouped product per projection; torch's
    # grouped_mm in float32; for a token or two, each pair's matrices gathered and multiplied as
    # one batch) against the per-expert loop, computed in float64.
    n_experts, top_k = routing
    g = generator(seed)
    moe = ClampedSwiGLUMoE(16, 8, n_experts, top_k, limit=2.0)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
    moe = moe.to(dtype)
    x = torch.randn(1, tokens, 16, generator=g, dtype=dtype)
    upstream = torch.randn(x.shape, generator=g, dtype=dtype)
    out, grads = _experts_step(moe, x, upstream, "grouped")
    out_ref, grads_ref = _experts_step(moe.to(F64), x.to(F64), upstream.to(F64), "per_expert")
    tol = EXACT if dtype == F64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(out.to(F64), out_ref, **tol)
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(grad.to(F64), grad_ref, **tol)
    with pytest.raises(ValueError, match="^kernel must be one of"):
        moe.experts.kernel = "fast"
        moe(x.to(F64))


# -- sizes and arguments --------------------------------------------------------------------------


def counts(name: str) -> tuple[int, int]:
    """Total parameters and those one token runs through (its ``top_k`` experts of each layer,
    and not the embedding table: a lookup of one row), built on the meta device. A GPT-OSS
    model's blocks are alike, so one block is built and counted for all of them."""
    cfg = GptOssConfig.from_name(name)
    with torch.device("meta"):
        model = DecoderModel(dataclasses.replace(cfg, n_layers=1, layer_types=None))
    block = sum(p.numel() for p in model.trf_blocks[0].parameters())
    experts = model.trf_blocks[0].ff.experts
    assert isinstance(experts, ClampedSwiGLUExperts)
    idle = sum(p.numel() for p in experts.parameters()) * (
        cfg.n_experts - cfg.n_experts_per_token) // cfg.n_experts
    total = sum(p.numel() for p in model.parameters()) + (cfg.n_layers - 1) * block
    return total, total - cfg.n_layers * idle - model.tok_emb.weight.numel()


def test_gpt_oss_20b_and_120b_have_their_published_parameter_counts():
    # OpenAI's gpt-oss model card (arXiv 2508.10925, table 1): 20.91B total and 3.61B active
    # for gpt-oss-20b, 116.83B and 5.13B for gpt-oss-120b. Its active counts leave the
    # embedding out and keep the unembedding, as ``counts`` does. The exact totals are the sums
    # of the published checkpoints' tensor sizes (their experts unpacked from MXFP4).
    assert counts("gpt-oss-20b") == (20_914_757_184, 3_608_307_264)
    assert counts("gpt-oss-120b") == (116_829_156_672, 5_132_849_472)
    assert [round(n / 1e9, 2) for n in (*counts("gpt-oss-20b"), *counts("gpt-oss-120b"))] == [
        20.91, 3.61, 116.83, 5.13]


def test_the_config_refuses_bad_arguments_naming_them():
    nano = GptOssConfig.from_name("gpt-oss-nano")
    cases = [({"sliding_window": 0}, ValueError, "sliding_window"),
             ({"swiglu_limit": math.inf}, ValueError, "swiglu_limit"),
             ({"swiglu_alpha": math.nan}, ValueError, "swiglu_alpha"),
             ({"swiglu_limit": "7"}, TypeError, "swiglu_limit"),
             ({"n_experts_per_token": 9}, ValueError, "n_experts_per_token"),
             ({"n_experts": 0}, ValueError, "n_experts"),
             ({"layer_types": ("sliding_attention",)}, ValueError, "layer_types"),
             ({"layer_types": ("banded",) * 4}, ValueError, "layer_types"),
             ({"qk_norm": True}, ValueError, "qk_norm"),
             ({"aux_loss_coef": 0.01}, ValueError, "aux_loss_coef")]
    for fields, error, name in cases:
        with pytest.raises(error, match=name) as raised:
            dataclasses.replace(nano, **fields)
        assert raised.value.parameter == name
    for args, error, name in [((16, 4, 2, 4), ValueError, "window"),
                              ((16, 4, 2, 4), TypeError, "window")]:
        with pytest.raises(error, match=name):
            SinkAttention(*args, window=0 if error is ValueError else 2.5)
    with pytest.raises(ValueError, match="limit"):
        ClampedSwiGLUExperts(8, 4, 2, limit=math.inf)
    with pytest.raises(ValueError, match="top_k"):
        TopKSoftmaxRouter(8, 2, 3)
    with pytest.raises(ValueError, match="gate_up"):
        clamped_swiglu(torch.zeros(2, 3))


def random_nano(seed, **fields):
    cfg = GptOssConfig.from_name("gpt-oss-nano", vocab_size=64, **fields)
    return random_weights(DecoderModel(cfg).to(F64), seed, std=0.3).eval()


@settings(max_examples=3, deadline=None)
@given(seeds, st.integers(1, 10))
def test_trace_and_inspect_show_the_share_of_attention_each_sink_takes(seed, t):
    from gpt_components.inspect.inspection import inspect_prompt

    model = random_nano(seed)
    ids = torch.randint(0, 64, (1, t), generator=generator(seed))
    trace = model.trace(ids)
    for weights, share in zip(trace.attentions, trace.sink_shares, strict=True):
        torch.testing.assert_close(weights.sum(-1) + share, torch.ones_like(share), **EXACT)
        assert bool(((share > 0) & (share < 1)).all())
    with torch.no_grad():  # sinks at -inf: nothing left for them, rows sum to one again
        for block in model.trf_blocks:
            block.att.sinks.fill_(float("-inf"))
    for share in model.trace(ids).sink_shares:
        torch.testing.assert_close(share, torch.zeros_like(share), **EXACT)

    class Ids:  # a tokenizer of the ids themselves
        def encode(self, text):
            return [int(piece) for piece in text.split()]

        def decode(self, ids):
            return " ".join(map(str, ids))

    text = " ".join(str(i) for i in ids[0].tolist())
    seen = inspect_prompt(random_nano(seed), Ids(), text)
    assert seen.has_sinks and "attention sinks take" in seen.model_summary
    torch.testing.assert_close(seen.sink_shares, torch.stack(
        [share[0] for share in trace.sink_shares]), **EXACT)
    assert not inspect_prompt(model, Ids(), text).has_sinks


def test_the_published_config_json_reads_as_the_preset_and_transformers_defaults_as_120b():
    from gpt_components.newest.gpt_oss import config_from_hf, config_to_hf

    published = {  # openai/gpt-oss-20b's config.json, less its quantization and token ids
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
        "attention_bias": True, "attention_dropout": 0.0, "head_dim": 64,
        "hidden_act": "silu", "hidden_size": 2880, "initializer_range": 0.02,
        "intermediate_size": 2880, "layer_types": ["sliding_attention", "full_attention"] * 12,
        "max_position_embeddings": 131072, "num_attention_heads": 64,
        "num_experts_per_tok": 4, "num_hidden_layers": 24, "num_key_value_heads": 8,
        "num_local_experts": 32, "output_router_logits": False, "rms_norm_eps": 1e-05,
        "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                         "original_max_position_embeddings": 4096, "rope_type": "yarn",
                         "truncate": False},
        "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
        "swiglu_limit": 7.0, "tie_word_embeddings": False, "vocab_size": 201088}
    cfg = config_from_hf(published)
    assert cfg == GptOssConfig.from_name("gpt-oss-20b")
    assert config_from_hf(transformers.GptOssConfig().to_dict()) == GptOssConfig.from_name(
        "gpt-oss-120b")
    assert config_from_hf(config_to_hf(cfg)) == cfg
    back = transformers.GptOssConfig(**config_to_hf(cfg))
    assert back.rope_parameters["rope_type"] == "yarn" and back.rope_parameters["factor"] == 32
    nano = GptOssConfig.from_name("gpt-oss-nano")
    assert transformers.GptOssConfig(**config_to_hf(nano)).rope_parameters["factor"] == 4
    plain = dataclasses.replace(nano, rope_scaling=None)
    assert transformers.GptOssConfig(**config_to_hf(plain)).rope_parameters["rope_type"] \
        == "default"  # spelt out: a missing one reads as YaRN
    assert config_from_hf(config_to_hf(plain)) == plain
    unbanded = config_from_hf({**published, "sliding_window": None})
    assert unbanded.sliding_window == unbanded.context_length == 131072
    with pytest.raises(ValueError, match="rope_type must be 'default' or 'yarn'"):
        config_from_hf({**published, "rope_scaling": {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
    # A run's config.json (config_to_dict: YaRN's fields without a rope_type) reads back.
    import json

    from gpt_components.machinery.registry import config_from_dict, config_to_dict

    for kept in (cfg, nano, plain):
        assert config_from_dict(json.loads(json.dumps(config_to_dict(kept)))) == kept


def test_the_inspect_command_prints_the_sinks_share(tmp_path, capsys):
    from gpt_components.cli import main

    torch.manual_seed(0)
    model = DecoderModel(GptOssConfig.from_name("gpt-oss-nano")).eval()
    directory = save_pretrained(model, tmp_path / "nano")
    assert main(["inspect", str(directory), "--tokenizer", "gpt2", "--out",
                 str(tmp_path / "seen.html")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("attention sinks take ") and "by layer" in printed[-1]
    assert "attention sinks take" in (tmp_path / "seen.html").read_text(encoding="utf-8")
