"""Spec of the KV cache against the book's own KV-cache tests, for every family of decoder.

The book's package tests its cached GPT-2, Llama 3 and Qwen3 (dense and mixture of experts) on
one tiny shape: a context of 8 tokens, 2 layers, 4 query heads of 4 features, 2 key/value heads.
Each property here is one of those behaviours, stated for drawn prompts: cached greedy decoding
is the plain loop's, a sequence past the context is refused with its length, a refused step
leaves the cache as it was, and a budget larger than the context stops at the end token.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.generation import generate_text_simple, generate_text_simple_stream
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.modern import DecoderModel, LlamaConfig, Qwen3Config, Qwen3MoeConfig
from spec.strategies import seeds

pytestmark = pytest.mark.ch05

# The book's test shape, in each family's own fields.
SHAPE = {"vocab_size": 32, "context_length": 8, "emb_dim": 16, "n_heads": 4, "n_layers": 2}
DECODER = {**SHAPE, "hidden_dim": 32, "head_dim": 4, "n_kv_heads": 2, "rope_theta": 1e6}
FAMILIES = {
    "gpt2": lambda: GPTModel(GPTConfig(**SHAPE, drop_rate=0.0)),
    "llama3": lambda: DecoderModel(LlamaConfig(**DECODER)),
    "qwen3": lambda: DecoderModel(Qwen3Config(**DECODER)),
    "qwen3_moe": lambda: DecoderModel(Qwen3MoeConfig(**DECODER, n_experts=4,
                                                     n_experts_per_token=2, moe_hidden_dim=32)),
}
families = st.sampled_from(sorted(FAMILIES))


def make(family, seed):
    torch.manual_seed(seed)
    return FAMILIES[family]().eval()


def book_regex(length):
    return rf"Sequence length {length} exceeds .*8 tokens"


def plain_greedy(model, idx, max_new_tokens):
    """The reference: the whole window through the model at every step, argmax appended."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -8:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@settings(max_examples=5)
@given(family=families, seed=seeds, batch=st.integers(1, 2), prompt=st.integers(1, 8),
       new=st.integers(1, 6))
def test_cached_greedy_generation_is_the_plain_loop_every_time_it_runs(
        family, seed, batch, prompt, new):
    model = make(family, seed % 1000)
    idx = torch.randint(0, 32, (batch, prompt), generator=torch.Generator().manual_seed(seed))
    expected = plain_greedy(model, idx, new)
    first = generate_text_simple(model, idx, new, 8, use_cache=True)
    again = generate_text_simple(model, idx, new, 8, use_cache=True)  # no state left behind
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert torch.equal(generate_text_simple(model, idx, new, use_cache=False), expected)
    streamed = list(generate_text_simple_stream(model, idx, new))
    assert all(step.shape == (batch, 1) for step in streamed)
    assert torch.equal(torch.cat([idx, *streamed], dim=1), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_prompt_past_the_context_is_refused_with_its_length_cached_or_not(family):
    model = make(family, 123)
    tokens = torch.ones((2, 9), dtype=torch.long)
    with pytest.raises(ValueError, match=book_regex(9)):
        model(tokens)
    with pytest.raises(ValueError, match=book_regex(9)):
        model(tokens, kv_cache=model.new_kv_cache(2))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_refused_cached_step_leaves_the_cache_and_its_last_position_usable(family):
    model = make(family, 123)
    tokens = torch.arange(1, 9).repeat(2, 1)  # (2, 8): fills the context exactly
    cache = model.new_kv_cache(2)
    with torch.no_grad():
        model(tokens[:, :7], kv_cache=cache)
        with pytest.raises(ValueError, match=book_regex(9)):
            model(tokens[:, -2:], kv_cache=cache)
        assert cache.length == 7
        last = model(tokens[:, -1:], kv_cache=cache)
        expected = model(tokens)[:, -1:]
    torch.testing.assert_close(last, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_budget_past_the_context_stops_at_once_when_the_first_token_is_the_end(family):
    model = make(family, 123)
    with torch.no_grad():
        model.out_head.weight.zero_()  # every logit 0: the argmax is token 0
    assert list(generate_text_simple_stream(model, torch.tensor([[1, 2]]), max_new_tokens=16,
                                            eos_token_id=0)) == []
