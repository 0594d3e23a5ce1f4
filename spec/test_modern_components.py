"""Properties of the modern decoder's components (gpt_components.modern): RMSNorm, RoPE,
SwiGLU, grouped-query attention with QK-norm, the per-layer KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.attention import MultiHeadAttention
from gpt_components.modern import (
    DecoderConfig,
    DecoderModel,
    GroupedQueryAttention,
    Llama3RopeScaling,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    YarnRopeScaling,
    apply_rope,
    rope_inverse_frequencies,
    yarn_mscale,
)
from spec.helpers.hf_exact import Float64Mode
from spec.strategies import generator, seeds

pytestmark = pytest.mark.modern
f64 = torch.float64


def _randn(g, *shape, std=1.0):
    return torch.randn(*shape, generator=g, dtype=f64) * std


def _randomize(module, g, std=0.3):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_randn(g, *p.shape, std=std) + (1.0 if "norm" in name else 0.0))
    return module


# ---- RMSNorm -------------------------------------------------------------------------------

@given(seeds, st.integers(1, 32), st.sampled_from([1e-6, 1e-5, 0.1]), st.sampled_from([0.0, 1.0]))
@settings(deadline=None, max_examples=30)
def test_rmsnorm_equals_torch_rms_norm(seed, dim, eps, offset):
    g = generator(seed)
    norm = RMSNorm(dim, eps=eps, offset=offset).to(f64)
    with torch.no_grad():
        norm.weight.copy_(_randn(g, dim))
    x = _randn(g, 2, 3, dim, std=3.0)
    expected = F.rms_norm(x, (dim,), weight=norm.weight + offset, eps=eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)


def test_rmsnorm_starts_as_the_identity_scale_and_keeps_the_dtype():
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    for offset in (0.0, 1.0):
        norm = RMSNorm(8, offset=offset).to(torch.bfloat16)
        assert norm(x).dtype == torch.bfloat16
        expected = F.rms_norm(x.float(), (8,), eps=1e-6).to(torch.bfloat16)
        torch.testing.assert_close(norm(x), expected)
    with pytest.raises(ValueError, match="^eps must be a float > 0, got 0$"):
        RMSNorm(4, eps=0)
    with pytest.raises(ValueError, match="^dim must be an int >= 1, got 0$"):
        RMSNorm(0)


# ---- RoPE ----------------------------------------------------------------------------------

head_dims = st.sampled_from([2, 4, 8, 16])
thetas = st.sampled_from([10000.0, 500000.0, 1e6])
scalings = st.one_of(st.none(), st.builds(
    Llama3RopeScaling, factor=st.sampled_from([2.0, 8.0, 32.0]),
    low_freq_factor=st.sampled_from([1.0, 2.0]), high_freq_factor=st.sampled_from([4.0, 8.0]),
    original_context_length=st.sampled_from([16, 64, 8192])))
yarn_scalings = st.builds(
    YarnRopeScaling, factor=st.sampled_from([1.5, 4.0, 32.0, 40.0]),
    original_context_length=st.sampled_from([16, 64, 4096]),
    beta_fast=st.sampled_from([8.0, 32.0]), beta_slow=st.sampled_from([0.5, 1.0]),
    mscale=st.sampled_from([None, 0.707, 1.0]), mscale_all_dim=st.sampled_from([None, 1.0]),
    attention_factor=st.sampled_from([None, None, 1.3]), truncate=st.booleans())


@given(seeds, head_dims, thetas, scalings, st.integers(0, 10_000))
@settings(deadline=None, max_examples=30)
def test_rotation_preserves_norms(seed, head_dim, theta, scaling, offset):
    g = generator(seed)
    cos, sin = RotaryEmbedding(head_dim, theta, scaling)(torch.arange(offset, offset + 5), f64)
    x = _randn(g, 2, 3, 5, head_dim)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1),
                               rtol=1e-12, atol=1e-12)


@given(seeds, head_dims, thetas, scalings, st.integers(0, 500), st.integers(0, 500),
       st.integers(0, 5000))
@settings(deadline=None, max_examples=30)
def test_query_key_scores_depend_only_on_the_distance(seed, head_dim, theta, scaling, m, n,
                                                      shift):
    g = generator(seed)
    rope = RotaryEmbedding(head_dim, theta, scaling)
    q, k = _randn(g, head_dim), _randn(g, head_dim)

    def score(qpos, kpos):
        cos, sin = rope(torch.tensor([qpos, kpos]), f64)
        return apply_rope(q, cos[0], sin[0]) @ apply_rope(k, cos[1], sin[1])

    torch.testing.assert_close(score(m + shift, n + shift), score(m, n), rtol=1e-9, atol=1e-9)


@given(seeds, head_dims, thetas, st.integers(0, 4000))
@settings(deadline=None, max_examples=30)
def test_rope_equals_the_complex_number_formulation(seed, head_dim, theta, start):
    g = generator(seed)
    positions = torch.arange(start, start + 4)
    x = _randn(g, 3, 4, head_dim)
    cos, sin = RotaryEmbedding(head_dim, theta)(positions, f64)
    # Pair feature i with feature i + head_dim/2 as one complex number, turn it by e^{i m w_i}.
    half = head_dim // 2
    w = theta ** (-torch.arange(half, dtype=f64) * 2 / head_dim)
    z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(
        torch.ones(4, half, dtype=f64), positions.to(f64)[:, None] * w)
    torch.testing.assert_close(apply_rope(x, cos, sin), torch.cat([z.real, z.imag], dim=-1),
                               rtol=1e-10, atol=1e-10)


@given(seeds, head_dims, thetas, st.one_of(scalings, yarn_scalings))
@settings(deadline=None, max_examples=20)
def test_rope_equals_transformers_rotary_functions(seed, head_dim, theta, scaling):
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    rope_parameters = {"rope_type": "default", "rope_theta": theta}
    if isinstance(scaling, Llama3RopeScaling):
        rope_parameters = {"rope_type": "llama3", "rope_theta": theta, "factor": scaling.factor,
                           "low_freq_factor": scaling.low_freq_factor,
                           "high_freq_factor": scaling.high_freq_factor,
                           "original_max_position_embeddings": scaling.original_context_length}
    if isinstance(scaling, YarnRopeScaling):
        rope_parameters = {"rope_type": "yarn", "rope_theta": theta, "factor": scaling.factor,
                           "original_max_position_embeddings": scaling.original_context_length,
                           "beta_fast": scaling.beta_fast, "beta_slow": scaling.beta_slow,
                           "truncate": scaling.truncate,
                           **{key: getattr(scaling, key)
                              for key in ("mscale", "mscale_all_dim", "attention_factor")
                              if getattr(scaling, key) is not None}}
    config = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2,
                                      head_dim=head_dim, rope_parameters=rope_parameters,
                                      max_position_embeddings=10_000)
    g = generator(seed)
    positions = torch.randint(0, 5000, (6,), generator=g)
    q, k = _randn(g, 1, 2, 6, head_dim), _randn(g, 1, 2, 6, head_dim)
    ours = RotaryEmbedding(head_dim, theta, scaling)(positions, f64)
    with Float64Mode():
        hf_rope = modeling_llama.LlamaRotaryEmbedding(config)
        cos, sin = hf_rope(q, positions[None])
        expected = modeling_llama.apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(ours[0], cos[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours[1], sin[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(apply_rope(q, *ours), expected[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(apply_rope(k, *ours), expected[1], rtol=1e-12, atol=1e-12)
    stock = modeling_llama.LlamaRotaryEmbedding(config).inv_freq  # float32, as HF keeps it
    torch.testing.assert_close(rope_inverse_frequencies(head_dim, theta, scaling).float(), stock,
                               rtol=1e-6, atol=0)


@given(seeds, st.sampled_from([8, 32, 64, 128]), thetas, yarn_scalings, st.integers(0, 10_000))
@settings(deadline=None, max_examples=30)
def test_yarn_keeps_fast_frequencies_divides_slow_ones_and_scales_norms(seed, head_dim, theta,
                                                                        scaling, offset):
    plain = rope_inverse_frequencies(head_dim, theta)
    scaled = rope_inverse_frequencies(head_dim, theta, scaling)
    # How many whole turns each frequency makes within the original context.
    turns = scaling.original_context_length * plain / (2 * math.pi)
    fast, slow = turns > scaling.beta_fast + 1e-9, turns < scaling.beta_slow - 1e-9
    # The band's edges may be rounded outward to whole features (truncate): a feature is
    # pinned when even its neighbour (turns times theta ** (2 / head_dim) apart) is.
    step = theta ** (2 / head_dim)
    clearly_fast = fast & (turns > scaling.beta_fast * step)
    clearly_slow = slow & (turns < scaling.beta_slow / step)
    assert torch.equal(scaled[clearly_fast], plain[clearly_fast])
    torch.testing.assert_close(scaled[clearly_slow], plain[clearly_slow] / scaling.factor,
                               rtol=1e-15, atol=0)
    # Every frequency lies between its interpolated and its original self.
    assert bool(((scaled <= plain * (1 + 1e-15))
                 & (scaled >= plain / scaling.factor * (1 - 1e-15))).all())
    # Every rotated vector's length is multiplied by the attention factor, nothing else.
    g = generator(seed)
    x = _randn(g, 2, 5, head_dim)
    cos, sin = RotaryEmbedding(head_dim, theta, scaling)(torch.arange(offset, offset + 5), f64)
    factor = scaling.cos_sin_factor
    if scaling.attention_factor is None and not (scaling.mscale and scaling.mscale_all_dim):
        assert factor == 0.1 * math.log(scaling.factor) + 1  # the paper's default
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), factor * x.norm(dim=-1),
                               rtol=1e-12, atol=1e-12)


def test_yarn_refuses_what_has_no_meaning():
    with pytest.raises(ValueError, match="^factor must be a float > 0, got 0"):
        YarnRopeScaling(factor=0, original_context_length=4096)
    with pytest.raises(ValueError, match=r"^factor must be a float > 0 \(finite\), got nan"):
        YarnRopeScaling(factor=float("nan"), original_context_length=4096)
    with pytest.raises(ValueError, match="^beta_fast must be > beta_slow=1.0, got 1.0"):
        YarnRopeScaling(factor=4.0, original_context_length=4096, beta_fast=1.0)
    with pytest.raises(ValueError, match="^original_context_length must be an int >= 1"):
        YarnRopeScaling(factor=4.0, original_context_length=0)
    with pytest.raises(ValueError,
                       match=r"^attention_factor must be a float > 0 or None \(finite\)"):
        YarnRopeScaling(factor=4.0, original_context_length=64, attention_factor=float("inf"))
    with pytest.raises(TypeError, match="^truncate must be True or False, got 'yes'$"):
        YarnRopeScaling(factor=4.0, original_context_length=64, truncate="yes")
    assert yarn_mscale(1.0) == 1.0 and yarn_mscale(40.0, 1.0) == 0.1 * math.log(40.0) + 1
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_context_length": 2}
    cfg = DecoderConfig(vocab_size=10, context_length=8, emb_dim=8, n_layers=1, n_heads=2,
                        n_kv_heads=2, hidden_dim=8, rope_scaling=yarn)
    assert cfg.rope_scaling == YarnRopeScaling(factor=4.0, original_context_length=2)


def test_llama3_scaling_keeps_fast_frequencies_and_slows_the_slow_ones():
    scaling = Llama3RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                original_context_length=8192)
    plain = rope_inverse_frequencies(128, 500000.0)
    scaled = rope_inverse_frequencies(128, 500000.0, scaling)
    wavelength = 2 * math.pi / plain
    assert torch.equal(scaled[wavelength < 8192 / 4], plain[wavelength < 8192 / 4])
    assert torch.equal(scaled[wavelength > 8192], plain[wavelength > 8192] / 8)
    middle = (wavelength >= 2048) & (wavelength <= 8192)
    assert middle.any() and bool(((scaled[middle] < plain[middle])
                                  & (scaled[middle] > plain[middle] / 8)).all())
    with pytest.raises(ValueError, match="^high_freq_factor must be > low_freq_factor=4.0"):
        Llama3RopeScaling(low_freq_factor=4.0, high_freq_factor=1.0)
    with pytest.raises(ValueError, match="^head_dim must be an even int >= 2, got 3$"):
        rope_inverse_frequencies(3, 10000.0)


# ---- SwiGLU --------------------------------------------------------------------------------

@given(seeds, st.integers(1, 24), st.integers(1, 48), st.sampled_from(["silu", "gelu_tanh"]))
@settings(deadline=None, max_examples=30)
def test_swiglu_equals_a_float64_recomputation(seed, emb_dim, hidden_dim, activation):
    g = generator(seed)
    ff = _randomize(SwiGLU(emb_dim, hidden_dim, activation).to(f64), g)
    x = _randn(g, 2, 3, emb_dim)
    gate = x @ ff.fc1.weight.T
    if activation == "silu":
        act = gate / (1 + torch.exp(-gate))
    else:
        act = 0.5 * gate * (1 + torch.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    expected = (act * (x @ ff.fc2.weight.T)) @ ff.fc3.weight.T
    torch.testing.assert_close(ff(x), expected, rtol=1e-12, atol=1e-12)


# ---- Grouped-query attention ---------------------------------------------------------------

@st.composite
def attention_shapes(draw):
    n_kv = draw(st.sampled_from([1, 2, 4]))
    n_heads = n_kv * draw(st.sampled_from([1, 2, 3]))
    return {"emb_dim": draw(st.sampled_from([8, 16, 24])), "n_heads": n_heads,
            "n_kv_heads": n_kv, "head_dim": draw(st.sampled_from([2, 4, 6, 8]))}


def _gqa(shape, seed, **options):
    return _randomize(GroupedQueryAttention(**shape, **options).to(f64), generator(seed)).eval()


@given(seeds, st.sampled_from([1, 2, 4]), st.sampled_from([2, 4, 8]), st.integers(1, 8),
       st.booleans())
@settings(deadline=None, max_examples=20)
def test_multi_head_case_is_chapter_3_multi_head_attention(seed, n_heads, head_dim, t, qkv_bias):
    emb = n_heads * head_dim
    gqa = _gqa({"emb_dim": emb, "n_heads": n_heads, "n_kv_heads": n_heads,
                "head_dim": head_dim}, seed, qkv_bias=qkv_bias, kernel="textbook")
    mha = MultiHeadAttention(emb, emb, 16, 0.0, n_heads, qkv_bias=qkv_bias).to(f64).eval()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value", "out_proj"):
            getattr(mha, name).weight.copy_(getattr(gqa, name).weight)
        for name in ("W_query", "W_key", "W_value"):
            if qkv_bias:
                getattr(mha, name).bias.copy_(getattr(gqa, name).bias)
        mha.out_proj.bias.zero_()
    x = _randn(generator(seed + 1), 2, t, emb)
    torch.testing.assert_close(gqa(x), mha(x), rtol=1e-12, atol=1e-12)


@given(seeds, attention_shapes(), st.integers(1, 8), st.sampled_from(["sdpa", "textbook"]),
       st.booleans())
@settings(deadline=None, max_examples=25)
def test_grouped_query_equals_multi_head_with_keys_and_values_repeated_per_group(
        seed, shape, t, kernel, qk_norm):
    gqa = _gqa(shape, seed, kernel=kernel, qk_norm=qk_norm)
    group = shape["n_heads"] // shape["n_kv_heads"]
    mha = GroupedQueryAttention(**{**shape, "n_kv_heads": shape["n_heads"]}, kernel="textbook",
                                qk_norm=qk_norm).to(f64).eval()
    hd = shape["head_dim"]
    with torch.no_grad():
        mha.load_state_dict({k: v for k, v in gqa.state_dict().items()
                             if not k.startswith(("W_key", "W_value"))}, strict=False)
        for name in ("W_key", "W_value"):
            w = getattr(gqa, name).weight.view(shape["n_kv_heads"], hd, -1)  # (nkv, hd, emb)
            repeated = w.repeat_interleave(group, dim=0)  # (nh, hd, emb): head h uses h // group
            getattr(mha, name).weight.copy_(repeated.reshape(-1, w.shape[-1]))
    g = generator(seed + 1)
    x = _randn(g, 2, t, shape["emb_dim"])
    cos, sin = RotaryEmbedding(hd, 10000.0)(torch.arange(t), f64)
    torch.testing.assert_close(gqa(x, (cos, sin)), mha(x, (cos, sin)), rtol=1e-11, atol=1e-11)


@given(seeds, attention_shapes(), st.integers(2, 10), st.booleans(), st.data())
@settings(deadline=None, max_examples=25)
def test_future_tokens_never_change_past_outputs_and_both_kernels_agree(
        seed, shape, t, qk_norm, data):
    cut = data.draw(st.integers(1, t - 1))
    sdpa = _gqa(shape, seed, qk_norm=qk_norm)
    textbook = _gqa(shape, seed, qk_norm=qk_norm, kernel="textbook")
    g = generator(seed + 1)
    x = _randn(g, 2, t, shape["emb_dim"])
    changed = x.clone()
    changed[:, cut:] = _randn(g, 2, t - cut, shape["emb_dim"])
    rope = RotaryEmbedding(shape["head_dim"], 10000.0)(torch.arange(t), f64)
    out = sdpa(x, rope)
    torch.testing.assert_close(textbook(x, rope), out, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(sdpa(changed, rope)[:, :cut], out[:, :cut], rtol=1e-11,
                               atol=1e-11)
    # Batch rows never mix.
    torch.testing.assert_close(sdpa(x[1:], rope), out[1:], rtol=1e-11, atol=1e-11)
    _, weights = sdpa(x, rope, need_weights=True)
    assert weights.shape == (2, shape["n_heads"], t, t)
    assert torch.all(weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, shape["n_heads"], t, dtype=f64))


def test_attention_refuses_bad_shapes_naming_the_parameter():
    with pytest.raises(ValueError, match=r"^n_kv_heads \(3\) must divide n_heads \(4\)$"):
        GroupedQueryAttention(16, 4, 3, 4)
    with pytest.raises(ValueError, match=r"^kernel must be one of \['sdpa', 'textbook'\]"):
        GroupedQueryAttention(16, 4, 2, 4, kernel="flash")
    with pytest.raises(ValueError, match=r"^head_dim must be an int >= 1, got 0$"):
        GroupedQueryAttention(16, 4, 2, 0)


# ---- The KV cache --------------------------------------------------------------------------

@given(st.integers(1, 3), st.sampled_from([1, 2, 4]), st.sampled_from([1, 2]),
       st.sampled_from([4, 6]), st.integers(1, 3), st.integers(1, 16),
       st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
@settings(deadline=None, max_examples=20)
def test_cache_memory_is_two_times_layers_kv_heads_head_dim_bytes_per_token(
        n_layers, n_kv, group, head_dim, batch, tokens, dtype):
    cfg = DecoderConfig(vocab_size=16, context_length=16, emb_dim=8, n_layers=n_layers,
                        n_heads=n_kv * group, n_kv_heads=n_kv, head_dim=head_dim, hidden_dim=8)
    cache = DecoderModel(cfg).to(dtype).new_kv_cache(batch, tokens)
    per_token = 2 * n_layers * n_kv * head_dim * dtype.itemsize
    assert cache.memory_bytes() == per_token * batch * tokens
    assert all(layer.keys.shape == (batch, n_kv, tokens, head_dim) for layer in cache.layers)
