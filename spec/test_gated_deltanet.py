"""Properties of Gated DeltaNet (``gpt_components.newest.gated_deltanet``), in float64.

References: the recurrent textbook against the chunked form (the code under test checks
itself only where one form is the other's definition), ``transformers``' own torch paths
(``torch_recurrent_gated_delta_rule``, ``torch_chunk_gated_delta_rule``, ``causal_conv1d_fn``,
``Qwen3NextRMSNormGated``, the ``Qwen3NextGatedDeltaNet`` and ``Qwen3_5GatedDeltaNet`` layers)
widened to float64 by ``Float64Mode``, and ``torch.nn.functional.conv1d``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.newest.gated_deltanet import (
    DeltaNetCache,
    GatedDeltaNet,
    GatedRMSNorm,
    ShortConvolution,
    chunked_gated_delta_rule,
    delta_rule_mixing,
    l2_normalize,
    recurrent_gated_delta_rule,
)
from spec.helpers.hf_exact import Float64Mode
from spec.strategies import generator, seeds

transformers = pytest.importorskip("transformers")
hf_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
hf_3_5 = pytest.importorskip("transformers.models.qwen3_5.modeling_qwen3_5")

pytestmark = pytest.mark.newest

F64 = torch.float64
EXACT = {"rtol": 1e-10, "atol": 1e-12}


@st.composite
def rule_inputs(draw, max_tokens: int = 20):
    """q, k (normalised), v, g (<= 0), beta in (0, 1), and an initial state or None."""
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    t = draw(st.integers(1, max_tokens))
    dk, dv = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    g = generator(draw(seeds))
    q = torch.randn(b, h, t, dk, generator=g, dtype=F64)
    k = l2_normalize(torch.randn(b, h, t, dk, generator=g, dtype=F64))
    v = torch.randn(b, h, t, dv, generator=g, dtype=F64)
    decay = -3 * torch.rand(b, h, t, generator=g, dtype=F64)
    beta = torch.rand(b, h, t, generator=g, dtype=F64)
    state = torch.randn(b, h, dk, dv, generator=g, dtype=F64) if draw(st.booleans()) else None
    return q, k, v, decay, beta, state


def heads_second(x):
    return x.transpose(1, 2)  # ours (B, H, T, ...) <-> transformers' (B, T, H, ...)


@settings(deadline=None, max_examples=15)
@given(rule_inputs(), st.integers(1, 24))
def test_the_chunked_rule_equals_the_recurrent_textbook_for_any_chunk_size_and_length(inputs,
                                                                                      chunk):
    q, k, v, g, beta, state = inputs
    expected, expected_state = recurrent_gated_delta_rule(q, k, v, g, beta, state)
    out, last = chunked_gated_delta_rule(q, k, v, g, beta, chunk, state)
    torch.testing.assert_close(out, expected, **EXACT)
    torch.testing.assert_close(last, expected_state, **EXACT)


def test_the_recurrence_is_the_delta_rule_written_out():
    # One head, dk = dv = 1: S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1} k_t), o_t = S_t q_t.
    q, k, v = (torch.tensor([[[[x] for x in row]]], dtype=F64)
               for row in ([1.0, 2.0], [1.0, -1.0], [3.0, 5.0]))
    g = torch.log(torch.tensor([[[0.5, 0.25]]], dtype=F64))
    beta = torch.tensor([[[0.5, 1.0]]], dtype=F64)
    out, state = recurrent_gated_delta_rule(q, k, v, g, beta, scale=1.0)
    s1 = 0.5 * 1 * (3 - 0)  # 1.5
    s2 = 0.25 * s1 + 1.0 * -1 * (5 - 0.25 * s1 * -1)  # 0.375 - 5.375 = -5
    assert out.flatten().tolist() == [s1 * 1, s2 * 2] and state.item() == s2


@settings(deadline=None, max_examples=8)
@given(rule_inputs(max_tokens=16), st.integers(1, 8))
def test_both_rules_equal_transformers_torch_functions(inputs, chunk):
    q, k, v, g, beta, state = inputs
    args = [heads_second(x) for x in (q, k, v, g, beta)]
    with Float64Mode():
        chunked, chunked_state = hf_next.torch_chunk_gated_delta_rule(
            *args, chunk_size=chunk, initial_state=state, output_final_state=True)
        recurrent, recurrent_state = hf_next.torch_recurrent_gated_delta_rule(
            *args, initial_state=state, output_final_state=True)
    out, last = chunked_gated_delta_rule(q, k, v, g, beta, chunk, state)
    torch.testing.assert_close(out, heads_second(chunked), **EXACT)
    torch.testing.assert_close(last, chunked_state, **EXACT)
    out, last = recurrent_gated_delta_rule(q, k, v, g, beta, state)
    torch.testing.assert_close(out, heads_second(recurrent), **EXACT)
    torch.testing.assert_close(last, recurrent_state, **EXACT)


@settings(deadline=None, max_examples=8)
@given(rule_inputs(max_tokens=12))
def test_the_mixing_matrix_reproduces_the_rule_and_never_looks_ahead(inputs):
    q, k, v, g, beta, _ = inputs
    mixing = delta_rule_mixing(q, k, g, beta)
    out, _ = recurrent_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(mixing @ v, out, **EXACT)
    t = q.shape[2]
    assert bool((mixing[..., torch.ones(t, t, dtype=torch.bool).triu(1)] == 0).all())


@settings(deadline=None, max_examples=8)
@given(seed=seeds, channels=st.integers(1, 6), kernel=st.integers(1, 5), t=st.integers(1, 12),
       split=st.integers(0, 12))
def test_the_short_convolution_is_causal_conv1d_and_resumes_from_its_past(seed, channels, kernel,
                                                                         t, split):
    conv = ShortConvolution(channels, kernel).to(F64)
    x = torch.randn(2, channels, t, generator=generator(seed), dtype=F64)
    with torch.no_grad():
        whole = conv(x)
        # transformers' fallback: F.conv1d padded on both sides, the first T outputs kept.
        expected = hf_next.causal_conv1d_fn(x, conv.weight.squeeze(1), activation="silu")
        torch.testing.assert_close(whole, expected, **EXACT)
        reference = F.silu(F.conv1d(F.pad(x, (kernel - 1, 0)), conv.weight, groups=channels))
        torch.testing.assert_close(whole, reference, **EXACT)
        split = min(split, t - 1)  # a non-empty rest
        past = F.pad(x[..., :split], (kernel - 1, 0))[..., split:split + kernel - 1]
        torch.testing.assert_close(conv(x[..., split:], past), whole[..., split:], **EXACT)


@settings(deadline=None, max_examples=5)
@given(seed=seeds, dim=st.integers(1, 8), eps=st.sampled_from([1e-6, 1e-2]))
def test_the_gated_norm_equals_transformers(seed, dim, eps):
    g = generator(seed)
    ours = GatedRMSNorm(dim, eps).to(F64)
    theirs = hf_next.Qwen3NextRMSNormGated(dim, eps=eps).to(F64)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(dim, generator=g, dtype=F64))
        theirs.weight.copy_(ours.weight)
    x, z = (torch.randn(3, 4, dim, generator=g, dtype=F64) for _ in range(2))
    with Float64Mode(), torch.no_grad():
        expected = theirs(x, z)
    torch.testing.assert_close(ours(x, z), expected, **EXACT)


@st.composite
def layer_sizes(draw):
    n_key = draw(st.integers(1, 2))
    return {"emb_dim": draw(st.sampled_from([8, 12])), "n_key_heads": n_key,
            "n_value_heads": n_key * draw(st.integers(1, 2)),
            "head_k_dim": draw(st.integers(2, 5)), "head_v_dim": draw(st.integers(2, 5)),
            "conv_kernel": draw(st.integers(1, 4)), "chunk_size": draw(st.integers(1, 8)),
            "kernel": draw(st.sampled_from(["chunked", "recurrent"])),
            "projections": draw(st.sampled_from(["split", "grouped"]))}


def random_layer(sizes: dict, seed: int) -> GatedDeltaNet:
    layer = GatedDeltaNet(**sizes).to(F64)
    g = generator(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * 0.5)
    return layer.eval()


@settings(deadline=None, max_examples=4)
@given(layer_sizes(), seeds, st.integers(1, 10))
def test_the_layer_equals_transformers_gated_deltanet(sizes, seed, t):
    layer = random_layer(sizes, seed)
    config = transformers.Qwen3NextConfig(
        hidden_size=sizes["emb_dim"], linear_num_key_heads=sizes["n_key_heads"],
        linear_num_value_heads=sizes["n_value_heads"], linear_key_head_dim=sizes["head_k_dim"],
        linear_value_head_dim=sizes["head_v_dim"], linear_conv_kernel_dim=sizes["conv_kernel"],
        num_hidden_layers=1, layer_types=["linear_attention"])
    kind = hf_next.Qwen3NextGatedDeltaNet if sizes["projections"] == "grouped" \
        else hf_3_5.Qwen3_5GatedDeltaNet
    theirs = kind(config, 0).to(F64)
    state = {name.replace("W_out", "out_proj"): p
             for name, p in layer.state_dict().items()}
    theirs.load_state_dict(state)
    x = torch.randn(2, t, sizes["emb_dim"], generator=generator(seed + 1), dtype=F64)
    with Float64Mode(), torch.no_grad():
        expected = theirs(x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, **EXACT)


@settings(deadline=None, max_examples=5)
@given(layer_sizes(), seeds, st.integers(1, 12), st.data())
def test_decoding_through_the_cache_equals_the_full_forward(sizes, seed, t, data):
    layer = random_layer(sizes, seed)
    x = torch.randn(2, t, sizes["emb_dim"], generator=generator(seed + 1), dtype=F64)
    cuts = sorted(data.draw(st.lists(st.integers(1, t - 1), max_size=3, unique=True))
                  if t > 1 else [])
    cache = layer.new_cache(2, t, dtype=F64)
    pieces = []
    with torch.no_grad():
        for a, b in zip([0, *cuts], [*cuts, t], strict=True):
            pieces.append(layer(x[:, a:b], cache=cache))
            cache.advance(b - a)
        torch.testing.assert_close(torch.cat(pieces, dim=1), layer(x), **EXACT)
        cache.reset()  # a reused cache starts from an empty state, whatever its buffers hold
        torch.testing.assert_close(layer(x, cache=cache), layer(x), **EXACT)


@settings(deadline=None, max_examples=10)
@given(layer_sizes(), st.integers(1, 3), st.integers(1, 4096))
def test_the_cache_holds_the_same_bytes_whatever_the_length(sizes, batch, tokens):
    layer = GatedDeltaNet(**sizes)
    cache = layer.new_cache(batch, tokens, dtype=F64)
    # The state [Hv, dk, dv] per sequence and the convolution's last kernel - 1 inputs.
    per_sequence = sizes["n_value_heads"] * sizes["head_k_dim"] * sizes["head_v_dim"] \
        + layer.conv_dim * (sizes["conv_kernel"] - 1)
    assert cache.memory_bytes() == batch * per_sequence * 8
    assert layer.new_cache(batch, 1, dtype=F64).memory_bytes() == cache.memory_bytes()


def test_a_hybrid_model_keeps_one_stack_of_kv_caches_and_states():
    from gpt_components.machinery.registry import build_model, preset_config
    from gpt_components.modern.attention import LayerKVCache

    model = build_model(preset_config("qwen3-next-nano", vocab_size=64))
    cfg = model.cfg
    small, large = model.new_kv_cache(1, 8), model.new_kv_cache(1, 64)
    kinds = [type(layer) for layer in large.layers]
    assert kinds == [DeltaNetCache, DeltaNetCache, DeltaNetCache, LayerKVCache]
    per_token = 2 * cfg.n_kv_heads * cfg.head_dim * 4  # the one full-attention layer, float32
    assert large.memory_bytes() - small.memory_bytes() == (64 - 8) * per_token


def test_bad_arguments_are_refused_naming_the_parameter():
    sizes = {"emb_dim": 8, "n_key_heads": 2, "n_value_heads": 4, "head_k_dim": 4,
             "head_v_dim": 4}
    for bad, error, parameter in (({"chunk_size": 0}, ValueError, "chunk_size"),
                                  ({"n_value_heads": 3}, ValueError, "n_value_heads"),
                                  ({"kernel": "fused"}, ValueError, "kernel"),
                                  ({"projections": "fused"}, ValueError, "projections"),
                                  ({"conv_kernel": 0}, ValueError, "conv_kernel"),
                                  ({"head_k_dim": 2.0}, TypeError, "head_k_dim")):
        with pytest.raises(error, match=parameter) as caught:
            GatedDeltaNet(**{**sizes, **bad})
        assert caught.value.parameter == parameter
    q = torch.zeros(1, 2, 3, 4, dtype=F64)
    g = torch.zeros(1, 2, 3, dtype=F64)
    with pytest.raises(ValueError, match="chunk_size") as caught:
        chunked_gated_delta_rule(q, q, q, g, g, chunk_size=0)
    with pytest.raises(ValueError, match=r"beta must have shape \(1, 2, 3\)"):
        recurrent_gated_delta_rule(q, q, q, g, g[:, :1])
    with pytest.raises(ValueError, match="state"):
        recurrent_gated_delta_rule(q, q, q, g, g, state=torch.zeros(1, 2, 4, 5))
    layer = GatedDeltaNet(**sizes)
    with pytest.raises(ValueError, match="x"):
        layer(torch.zeros(1, 3, 7))
    with pytest.raises(ValueError, match="batch_size"):
        layer(torch.zeros(1, 3, 8), cache=layer.new_cache(2, 8))
    with pytest.raises(ValueError, match="need_weights"):
        layer(torch.zeros(1, 3, 8), cache=layer.new_cache(1, 8), need_weights=True)
