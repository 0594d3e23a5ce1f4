"""Properties of multi-head latent attention (DeepSeek-V3's MLA).

The reference is ``transformers``' own ``DeepseekV3Attention`` (interleaved RoPE, its latent
norms, eager attention under ``Float64Mode``) with the same weights; the absorbed decoding path
and the cache are checked against the plain path.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.modern.latent_attention import MultiHeadLatentAttention
from gpt_components.modern.rope import RotaryEmbedding
from spec.helpers.hf_exact import Float64Mode
from spec.strategies import generator, seeds

pytestmark = pytest.mark.modern

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-12}


@st.composite
def mla_setups(draw):
    sizes = {
        "emb_dim": draw(st.sampled_from([8, 16])), "n_heads": draw(st.integers(1, 3)),
        "q_lora_rank": draw(st.sampled_from([None, 6])),
        "kv_lora_rank": draw(st.sampled_from([4, 7])),
        "qk_nope_head_dim": draw(st.sampled_from([2, 4])),
        "qk_rope_head_dim": draw(st.sampled_from([2, 4])),
        "v_head_dim": draw(st.sampled_from([3, 4])),
    }
    mla = MultiHeadLatentAttention(**sizes, kernel=draw(st.sampled_from(["sdpa", "textbook"])),
                                   bias=draw(st.booleans())).to(F64)
    g = generator(draw(seeds))
    with torch.no_grad():
        for p in mla.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)
    t = draw(st.integers(1, 9))
    x = torch.randn(draw(st.integers(1, 2)), t, sizes["emb_dim"], generator=g, dtype=F64)
    theta = draw(st.sampled_from([100.0, 10000.0]))
    return mla.eval(), x, sizes, theta


def our_rope(sizes, theta, positions):
    return RotaryEmbedding(sizes["qk_rope_head_dim"], theta)(positions, F64)


@settings(max_examples=15)
@given(mla_setups())
def test_latent_attention_equals_transformers_deepseek_v3_attention(setup):
    transformers = pytest.importorskip("transformers")
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf

    mla, x, sizes, theta = setup
    b, t, _ = x.shape
    config = transformers.DeepseekV3Config(
        hidden_size=sizes["emb_dim"], num_attention_heads=sizes["n_heads"],
        num_key_value_heads=sizes["n_heads"], q_lora_rank=sizes["q_lora_rank"],
        kv_lora_rank=sizes["kv_lora_rank"], qk_nope_head_dim=sizes["qk_nope_head_dim"],
        qk_rope_head_dim=sizes["qk_rope_head_dim"], v_head_dim=sizes["v_head_dim"],
        attention_bias=mla.W_kv_down.bias is not None, rope_interleave=True,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, rms_norm_eps=0.3)
    config._attn_implementation = "eager"
    with Float64Mode():
        attention = hf.DeepseekV3Attention(config, layer_idx=0).to(F64)
        rotary = hf.DeepseekV3RotaryEmbedding(config)
    names = {"q_a_proj": "W_query_down", "q_a_layernorm": "q_norm", "q_b_proj": "W_query_up",
             "q_proj": "W_query", "kv_a_proj_with_mqa": "W_kv_down", "kv_a_layernorm": "kv_norm",
             "kv_b_proj": "W_kv_up", "o_proj": "out_proj"}
    ours = mla.state_dict()
    attention.load_state_dict({key: ours[f"{names[key.split('.')[0]]}.{key.split('.')[1]}"]
                               for key in attention.state_dict()})
    mask = torch.full((t, t), float("-inf"), dtype=F64).triu(1).expand(b, 1, t, t)
    with Float64Mode(), torch.no_grad():
        positions = torch.arange(t)[None]
        expected, _ = attention(x, rotary(x, positions), mask)
        got = mla(x, our_rope(sizes, theta, torch.arange(t)))
    torch.testing.assert_close(got, expected, **EXACT)


@settings(max_examples=25)
@given(mla_setups(), st.data())
def test_the_absorbed_path_and_the_latent_cache_compute_the_plain_path(setup, data):
    mla, x, sizes, theta = setup
    b, t, _ = x.shape
    with torch.no_grad():
        rope = our_rope(sizes, theta, torch.arange(t))
        plain, weights = mla(x, rope, need_weights=True)
        absorbed, absorbed_weights = mla(x, rope, need_weights=True, absorb=True)
        torch.testing.assert_close(absorbed, plain, **EXACT)
        torch.testing.assert_close(absorbed_weights, weights, **EXACT)
        cache = mla.new_cache(b, t, dtype=F64)
        prefill = data.draw(st.integers(1, t))
        steps = [mla(x[:, :prefill], our_rope(sizes, theta, torch.arange(prefill)), cache, 0)]
        cache.advance(prefill)
        for p in range(prefill, t):
            steps.append(mla(x[:, p:p + 1], our_rope(sizes, theta, torch.tensor([p])), cache, p,
                             absorb=data.draw(st.booleans())))
            cache.advance(1)
        torch.testing.assert_close(torch.cat(steps, dim=1), plain, **EXACT)


@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 64), st.sampled_from([2, 16]))
def test_the_cache_holds_a_latent_and_a_rope_key_per_token_whatever_the_heads(n_heads, batch,
                                                                             tokens, rope_dim):
    mla = MultiHeadLatentAttention(16, n_heads, q_lora_rank=None, kv_lora_rank=12,
                                   qk_nope_head_dim=8, qk_rope_head_dim=rope_dim, v_head_dim=8)
    cache = mla.new_cache(batch, tokens, dtype=torch.float32)
    held = sum(buf.numel() * buf.element_size() for buf in cache.buffers())
    assert held == batch * tokens * (12 + rope_dim) * 4


def test_latent_attention_refuses_bad_sizes():
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        MultiHeadLatentAttention(8, 2, q_lora_rank=None, kv_lora_rank=4, qk_nope_head_dim=2,
                                 qk_rope_head_dim=3, v_head_dim=2)
    with pytest.raises(ValueError, match="kv_lora_rank must be an int >= 1"):
        MultiHeadLatentAttention(8, 2, q_lora_rank=None, kv_lora_rank=0, qk_nope_head_dim=2,
                                 qk_rope_head_dim=2, v_head_dim=2)
    with pytest.raises(ValueError, match="max_tokens=2 positions; 3 more do not fit"):
        mla = MultiHeadLatentAttention(8, 1, q_lora_rank=None, kv_lora_rank=4,
                                       qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2)
        mla(torch.zeros(1, 3, 8), cache=mla.new_cache(1, 2))
