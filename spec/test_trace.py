"""Spec of ``GPTModel.trace``: the residual stream, attention maps and logits it reports are
what the model computes, recomputed independently (float64, ``torch.nn.functional``)."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.inspect.trace import ModelTrace
from gpt_components.model import GPTConfig, GPTModel
from spec.strategies import generator, random_gpt_model, seeds, tiny_gpt_configs

pytestmark = pytest.mark.inspect

EXACT = {"rtol": 1e-10, "atol": 1e-10}


def token_ids(cfg, seed, batch, tokens):
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=generator(seed))


def reference_attention(block, x):
    """softmax(q k^T / sqrt(hd)) under the causal mask, by torch's SDPA with identity values."""
    att = block.att
    b, t, emb = x.shape
    normed = F.layer_norm(x, (emb,), block.norm1.scale, block.norm1.shift, eps=block.norm1.eps)
    q, k = (
        F.linear(normed, layer.weight, layer.bias).view(b, t, att.num_heads, att.head_dim)
        .transpose(1, 2)  # (B, nh, T, hd)
        for layer in (att.W_query, att.W_key)
    )
    identity = torch.eye(t, dtype=x.dtype).expand(b, att.num_heads, t, t)
    return F.scaled_dot_product_attention(q, k, identity, is_causal=True)  # (B, nh, T, T)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 2), data=st.data())
@settings(max_examples=15)
def test_the_residual_stream_is_the_embedding_then_each_blocks_own_output(cfg, seed, batch,
                                                                          data):
    model = random_gpt_model(cfg, seed)
    tokens = data.draw(st.integers(1, cfg.context_length))
    idx = token_ids(cfg, seed + 1, batch, tokens)
    trace = model.trace(idx)
    assert len(trace.residuals) == cfg.n_layers + 1 and len(trace.attentions) == cfg.n_layers
    embedded = model.tok_emb.weight[idx] + model.pos_emb.weight[:tokens]  # (B, T, emb)
    torch.testing.assert_close(trace.residuals[0], embedded, **EXACT)
    with torch.no_grad():
        for layer, block in enumerate(model.trf_blocks):
            torch.testing.assert_close(trace.residuals[layer + 1], block(trace.residuals[layer]),
                                       **EXACT)
        torch.testing.assert_close(trace.logits, model(idx), **EXACT)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 2), data=st.data())
@settings(max_examples=15)
def test_attention_maps_are_the_layers_own_weights_recomputed_independently(cfg, seed, batch,
                                                                             data):
    model = random_gpt_model(cfg, seed)
    idx = token_ids(cfg, seed + 1, batch, data.draw(st.integers(1, cfg.context_length)))
    trace = model.trace(idx)
    with torch.no_grad():
        for layer, block in enumerate(model.trf_blocks):
            weights = trace.attentions[layer]
            assert weights.shape == (batch, cfg.n_heads, idx.shape[1], idx.shape[1])
            x = trace.residuals[layer]
            torch.testing.assert_close(weights, reference_attention(block, x), **EXACT)
            torch.testing.assert_close(weights, block.att.attention_weights(block.norm1(x)),
                                       **EXACT)


@given(cfg=tiny_gpt_configs(), seed=seeds, data=st.data())
@settings(max_examples=15)
def test_attention_rows_sum_to_one_and_nothing_lies_above_the_diagonal(cfg, seed, data):
    model = random_gpt_model(cfg, seed)
    tokens = data.draw(st.integers(1, cfg.context_length))
    future = torch.ones(tokens, tokens, dtype=torch.bool).triu(diagonal=1)
    for weights in model.trace(token_ids(cfg, seed + 1, 1, tokens)).attentions:
        assert torch.all(weights[..., future] == 0) and torch.all(weights >= 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1],
                                                               dtype=torch.float64), **EXACT)


@given(seed=seeds, tokens=st.integers(1, 8))
@settings(max_examples=10)
def test_a_training_model_is_traced_in_eval_mode_without_grad_and_stays_training(seed, tokens):
    cfg = GPTConfig(vocab_size=60, context_length=8, emb_dim=8, n_heads=2, n_layers=2,
                    drop_rate=0.5)
    model = random_gpt_model(cfg, seed).train()
    idx = token_ids(cfg, seed + 1, 1, tokens)
    first, second = model.trace(idx), model.trace(idx)
    assert model.training
    torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)  # no dropout
    with torch.no_grad():
        torch.testing.assert_close(first.logits, model.eval()(idx), **EXACT)
    assert not any(t.requires_grad for t in [*first.residuals, *first.attentions, first.logits])


def test_trace_rejects_a_prompt_longer_than_the_context_and_ids_outside_the_vocabulary():
    model = GPTModel(GPTConfig(vocab_size=50, context_length=4, emb_dim=8, n_heads=2,
                               n_layers=1))
    with pytest.raises(ValueError, match=r"idx has 5 tokens, more than context_length=4"):
        model.trace(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"idx holds token id 50, outside \[0, vocab_size=50\)"):
        model.trace(torch.tensor([[1, 50]]))


def test_a_model_trace_must_hold_one_residual_more_than_attention_maps_of_matching_shapes():
    logits = torch.zeros(1, 3, 10)
    stream, weights = torch.zeros(1, 3, 4), torch.zeros(1, 2, 3, 3)
    with pytest.raises(ValueError, match=r"residuals must hold one tensor more than attentions"):
        ModelTrace([stream], [weights], logits)
    with pytest.raises(ValueError, match=r"residuals\[1\] must be \[B=1, T=3, emb\]"):
        ModelTrace([stream, torch.zeros(1, 2, 4)], [weights], logits)
    with pytest.raises(ValueError, match=r"attentions\[0\] must be \[B=1, n_heads, T=3, T=3\]"):
        ModelTrace([stream, stream], [torch.zeros(1, 2, 3, 2)], logits)
    with pytest.raises(ValueError, match=r"logits must be a \[B, T, vocab\] tensor"):
        ModelTrace([stream], [], torch.zeros(3, 10))
    assert ModelTrace((stream, stream), (weights,), logits).n_layers == 1
