"""Spec of the transformer block's parts (chapter 4), each against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from gpt_components.attention import MultiHeadAttention
from gpt_components.transformer import (
    GELU,
    CausalSelfAttention,
    FeedForward,
    LayerNorm,
    TransformerBlock,
)
from spec.strategies import generator, seeds, tiny_gpt_configs

pytestmark = pytest.mark.ch04

dims = st.integers(1, 16)


def randn(seed, *shape):
    return torch.randn(*shape, generator=generator(seed), dtype=torch.float64)


def randomize(module, seed, std=0.3):
    g = generator(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


@given(seed=seeds, emb_dim=dims, batch=st.integers(1, 3), tokens=st.integers(1, 5),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]))
def test_layer_norm_equals_torch_layer_norm(seed, emb_dim, batch, tokens, eps):
    norm = randomize(LayerNorm(emb_dim, eps=eps).double(), seed)
    x = randn(seed + 1, batch, tokens, emb_dim) * 3 + 1
    expected = F.layer_norm(x, (emb_dim,), weight=norm.scale, bias=norm.shift, eps=eps)
    torch.testing.assert_close(norm(x), expected, rtol=1e-10, atol=1e-10)


@given(seed=seeds, emb_dim=st.integers(2, 16))
def test_fresh_layer_norm_outputs_have_mean_zero_and_biased_variance_one(seed, emb_dim):
    x = randn(seed, 4, emb_dim) * 5 - 2
    out = LayerNorm(emb_dim, eps=1e-12).double()(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(4, dtype=torch.float64))
    # var / (var + eps): one, less what eps takes from rows whose values lie close together
    # (two values 2e-3 apart already lose 7e-7 of it)
    variance = x.var(-1, unbiased=False)
    torch.testing.assert_close(out.var(-1, unbiased=False), variance / (variance + 1e-12))


@given(seed=seeds)
def test_gelu_is_the_tanh_approximation_of_torch(seed):
    x = randn(seed, 64) * 4
    torch.testing.assert_close(GELU()(x), F.gelu(x, approximate="tanh"), rtol=1e-12, atol=1e-12)


def values_and_gradients(module, x, upstream):
    """The output of ``module(x)`` and the gradients of ``(out * upstream).sum()``."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    inputs = [x, *module.parameters()]
    return [out, *torch.autograd.grad((out * upstream).sum(), inputs)]


@given(seed=seeds, emb_dim=dims, batch=st.integers(1, 3), tokens=st.integers(1, 5),
       eps=st.sampled_from([1e-5, 1e-3, 0.5]))
def test_fused_and_textbook_layer_norms_compute_the_same_function_and_gradients(
        seed, emb_dim, batch, tokens, eps):
    fused = randomize(LayerNorm(emb_dim, eps=eps, kernel="fused").double(), seed)
    textbook = LayerNorm(emb_dim, eps=eps).double()
    textbook.load_state_dict(fused.state_dict())
    x = randn(seed + 1, batch, tokens, emb_dim) * 3 + 1
    upstream = randn(seed + 2, batch, tokens, emb_dim)
    for got, expected in zip(values_and_gradients(fused, x, upstream),
                             values_and_gradients(textbook, x, upstream), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@given(seed=seeds, scale=st.sampled_from([0.1, 1.0, 4.0, 30.0]))
def test_fused_and_textbook_gelus_compute_the_same_function_and_gradients(seed, scale):
    x = randn(seed, 64) * scale
    upstream = randn(seed + 1, 64)
    for got, expected in zip(values_and_gradients(GELU(kernel="fused"), x, upstream),
                             values_and_gradients(GELU(), x, upstream), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel", ["fused", "textbook"])
def test_the_chosen_layer_kernel_is_the_one_that_runs(monkeypatch, kernel):
    # Both kernels compute the same function, so only watching which runs tells them apart.
    import gpt_components.transformer as transformer
    from gpt_components.model import GPTConfig, GPTModel

    calls = []
    for name in ("layer_norm", "gelu"):
        real = getattr(transformer.F, name)

        def counting(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(transformer.F, name, counting)
    model = GPTModel(GPTConfig(vocab_size=20, context_length=6, emb_dim=8, n_heads=2,
                               n_layers=2, layer_kernel=kernel))
    model(torch.tensor([[1, 2, 3]]))
    # Two norms and one GELU per block, then the final norm.
    expected = [] if kernel == "textbook" else ["layer_norm"] * 5 + ["gelu"] * 2
    assert sorted(calls) == sorted(expected)
    assert {"norm1.scale", "norm1.shift", "norm2.scale"} <= {
        key.split(".", 2)[2] for key in model.state_dict() if key.startswith("trf_blocks.")}


@given(seed=seeds, emb_dim=dims)
def test_feed_forward_is_linear_gelu_linear_through_four_times_the_width(seed, emb_dim):
    ff = randomize(FeedForward({"emb_dim": emb_dim}).double(), seed)
    first, _, second = ff.layers
    assert first.weight.shape == (4 * emb_dim, emb_dim)
    assert second.weight.shape == (emb_dim, 4 * emb_dim)
    x = randn(seed + 1, 2, 3, emb_dim)
    hidden = F.gelu(F.linear(x, first.weight, first.bias), approximate="tanh")
    expected = F.linear(hidden, second.weight, second.bias)
    torch.testing.assert_close(ff(x), expected, rtol=1e-12, atol=1e-12)


def attention_pair(cfg, seed):
    """The same weights in the fast kernel, the textbook kernel and chapter 3's class."""
    args = (cfg.emb_dim, cfg.emb_dim, cfg.context_length, 0.0, cfg.n_heads, cfg.qkv_bias)
    fast = randomize(CausalSelfAttention(*args, kernel="sdpa").double(), seed)
    textbook = CausalSelfAttention(*args, kernel="textbook").double()
    plain = MultiHeadAttention(*args).double()
    textbook.load_state_dict(fast.state_dict())
    plain.load_state_dict(fast.state_dict())
    return fast, textbook, plain


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 3), data=st.data())
def test_sdpa_and_textbook_kernels_compute_chapter_three_attention(cfg, seed, batch, data):
    fast, textbook, plain = attention_pair(cfg, seed)
    tokens = data.draw(st.integers(1, cfg.context_length))
    x = randn(seed + 1, batch, tokens, cfg.emb_dim)
    expected = plain(x)
    torch.testing.assert_close(fast(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(textbook(x), expected, rtol=1e-10, atol=1e-10)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 3), data=st.data())
def test_attention_fed_in_chunks_through_a_cache_equals_attention_over_the_whole(
        cfg, seed, batch, data):
    from gpt_components.kv_cache import KVCache

    fast, textbook, plain = attention_pair(cfg, seed)
    tokens = data.draw(st.integers(1, cfg.context_length))
    cuts = sorted(data.draw(st.sets(st.integers(1, tokens - 1), max_size=3))) if tokens > 1 else []
    x = randn(seed + 1, batch, tokens, cfg.emb_dim)
    expected = plain(x)
    for attention in (fast, textbook):
        cache = KVCache(1, batch, cfg.n_heads, cfg.head_dim, cfg.context_length,
                        dtype=torch.float64)
        pieces = []
        for lo, hi in zip([0, *cuts], [*cuts, tokens], strict=True):
            pieces.append(attention(x[:, lo:hi], kv_cache=cache))
            cache.advance(hi - lo)
        torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=1e-10, atol=1e-10)


def reference_block(block, x, n_heads):
    """A transformer block spelled out with torch.nn.functional (float64)."""
    att, emb = block.att, x.shape[-1]

    def heads(t):  # (B, T, emb) -> (B, nh, T, hd)
        return t.view(*t.shape[:2], n_heads, emb // n_heads).transpose(1, 2)

    h = F.layer_norm(x, (emb,), block.norm1.scale, block.norm1.shift, eps=1e-5)
    q, k, v = (heads(F.linear(h, lin.weight, lin.bias))
               for lin in (att.W_query, att.W_key, att.W_value))
    context = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    context = context.transpose(1, 2).reshape(x.shape)
    x = x + F.linear(context, att.out_proj.weight, att.out_proj.bias)
    h = F.layer_norm(x, (emb,), block.norm2.scale, block.norm2.shift, eps=1e-5)
    first, _, second = block.ff.layers
    h = F.gelu(F.linear(h, first.weight, first.bias), approximate="tanh")
    return x + F.linear(h, second.weight, second.bias)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 3), data=st.data())
def test_transformer_block_is_pre_norm_attention_then_feed_forward_each_with_a_shortcut(
        cfg, seed, batch, data):
    block = randomize(TransformerBlock(cfg).double(), seed).eval()
    tokens = data.draw(st.integers(1, cfg.context_length))
    x = randn(seed + 1, batch, tokens, cfg.emb_dim)
    torch.testing.assert_close(block(x), reference_block(block, x, cfg.n_heads),
                               rtol=1e-10, atol=1e-10)


@given(cfg=tiny_gpt_configs(drop_rate=0.5), seed=seeds)
def test_block_dropout_is_random_in_training_and_off_in_eval(cfg, seed):
    block = randomize(TransformerBlock(cfg).double(), seed)
    x = randn(seed + 1, 2, cfg.context_length, cfg.emb_dim)
    block.eval()
    torch.testing.assert_close(block(x), block(x), rtol=0, atol=0)
    block.train()
    assert not torch.equal(block(x), block(x))


def test_bad_layer_norm_and_kernel_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="emb_dim"):
        LayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        LayerNorm(4, eps=0.0)
    with pytest.raises(ValueError, match="kernel"):
        CausalSelfAttention(4, 4, 4, 0.0, 2, kernel="flash")
    with pytest.raises(ValueError, match=r"^kernel must be one of \['fused', 'textbook'\], "
                                         r"got 'apex'$"):
        LayerNorm(4, kernel="apex")
    with pytest.raises(ValueError, match=r"^kernel must be one of \['fused', 'textbook'\]"):
        GELU(kernel="erf")


@pytest.mark.parametrize("kernel", ["sdpa", "textbook"])
def test_bad_attention_inputs_are_refused_naming_x(kernel):
    from gpt_components.kv_cache import KVCache

    attention = CausalSelfAttention(4, 4, 3, 0.0, 2, kernel=kernel)
    for bad, error, match in (
        ([[[0.0] * 4]], TypeError, r"^x must be a torch\.Tensor"),
        (torch.zeros(1, 2, 4, dtype=torch.long), TypeError, r"^x must hold floating numbers"),
        (torch.zeros(2, 4), ValueError, r"^x must be 3-D"),
        (torch.zeros(1, 2, 5), ValueError, r"^x must have d_in=4"),
        (torch.zeros(1, 4, 4), ValueError, r"^x has 4 tokens.*context_length=3"),
    ):
        with pytest.raises(error, match=match):
            attention(bad)
    # A cache longer than the context cannot carry attention past it.
    cache = KVCache(1, 1, 2, 2, max_tokens=8)
    attention(torch.zeros(1, 2, 4), kv_cache=cache)
    cache.advance(2)
    with pytest.raises(ValueError, match=r"^x has 2 tokens after 2 cached ones.*"
                                         r"context_length=3"):
        attention(torch.zeros(1, 2, 4), kv_cache=cache)


def sdpa_calls(monkeypatch):
    """Count calls of scaled_dot_product_attention made by the transformer module."""
    import gpt_components.transformer as transformer

    calls = []
    real = transformer.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dropout_p", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformer.F, "scaled_dot_product_attention", counting)
    return calls


@pytest.mark.parametrize("kernel", ["sdpa", "textbook"])
def test_the_chosen_kernel_is_the_one_that_runs(monkeypatch, kernel):
    # Both kernels compute the same function, so only watching which runs tells them apart.
    from gpt_components.kv_cache import KVCache
    from gpt_components.model import GPTConfig, GPTModel

    calls = sdpa_calls(monkeypatch)
    model = GPTModel(GPTConfig(vocab_size=20, context_length=6, emb_dim=8, n_heads=2,
                               n_layers=2, attn_kernel=kernel)).eval()
    model(torch.tensor([[1, 2, 3]]))
    cache = KVCache(2, 1, 2, 4, 6)
    for piece in ([[1, 2]], [[3]], [[4, 5]]):  # a prefix, one token, a chunk
        model(torch.tensor(piece), kv_cache=cache)
    assert len(calls) == (0 if kernel == "textbook" else 2 * 4)


@given(seed=seeds, kernel=st.sampled_from(["sdpa", "textbook"]), cached=st.integers(0, 3),
       tokens=st.integers(1, 3))
def test_attention_dropout_is_random_in_training_and_off_in_eval_for_both_kernels(
        seed, kernel, cached, tokens):
    from gpt_components.kv_cache import KVCache

    attention = randomize(CausalSelfAttention(8, 8, 8, 0.5, 2, kernel=kernel).double(), seed)
    x = randn(seed + 1, 2, cached + tokens, 8)

    def run(generator_seed):
        cache = KVCache(1, 2, 2, 4, 8, dtype=torch.float64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)
            if cached:
                attention(x[:, :cached], kv_cache=cache)
                cache.advance(cached)
            return attention(x[:, cached:], kv_cache=cache if cached else None)

    attention.train()
    outputs = [run(s) for s in range(4)]
    assert any(not torch.equal(outputs[0], other) for other in outputs[1:])
    attention.eval()
    torch.testing.assert_close(run(0), run(1), rtol=0, atol=0)


def test_the_books_plain_dict_gets_the_documented_defaults():
    # The book's chapter-3/4 dicts may leave out drop_rate, qkv_bias and the kernel.
    block = TransformerBlock({"emb_dim": 8, "context_length": 4, "n_heads": 2})
    assert block.att.kernel == "sdpa"
    assert block.norm1.kernel == block.norm2.kernel == block.ff.layers[1].kernel == "fused"
    assert LayerNorm(8).kernel == GELU().kernel == "textbook"  # the classes as the book has them
    assert block.att.W_query.bias is None and block.att.dropout.p == 0.0
    assert block.drop_shortcut.p == 0.0
    attention = CausalSelfAttention(8, 8, 4, 0.0, 2)
    assert attention.kernel == "sdpa" and attention.W_key.bias is None
