"""Properties of the attention mechanisms (chapter 3).

References are independent of the code under test: a float64 token-by-token loop (dot products,
a hand-written softmax, a weighted sum) and ``torch.nn.functional.scaled_dot_product_attention``.
Every module's weights are redrawn from a seeded ``torch.Generator`` in float64, so no property
depends on torch's global RNG; dropout, which can only draw from the global RNG, runs inside
``torch.random.fork_rng()`` with a drawn seed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gpt_components.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    simple_self_attention,
)
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch03

F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@dataclass(frozen=True)
class Config:
    batch: int
    tokens: int
    context_length: int
    d_in: int
    num_heads: int
    head_dim: int
    qkv_bias: bool
    seed: int

    @property
    def d_out(self) -> int:
        return self.num_heads * self.head_dim


@st.composite
def configs(draw, min_tokens: int = 1, max_tokens: int = 6) -> Config:
    tokens = draw(st.integers(min_tokens, max_tokens))
    return Config(
        batch=draw(st.integers(1, 3)),
        tokens=tokens,
        context_length=draw(st.integers(tokens, tokens + 3)),
        d_in=draw(st.integers(1, 6)),
        num_heads=draw(st.integers(1, 3)),
        head_dim=draw(st.integers(1, 4)),
        qkv_bias=draw(st.booleans()),
        seed=draw(seeds),
    )


def redraw(module: nn.Module, g: torch.Generator) -> nn.Module:
    """Cast to float64 and redraw every parameter from ``g`` (independent of the default init)."""
    module.double()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=g, dtype=F64) * 0.7)
    return module


def inputs(cfg: Config, g: torch.Generator) -> torch.Tensor:
    return torch.randn(cfg.batch, cfg.tokens, cfg.d_in, generator=g, dtype=F64)


def build_mha(cfg: Config, g: torch.Generator, dropout: float = 0.0) -> MultiHeadAttention:
    mha = MultiHeadAttention(cfg.d_in, cfg.d_out, cfg.context_length, dropout, cfg.num_heads,
                             qkv_bias=cfg.qkv_bias)
    return redraw(mha, g)


def build_causal(cfg: Config, g: torch.Generator, dropout: float = 0.0) -> CausalAttention:
    causal = CausalAttention(cfg.d_in, cfg.d_out, cfg.context_length, dropout, cfg.qkv_bias)
    return redraw(causal, g)


def build_wrapper(cfg: Config, g: torch.Generator) -> MultiHeadAttentionWrapper:
    wrapper = MultiHeadAttentionWrapper(cfg.d_in, cfg.head_dim, cfg.context_length, 0.0,
                                        cfg.num_heads, qkv_bias=cfg.qkv_bias)
    return redraw(wrapper, g)


def linear(x: torch.Tensor, layer: nn.Linear, rows: slice = slice(None)) -> torch.Tensor:
    """``x @ W[rows]^T + b[rows]`` computed here, not by the layer."""
    out = x @ layer.weight.detach()[rows].T
    if layer.bias is not None:
        out = out + layer.bias.detach()[rows]
    return out


def reference_weights(q: torch.Tensor, k: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """``[T, T]`` softmax weights, token by token: exactly zero where a token may not look."""
    t = q.shape[0]
    weights = torch.zeros(t, t, dtype=F64)
    for i in range(t):
        visible = i + 1 if causal else t
        scores = torch.stack([torch.dot(q[i], k[j]) / scale for j in range(visible)])
        exps = torch.exp(scores - scores.max())
        weights[i, :visible] = exps / exps.sum()
    return weights


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        causal: bool, noise: torch.Tensor | None = None) -> torch.Tensor:
    """One head on one sequence: ``[T, d]`` queries/keys/values to ``[T, d_v]`` context vectors."""
    weights = reference_weights(q, k, scale, causal)
    if noise is not None:
        weights = weights * noise
    return torch.stack([
        sum((weights[i, j] * v[j] for j in range(v.shape[0])), torch.zeros(v.shape[1], dtype=F64))
        for i in range(q.shape[0])
    ])


def reference_mha(mha: MultiHeadAttention, x: torch.Tensor,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """Head by head with the weight rows of each head, concatenated, then ``out_proj``."""
    hd = mha.head_dim
    batches = []
    for b in range(x.shape[0]):
        heads = []
        for h in range(mha.num_heads):
            rows = slice(h * hd, (h + 1) * hd)
            q = linear(x[b], mha.W_query, rows)
            k = linear(x[b], mha.W_key, rows)
            v = linear(x[b], mha.W_value, rows)
            head_noise = None if noise is None else noise[b, h]
            heads.append(reference_attention(q, k, v, math.sqrt(hd), True, head_noise))
        batches.append(linear(torch.cat(heads, dim=-1), mha.out_proj))
    return torch.stack(batches)


def dropout_noise(shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The factors (0 or 1/(1-p)) that nn.Dropout draws next for a tensor of ``shape``."""
    return F.dropout(torch.ones(shape, dtype=F64), p, training=True)


# --- weightless and single-head self-attention -------------------------------------------------


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.booleans(), seeds)
def test_simple_self_attention_is_the_softmax_of_dot_products_weighting_the_inputs(
        batch, tokens, dim, batched, seed):
    x = torch.randn(batch, tokens, dim, generator=generator(seed), dtype=F64)
    expected = torch.stack([reference_attention(s, s, s, 1.0, causal=False) for s in x])
    if not batched:
        x, expected = x[0], expected[0]
    out = simple_self_attention(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, **TIGHT)


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5),
       st.booleans(), seeds)
def test_self_attention_v1_scales_scores_by_the_root_of_d_out(
        batch, tokens, d_in, d_out, batched, seed):
    g = generator(seed)
    sa = redraw(SelfAttentionV1(d_in, d_out), g)
    x = torch.randn(batch, tokens, d_in, generator=g, dtype=F64)
    wq, wk, wv = (w.detach() for w in (sa.W_query, sa.W_key, sa.W_value))
    expected = torch.stack([
        reference_attention(s @ wq, s @ wk, s @ wv, math.sqrt(d_out), causal=False) for s in x
    ])
    if not batched:
        x, expected = x[0], expected[0]
    out = sa(x)
    assert out.shape == (*x.shape[:-1], d_out)
    torch.testing.assert_close(out, expected, **TIGHT)


@given(st.integers(1, 3), st.integers(1, 6), st.integers(1, 5), st.integers(1, 5),
       st.booleans(), seeds)
def test_self_attention_v1_and_v2_compute_the_same_function_given_the_same_weights(
        batch, tokens, d_in, d_out, batched, seed):
    g = generator(seed)
    v2 = redraw(SelfAttentionV2(d_in, d_out), g)
    v1 = SelfAttentionV1(d_in, d_out).double()
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(v1, name).copy_(getattr(v2, name).weight.T)  # nn.Linear stores W^T
    x = torch.randn(batch, tokens, d_in, generator=g, dtype=F64)
    if not batched:
        x = x[0]
    torch.testing.assert_close(v1(x), v2(x), **TIGHT)


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4),
       st.booleans(), seeds)
def test_self_attention_v2_with_bias_matches_the_reference(tokens, d_in, d_out, batch, bias, seed):
    g = generator(seed)
    sa = redraw(SelfAttentionV2(d_in, d_out, qkv_bias=bias), g)
    assert all((getattr(sa, n).bias is not None) == bias for n in ("W_query", "W_key", "W_value"))
    x = torch.randn(batch, tokens, d_in, generator=g, dtype=F64)
    expected = torch.stack([
        reference_attention(linear(s, sa.W_query), linear(s, sa.W_key), linear(s, sa.W_value),
                            math.sqrt(d_out), causal=False)
        for s in x
    ])
    torch.testing.assert_close(sa(x), expected, **TIGHT)


@given(st.integers(1, 5), st.integers(1, 5), seeds)
def test_self_attention_v1_draws_uniform_weights_reproducibly_from_its_generator(d_in, d_out, seed):
    first = SelfAttentionV1(d_in, d_out, generator=generator(seed))
    again = SelfAttentionV1(d_in, d_out, generator=generator(seed))
    g = generator(seed)
    for name in ("W_query", "W_key", "W_value"):  # drawn in this order, as in the book
        weight = getattr(first, name)
        assert isinstance(weight, nn.Parameter) and weight.shape == (d_in, d_out)
        assert torch.equal(weight, torch.rand(d_in, d_out, generator=g))
        assert torch.equal(weight, getattr(again, name))
    assert sorted(n for n, _ in first.named_parameters()) == ["W_key", "W_query", "W_value"]


# --- causal attention ---------------------------------------------------------------------------


@given(configs())
def test_causal_attention_matches_the_token_by_token_reference(cfg):
    g = generator(cfg.seed)
    causal = build_causal(cfg, g)
    for name in ("W_query", "W_key", "W_value"):
        assert (getattr(causal, name).bias is not None) == cfg.qkv_bias
    x = inputs(cfg, g)
    expected = torch.stack([
        reference_attention(linear(s, causal.W_query), linear(s, causal.W_key),
                            linear(s, causal.W_value), math.sqrt(cfg.d_out), causal=True)
        for s in x
    ])
    torch.testing.assert_close(causal(x), expected, **TIGHT)


BUILDERS = {
    "CausalAttention": build_causal,
    "MultiHeadAttentionWrapper": build_wrapper,
    "MultiHeadAttention": build_mha,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
@given(cfg=configs(min_tokens=2), cut=st.integers(0, 4), data=seeds)
def test_future_tokens_never_change_past_outputs(name, cfg, cut, data):
    g = generator(cfg.seed)
    module = BUILDERS[name](cfg, g)
    t = cut % (cfg.tokens - 1)  # positions <= t are the past; at least one future token
    x = inputs(cfg, g)
    changed = x.clone()
    changed[:, t + 1:] = torch.randn(changed[:, t + 1:].shape, generator=generator(data), dtype=F64)
    out, out_changed = module(x), module(changed)
    torch.testing.assert_close(out_changed[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-12)


# --- multi-head attention -----------------------------------------------------------------------


@given(configs())
def test_multi_head_attention_is_concatenated_causal_heads_followed_by_out_proj(cfg):
    g = generator(cfg.seed)
    mha = build_mha(cfg, g)
    x = inputs(cfg, g)
    hd = cfg.head_dim
    heads = []
    for h in range(cfg.num_heads):
        head = CausalAttention(cfg.d_in, hd, cfg.context_length, 0.0, cfg.qkv_bias).double()
        with torch.no_grad():
            for name in ("W_query", "W_key", "W_value"):
                ours, theirs = getattr(head, name), getattr(mha, name)
                ours.weight.copy_(theirs.weight[h * hd:(h + 1) * hd])
                if cfg.qkv_bias:
                    ours.bias.copy_(theirs.bias[h * hd:(h + 1) * hd])
        heads.append(head(x))
    expected = linear(torch.cat(heads, dim=-1), mha.out_proj)
    out = mha(x)
    assert out.shape == (cfg.batch, cfg.tokens, cfg.d_out)
    torch.testing.assert_close(out, expected, **TIGHT)
    torch.testing.assert_close(out, reference_mha(mha, x), **TIGHT)


@given(configs())
def test_wrapper_equals_multi_head_attention_given_the_same_weights(cfg):
    g = generator(cfg.seed)
    mha = build_mha(cfg, g)
    wrapper = build_wrapper(cfg, g)
    hd = cfg.head_dim
    with torch.no_grad():
        for h, head in enumerate(wrapper.heads):
            for name in ("W_query", "W_key", "W_value"):
                ours, theirs = getattr(head, name), getattr(mha, name)
                ours.weight.copy_(theirs.weight[h * hd:(h + 1) * hd])
                if cfg.qkv_bias:
                    ours.bias.copy_(theirs.bias[h * hd:(h + 1) * hd])
    x = inputs(cfg, g)
    concatenated = wrapper(x)
    assert concatenated.shape == (cfg.batch, cfg.tokens, cfg.num_heads * hd)
    torch.testing.assert_close(mha.out_proj(concatenated), mha(x), **TIGHT)


@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), seeds)
def test_wrapper_output_is_num_heads_times_d_out_wide_one_block_per_head(
        num_heads, d_out, tokens, seed):
    g = generator(seed)
    wrapper = redraw(MultiHeadAttentionWrapper(3, d_out, tokens, 0.0, num_heads), g)
    assert len(wrapper.heads) == num_heads
    assert all(isinstance(head, CausalAttention) for head in wrapper.heads)
    x = torch.randn(2, tokens, 3, generator=g, dtype=F64)
    out = wrapper(x)
    assert out.shape == (2, tokens, num_heads * d_out)
    for h, head in enumerate(wrapper.heads):
        torch.testing.assert_close(out[..., h * d_out:(h + 1) * d_out], head(x), rtol=0, atol=0)


@given(configs())
def test_multi_head_attention_equals_torch_scaled_dot_product_attention_in_float64(cfg):
    g = generator(cfg.seed)
    mha = build_mha(cfg, g)
    x = inputs(cfg, g)
    b, t, nh, hd = cfg.batch, cfg.tokens, cfg.num_heads, cfg.head_dim
    q, k, v = (
        linear(x, layer).view(b, t, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        for layer in (mha.W_query, mha.W_key, mha.W_value)
    )
    context = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
    expected = linear(context.transpose(1, 2).reshape(b, t, nh * hd), mha.out_proj)
    torch.testing.assert_close(mha(x), expected, **TIGHT)


@given(configs(), st.booleans())
def test_attention_weights_are_zero_above_the_diagonal_and_rows_sum_to_one(cfg, multi_head):
    g = generator(cfg.seed)
    module = build_mha(cfg, g) if multi_head else build_causal(cfg, g)
    x = inputs(cfg, g)
    weights = module.attention_weights(x)
    heads = cfg.num_heads if multi_head else 1
    hd = cfg.head_dim if multi_head else cfg.d_out
    shape = (cfg.batch, heads, cfg.tokens, cfg.tokens)
    assert weights.shape == (shape if multi_head else (cfg.batch, cfg.tokens, cfg.tokens))
    weights = weights.reshape(shape)
    future = torch.triu(torch.ones(cfg.tokens, cfg.tokens, dtype=torch.bool), diagonal=1)
    assert torch.all(weights[..., future] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1], dtype=F64), **TIGHT)
    for b in range(cfg.batch):
        for h in range(heads):
            rows = slice(h * hd, (h + 1) * hd)
            q = linear(x[b], module.W_query, rows)
            k = linear(x[b], module.W_key, rows)
            expected = reference_weights(q, k, math.sqrt(hd), causal=True)
            torch.testing.assert_close(weights[b, h], expected, **TIGHT)


# --- dropout ------------------------------------------------------------------------------------


@given(configs(min_tokens=8, max_tokens=10), st.floats(0.25, 0.75), seeds, st.booleans())
def test_dropout_makes_train_mode_random_and_eval_mode_deterministic(
        cfg, p, rng_seed, multi_head):
    g = generator(cfg.seed)
    module = build_mha(cfg, g, p) if multi_head else build_causal(cfg, g, p)
    plain = build_mha(cfg, g, 0.0) if multi_head else build_causal(cfg, g, 0.0)
    plain.load_state_dict(module.state_dict())
    # At least 2 sequences of 8 tokens: 72+ weights per head that dropout may zero.
    x = torch.randn(cfg.batch + 1, cfg.tokens, cfg.d_in, generator=g, dtype=F64)
    with torch.random.fork_rng():
        torch.manual_seed(rng_seed)
        module.train()
        first, second = module(x), module(x)
        assert not torch.equal(first, second)
        module.eval()
        evaluated, again = module(x), module(x)
    assert torch.equal(evaluated, again)
    torch.testing.assert_close(evaluated, plain(x), rtol=0, atol=0)


@given(configs(), seeds, st.booleans())
def test_zero_dropout_gives_train_mode_equal_to_eval_mode(cfg, rng_seed, multi_head):
    g = generator(cfg.seed)
    module = build_mha(cfg, g) if multi_head else build_causal(cfg, g)
    x = inputs(cfg, g)
    with torch.random.fork_rng():
        torch.manual_seed(rng_seed)
        trained = module.train()(x)
    assert torch.equal(trained, module.eval()(x))


@given(configs(), st.floats(0.1, 0.9), seeds, st.booleans())
def test_dropout_zeroes_attention_weights_and_rescales_the_rest_by_one_over_keep(
        cfg, p, rng_seed, multi_head):
    g = generator(cfg.seed)
    module = build_mha(cfg, g, p) if multi_head else build_causal(cfg, g, p)
    x = inputs(cfg, g)
    heads = cfg.num_heads if multi_head else 1
    weight_shape = (cfg.batch, heads, cfg.tokens, cfg.tokens)
    with torch.random.fork_rng():
        torch.manual_seed(rng_seed)
        out = module.train()(x)
        torch.manual_seed(rng_seed)  # replay the same draw: the factors nn.Dropout used
        noise = dropout_noise(weight_shape if multi_head else weight_shape[:1] + weight_shape[2:],
                              p)
    if multi_head:
        expected = reference_mha(module, x, noise)
    else:
        expected = torch.stack([
            reference_attention(linear(s, module.W_query), linear(s, module.W_key),
                                linear(s, module.W_value), math.sqrt(cfg.d_out), True, noise[b])
            for b, s in enumerate(x)
        ])
    torch.testing.assert_close(out, expected, **TIGHT)


# --- the mask and the parameters ----------------------------------------------------------------


@given(st.integers(1, 8), st.booleans())
def test_mask_is_a_non_persistent_bool_buffer_true_strictly_above_the_diagonal(
        context_length, multi_head):
    if multi_head:
        module = MultiHeadAttention(4, 4, context_length, 0.1, 2)
    else:
        module = CausalAttention(4, 4, context_length, 0.1)
    module.double()
    expected = torch.tensor(
        [[j > i for j in range(context_length)] for i in range(context_length)]
    )
    assert dict(module.named_buffers())["mask"] is module.mask
    assert torch.equal(module.mask, expected)  # also checks dtype bool and shape
    assert "mask" not in dict(module.named_parameters())
    assert "mask" not in module.state_dict()
    assert not module.mask.requires_grad


@given(configs(), st.floats(0.0, 0.9))
def test_multi_head_attention_keeps_the_books_names_and_shapes(cfg, p):
    mha = MultiHeadAttention(cfg.d_in, cfg.d_out, cfg.context_length, p, cfg.num_heads,
                             qkv_bias=cfg.qkv_bias)
    assert (mha.d_in, mha.d_out, mha.num_heads, mha.head_dim, mha.context_length) == (
        cfg.d_in, cfg.d_out, cfg.num_heads, cfg.head_dim, cfg.context_length)
    for name in ("W_query", "W_key", "W_value"):
        layer = getattr(mha, name)
        assert isinstance(layer, nn.Linear)
        assert (layer.in_features, layer.out_features) == (cfg.d_in, cfg.d_out)
        assert (layer.bias is not None) == cfg.qkv_bias
    assert (mha.out_proj.in_features, mha.out_proj.out_features) == (cfg.d_out, cfg.d_out)
    assert mha.out_proj.bias is not None
    assert isinstance(mha.dropout, nn.Dropout) and mha.dropout.p == p


@pytest.mark.parametrize("cls", [SelfAttentionV2, CausalAttention, MultiHeadAttentionWrapper,
                                 MultiHeadAttention], ids=lambda c: c.__name__)
def test_query_key_value_projections_have_no_bias_unless_asked(cls):
    kwargs = {"d_in": 4, "d_out": 4, "context_length": 4, "dropout": 0.0, "num_heads": 2}
    if cls is SelfAttentionV2:
        kwargs = {"d_in": 4, "d_out": 4}
    elif cls is CausalAttention:
        del kwargs["num_heads"]
    for module, bias in ((cls(**kwargs), False), (cls(**kwargs, qkv_bias=True), True)):
        projections = [m for name, m in module.named_modules()
                       if name.rsplit(".", 1)[-1] in ("W_query", "W_key", "W_value")]
        assert len(projections) == (6 if cls is MultiHeadAttentionWrapper else 3)
        assert all((p.bias is not None) == bias for p in projections)


# --- bad input ----------------------------------------------------------------------------------

VALID = {
    SelfAttentionV1: {"d_in": 4, "d_out": 4},
    SelfAttentionV2: {"d_in": 4, "d_out": 4},
    CausalAttention: {"d_in": 4, "d_out": 4, "context_length": 4, "dropout": 0.1},
    MultiHeadAttentionWrapper: {"d_in": 4, "d_out": 4, "context_length": 4, "dropout": 0.1,
                                "num_heads": 2},
    MultiHeadAttention: {"d_in": 4, "d_out": 4, "context_length": 4, "dropout": 0.1,
                         "num_heads": 2},
}
BAD_SIZES = [(0, ValueError), (-1, ValueError), (True, TypeError), (2.0, TypeError),
             ("2", TypeError), (None, TypeError)]
BAD_DROPOUTS = [(-0.1, ValueError), (1.0, ValueError), (1, ValueError), (1.5, ValueError),
                (float("nan"), ValueError), (True, TypeError), ("0.1", TypeError),
                (None, TypeError)]
BAD_ARGUMENTS = [
    (cls, name, value, error)
    for cls, kwargs in VALID.items()
    for name in kwargs
    for value, error in (BAD_DROPOUTS if name == "dropout" else BAD_SIZES)
]


@pytest.mark.parametrize(("cls", "name", "value", "error"), BAD_ARGUMENTS,
                         ids=lambda v: getattr(v, "__name__", repr(v)))
def test_bad_constructor_arguments_raise_errors_naming_the_parameter(cls, name, value, error):
    message = rf"^{name} must be .*{re.escape(repr(value))}$"
    with pytest.raises(error, match=message):
        cls(**{**VALID[cls], name: value})


@pytest.mark.parametrize(("d_out", "num_heads"), [(6, 4), (5, 2), (3, 6)])
def test_d_out_not_divisible_by_num_heads_is_rejected(d_out, num_heads):
    with pytest.raises(ValueError, match=rf"^d_out \({d_out}\) must be divisible by num_heads"
                                         rf" \({num_heads}\)"):
        MultiHeadAttention(4, d_out, 4, 0.0, num_heads)


@pytest.mark.parametrize("dropout", [0, 0.0, 0.5, 0.999])
def test_dropout_in_zero_to_one_is_accepted(dropout):
    for cls in (CausalAttention, MultiHeadAttentionWrapper, MultiHeadAttention):
        module = cls(**{**VALID[cls], "dropout": dropout})
        for dropout_layer in (m for m in module.modules() if isinstance(m, nn.Dropout)):
            assert dropout_layer.p == dropout


CAUSAL_MODULES = [CausalAttention, MultiHeadAttentionWrapper, MultiHeadAttention]
BAD_INPUTS = [
    ([[0.0] * 4], TypeError, r"^x must be a torch\.Tensor, got list"),
    (torch.zeros(1, 2, 4, dtype=torch.long), TypeError,
     r"^x must hold floating numbers, got dtype torch\.int64$"),
    (torch.zeros(4), ValueError, r"^x must be .*3-D.*got shape \(4,\)"),
    (torch.zeros(1, 1, 2, 4), ValueError, r"^x must be .*3-D.*got shape \(1, 1, 2, 4\)"),
    (torch.zeros(1, 2, 3), ValueError, r"^x must have d_in=4 features in its last dim, got 3"),
]


@pytest.mark.parametrize("cls", CAUSAL_MODULES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("x", "error", "message"), BAD_INPUTS,
                         ids=["list", "int64", "1-D", "4-D", "d_in"])
def test_bad_inputs_to_causal_modules_raise_errors_naming_x(cls, x, error, message):
    module = cls(**VALID[cls])
    with pytest.raises(error, match=message):
        module(x)
    if hasattr(module, "attention_weights"):
        with pytest.raises(error, match=message):
            module.attention_weights(x)


@pytest.mark.parametrize("cls", CAUSAL_MODULES, ids=lambda c: c.__name__)
def test_causal_modules_reject_two_dimensional_input(cls):
    with pytest.raises(ValueError, match=r"^x must be 3-D .*got shape \(2, 4\)"):
        cls(**VALID[cls])(torch.zeros(2, 4))


@pytest.mark.parametrize("cls", CAUSAL_MODULES, ids=lambda c: c.__name__)
@given(context_length=st.integers(1, 6), extra=st.integers(1, 3))
def test_more_tokens_than_context_length_is_rejected_and_a_full_context_accepted(
        cls, context_length, extra):
    module = cls(**{**VALID[cls], "context_length": context_length})
    assert module(torch.zeros(1, context_length, 4)).shape[:2] == (1, context_length)
    tokens = context_length + extra
    with pytest.raises(ValueError, match=rf"^x has {tokens} tokens, more than "
                                         rf"context_length={context_length}"):
        module(torch.zeros(1, tokens, 4))
    if isinstance(module, (CausalAttention, MultiHeadAttention)):
        with pytest.raises(ValueError, match=rf"^x has {tokens} tokens"):
            module.attention_weights(torch.zeros(1, tokens, 4))


@pytest.mark.parametrize("fn", [simple_self_attention, SelfAttentionV1(4, 4),
                                SelfAttentionV2(4, 4)], ids=["simple", "V1", "V2"])
@pytest.mark.parametrize(("x", "error", "message"), [
    ("text", TypeError, r"^x must be a torch\.Tensor, got str"),
    (torch.zeros(2, 4, dtype=torch.int32), TypeError,
     r"^x must hold floating numbers, got dtype torch\.int32$"),
    (torch.zeros(4), ValueError, r"^x must be 2-D or 3-D .*got shape \(4,\)"),
    (torch.zeros(1, 1, 2, 4), ValueError, r"^x must be 2-D or 3-D .*got shape \(1, 1, 2, 4\)"),
], ids=["str", "int32", "1-D", "4-D"])
def test_bad_inputs_to_self_attention_raise_errors_naming_x(fn, x, error, message):
    with pytest.raises(error, match=message):
        fn(x)


@pytest.mark.parametrize("cls", [SelfAttentionV1, SelfAttentionV2])
def test_self_attention_rejects_inputs_with_the_wrong_feature_count(cls):
    with pytest.raises(ValueError, match=r"^x must have d_in=4 features in its last dim, got 5"):
        cls(4, 3)(torch.zeros(2, 5))


def every_attention_module():
    """One of each attention module and block, the book's and the modern ones, float32."""
    from gpt_components.modern.attention import GroupedQueryAttention
    from gpt_components.modern.config import DecoderConfig
    from gpt_components.modern.decoder import DecoderBlock
    from gpt_components.modern.latent_attention import MultiHeadLatentAttention
    from gpt_components.modern.sliding_window import SlidingWindowAttention
    from gpt_components.transformer import CausalSelfAttention, TransformerBlock

    cfg = {"emb_dim": 8, "context_length": 4, "n_heads": 2, "drop_rate": 0.0}
    decoder = DecoderConfig(vocab_size=16, context_length=4, emb_dim=8, n_layers=1, n_heads=2,
                            n_kv_heads=1, hidden_dim=16)
    return {
        "MultiHeadAttention": MultiHeadAttention(8, 8, 4, 0.0, 2),
        "CausalSelfAttention": CausalSelfAttention(8, 8, 4, 0.0, 2),
        "TransformerBlock": TransformerBlock(cfg),
        "GroupedQueryAttention": GroupedQueryAttention(8, 2, 1, 4),
        "SlidingWindowAttention": SlidingWindowAttention(8, 2, 1, 4, window=2),
        "MultiHeadLatentAttention": MultiHeadLatentAttention(
            8, 2, q_lora_rank=None, kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2,
            v_head_dim=2),
        "DecoderBlock": DecoderBlock(decoder, 0),
    }


def call(name, module, x):
    if name == "DecoderBlock":  # the block takes the model's RoPE tables: here no rotation
        return module(x, {module.rope: (torch.ones(3, 4), torch.zeros(3, 4))})
    return module(x)


@pytest.mark.parametrize("name", sorted(every_attention_module()))
@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.bool])
def test_integer_or_bool_activations_are_a_type_error_naming_x_in_every_attention(name, dtype):
    module = every_attention_module()[name]
    assert call(name, module, torch.zeros(1, 3, 8)).shape == (1, 3, 8)
    with pytest.raises(TypeError, match=r"^x must hold floating numbers") as error:
        call(name, module, torch.zeros(1, 3, 8, dtype=dtype))
    assert error.value.parameter == "x"


@pytest.mark.parametrize("name", sorted(every_attention_module()))
def test_activations_of_another_dtype_or_width_are_refused_alike_in_every_attention(name):
    module = every_attention_module()[name]
    for x, error, message in ((torch.zeros(1, 3, 8, dtype=torch.float64), TypeError,
                               r"^x has dtype torch\.float64, but the module's weights are "
                               r"torch\.float32"),
                              (torch.zeros(1, 3, 5), ValueError, r"^x must have .*8 features"),
                              (torch.zeros(3, 8), ValueError, r"^x must be 3-D")):
        with pytest.raises(error, match=message) as raised:
            call(name, module, x)
        assert raised.value.parameter == "x"


def constructors():
    """The book's and the modern attention, each made from (size, kernel, dropout)."""
    from gpt_components.modern.attention import GroupedQueryAttention
    from gpt_components.modern.latent_attention import MultiHeadLatentAttention
    from gpt_components.transformer import CausalSelfAttention

    return {
        "CausalSelfAttention": lambda size=2, kernel="sdpa", dropout=0.0: CausalSelfAttention(
            8, 8, 4, dropout, size, kernel=kernel),
        "GroupedQueryAttention": lambda size=2, kernel="sdpa", dropout=0.0:
            GroupedQueryAttention(8, size, 1, 4, kernel=kernel, dropout=dropout),
        "MultiHeadLatentAttention": lambda size=2, kernel="sdpa", dropout=0.0:
            MultiHeadLatentAttention(8, size, q_lora_rank=None, kv_lora_rank=4,
                                     qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2,
                                     kernel=kernel),
    }


@pytest.mark.parametrize(("mistake", "error", "parameter"), [
    ({"size": True}, TypeError, None), ({"size": 2.5}, TypeError, None),
    ({"size": "2"}, TypeError, None), ({"size": 0}, ValueError, None),
    ({"kernel": "flash"}, ValueError, "kernel"), ({"kernel": None}, ValueError, "kernel"),
    ({"dropout": "0.1"}, TypeError, "dropout"), ({"dropout": 1.0}, ValueError, "dropout"),
    ({"dropout": True}, TypeError, "dropout"),
])
def test_the_same_constructor_mistake_is_the_same_error_in_every_attention(
        mistake, error, parameter):
    for name, make in constructors().items():
        if "dropout" in mistake and name == "MultiHeadLatentAttention":
            continue  # DeepSeek's attention has no dropout
        with pytest.raises(error) as raised:
            make(**mistake)
        expected = parameter or ("num_heads" if name == "CausalSelfAttention" else "n_heads")
        assert raised.value.parameter == expected, name
