"""Properties of sliding-window attention and its caches (Gemma 3's local layers).

References are independent of the code under test: ``torch.nn.functional``'s causal attention
for windows that cover the sequence, and a float64 loop over queries that keeps exactly the keys
``i - W < j <= i`` (the band written out here, not the module's mask) for shorter ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.modern.sliding_window import (
    WindowLayerCache,
    window_mask,
    windowed_attention,
    windowed_attention_weights,
)
from spec.strategies import generator, seeds

pytestmark = pytest.mark.modern

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
kernels = st.sampled_from(["sdpa", "textbook"])


@st.composite
def qkv(draw, min_tokens: int = 1, max_tokens: int = 12):
    """q [B, nh, T, hd], k [B, nkv, T, hd], v [B, nkv, T, hd_v] in float64, nkv dividing nh."""
    n_kv = draw(st.sampled_from([1, 2]))
    n_heads = n_kv * draw(st.sampled_from([1, 2]))
    b, t = draw(st.integers(1, 2)), draw(st.integers(min_tokens, max_tokens))
    hd, hd_v = draw(st.sampled_from([2, 4])), draw(st.sampled_from([2, 3]))
    g = generator(draw(seeds))
    return (torch.randn(b, n_heads, t, hd, generator=g, dtype=F64),
            torch.randn(b, n_kv, t, hd, generator=g, dtype=F64),
            torch.randn(b, n_kv, t, hd_v, generator=g, dtype=F64))


def band_reference(q, k, v, window, scale):
    """Each query i: softmax over the keys j with i - window < j <= i, written as a loop."""
    group = q.shape[1] // k.shape[1]
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=F64)
    for head in range(q.shape[1]):
        kv_head = head // group
        for i in range(q.shape[2]):
            seen = range(max(0, i - window + 1), i + 1)
            scores = torch.stack([(q[:, head, i] * k[:, kv_head, j]).sum(-1) * scale
                                  for j in seen], dim=-1)  # (B, seen)
            weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
            weights = weights / weights.sum(-1, keepdim=True)
            out[:, head, i] = sum(weights[:, n:n + 1] * v[:, kv_head, j]
                                  for n, j in enumerate(seen))
    return out


@settings(max_examples=30)
@given(qkv(), st.integers(0, 4), kernels)
def test_a_window_covering_the_sequence_is_causal_attention(tensors, extra, kernel):
    q, k, v = tensors
    group = q.shape[1] // k.shape[1]
    expected = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1),
                                              v.repeat_interleave(group, 1), is_causal=True)
    got = windowed_attention(q, k, v, window=q.shape[2] + extra, kernel=kernel)
    torch.testing.assert_close(got, expected, **TIGHT)
    torch.testing.assert_close(windowed_attention(q, k, v, window=None, kernel=kernel),
                               expected, **TIGHT)


@settings(max_examples=30)
@given(qkv(min_tokens=2), st.data(), kernels, st.floats(0.1, 2.0))
def test_a_shorter_window_is_attention_under_a_band_mask(tensors, data, kernel, scale):
    q, k, v = tensors
    window = data.draw(st.integers(1, q.shape[2] - 1))
    got = windowed_attention(q, k, v, window=window, scale=scale, kernel=kernel)
    torch.testing.assert_close(got, band_reference(q, k, v, window, scale), **TIGHT)


@settings(max_examples=30)
@given(qkv(min_tokens=2), st.data(), kernels)
def test_no_query_sees_a_key_more_than_window_minus_one_back(tensors, data, kernel):
    q, k, v = tensors
    t = q.shape[2]
    window = data.draw(st.integers(1, t - 1))
    j = data.draw(st.integers(0, t - window))  # a key that some query sees last
    k2, v2 = k.clone(), v.clone()
    k2[:, :, j] += 1.0
    v2[:, :, j] += 1.0
    before = windowed_attention(q, k, v, window=window, kernel=kernel)
    after = windowed_attention(q, k2, v2, window=window, kernel=kernel)
    torch.testing.assert_close(after[:, :, :j], before[:, :, :j], **TIGHT)  # the past
    torch.testing.assert_close(after[:, :, j + window:], before[:, :, j + window:], **TIGHT)
    # The query window - 1 positions ahead still sees the key: its output moves.
    assert not torch.allclose(after[:, :, j + window - 1], before[:, :, j + window - 1])


@settings(max_examples=30)
@given(qkv(min_tokens=2), st.data())
def test_attention_weights_vanish_outside_the_window_and_sum_to_one(tensors, data):
    q, k, _ = tensors
    t = q.shape[2]
    window = data.draw(st.integers(1, t))
    weights = windowed_attention_weights(q, k, window)  # (B, nh, T, T)
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    outside = (j > i) | (j <= i - window)
    assert bool((weights[..., outside] == 0).all())
    assert bool((weights[..., ~outside] > 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=F64),
                               **TIGHT)


@st.composite
def chunkings(draw, total: int):
    """Split ``total`` tokens into chunk sizes (prefill, then mostly one-token steps)."""
    sizes = []
    while sum(sizes) < total:
        sizes.append(draw(st.integers(1, min(total - sum(sizes), 5))))
    return sizes


@settings(max_examples=30)
@given(qkv(min_tokens=2, max_tokens=14), st.data(), kernels)
def test_decoding_through_the_window_cache_equals_the_uncached_computation(tensors, data,
                                                                           kernel):
    q, k, v = tensors
    b, t = q.shape[0], q.shape[2]
    window = data.draw(st.integers(1, t))
    sizes = data.draw(chunkings(t))
    expected = windowed_attention(q, k, v, window=window, kernel=kernel)
    cache = WindowLayerCache(b, k.shape[1], k.shape[3], window, t, value_dim=v.shape[3],
                             dtype=F64)
    outputs, start = [], 0
    for size in sizes:
        chunk = slice(start, start + size)
        keys, values = cache.store(k[:, :, chunk], v[:, :, chunk])
        cache.advance(size)
        end = start + size
        outputs.append(windowed_attention(
            q[:, :, chunk], keys, values, window=window, kernel=kernel,
            query_positions=torch.arange(start, end),
            key_positions=torch.arange(end - keys.shape[2], end)))
        assert keys.shape[2] <= window - 1 + size  # never more than the window can use
        start = end
    torch.testing.assert_close(torch.cat(outputs, dim=2), expected, **TIGHT)


@settings(max_examples=30)
@given(st.integers(1, 6), st.integers(1, 40), seeds)
def test_a_window_cache_holds_window_positions_whatever_the_length(window, length, seed):
    g = generator(seed)
    cache = WindowLayerCache(2, 1, 3, window, length, value_dim=2, dtype=F64)
    slots = min(window, length)  # a ring that never wraps needs no more than it will hold
    assert (tuple(cache.keys.shape), tuple(cache.values.shape)) == ((2, 1, slots, 3),
                                                                    (2, 1, slots, 2))
    k = torch.randn(2, 1, length, 3, generator=g, dtype=F64)
    for p in range(length):
        keys, _ = cache.store(k[:, :, p:p + 1], k[:, :, p:p + 1, :2])
        cache.advance(1)
        assert tuple(cache.keys.shape) == (2, 1, slots, 3)
        torch.testing.assert_close(keys, k[:, :, max(0, p - window + 1):p + 1], rtol=0, atol=0)
    bytes_held = sum(b.numel() * b.element_size() for b in cache.buffers())
    assert bytes_held == cache.memory_bytes() == 2 * 1 * slots * (3 + 2) * 8


def test_the_mask_follows_positions_and_hides_empty_slots():
    positions = torch.tensor([4, -1, 2, 3])  # a ring buffer's slots, one empty
    mask = window_mask(torch.tensor([3, 4]), positions, window=2)
    assert mask.tolist() == [[False, False, True, True], [True, False, False, True]]


def test_caches_and_windows_refuse_bad_arguments():
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        window_mask(torch.arange(2), torch.arange(2), window=0)
    with pytest.raises(TypeError, match="window must be an int >= 1 or None"):
        windowed_attention(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2),
                           torch.ones(1, 1, 2, 2), window=1.5)
    with pytest.raises(ValueError, match="kernel must be one of"):
        windowed_attention(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2),
                           torch.ones(1, 1, 2, 2), window=2, kernel="flash")
    with pytest.raises(ValueError, match="dividing q's 3"):
        windowed_attention(torch.ones(1, 3, 2, 2), torch.ones(1, 2, 2, 2),
                           torch.ones(1, 2, 2, 2), window=2)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        WindowLayerCache(1, 1, 2, window=0, max_tokens=4)
    with pytest.raises(TypeError, match=r"^q must hold floating numbers"):
        windowed_attention(torch.ones(1, 1, 2, 2, dtype=torch.long), torch.ones(1, 1, 2, 2),
                           torch.ones(1, 1, 2, 2), window=2)


@settings(max_examples=20)
@given(seeds, st.integers(1, 8), st.data(), kernels)
def test_the_attention_module_is_grouped_query_attention_under_the_band(seed, t, data, kernel):
    from gpt_components.modern.attention import GroupedQueryAttention
    from gpt_components.modern.sliding_window import SlidingWindowAttention

    window = data.draw(st.integers(1, t + 2))
    options = {"qk_norm": True, "kernel": kernel, "scale": 0.4}
    windowed = SlidingWindowAttention(8, 2, 1, 4, window=window, **options).to(F64)
    full = GroupedQueryAttention(8, 2, 1, 4, **options).to(F64)
    g = generator(seed)
    with torch.no_grad():
        for p in windowed.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        full.load_state_dict(windowed.state_dict())
        x = torch.randn(2, t, 8, generator=g, dtype=F64)
        got, weights = windowed(x, need_weights=True)
        q = windowed.q_norm(windowed.W_query(x).view(2, t, 2, 4)).transpose(1, 2)
        k = windowed.k_norm(windowed.W_key(x).view(2, t, 1, 4)).transpose(1, 2)
        v = windowed.W_value(x).view(2, t, 1, 4).transpose(1, 2)
        context = band_reference(q, k, v, window, 0.4).transpose(1, 2).reshape(2, t, 8)
        torch.testing.assert_close(got, windowed.out_proj(context), **TIGHT)
        torch.testing.assert_close(weights, windowed_attention_weights(q, k, window, scale=0.4),
                                   **TIGHT)
        if window >= t:
            torch.testing.assert_close(got, full(x), **TIGHT)
