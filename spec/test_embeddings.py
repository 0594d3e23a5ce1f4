"""Properties of the token plus positional embedding layer (chapter 2)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gpt_components.embeddings import GPTEmbedding
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch02


@st.composite
def embedding_cases(draw):
    """A float64 layer drawn from a seed, and token ids that fit it."""
    vocab_size = draw(st.integers(1, 50))
    emb_dim = draw(st.integers(1, 8))
    context_length = draw(st.integers(1, 10))
    batch = draw(st.integers(1, 4))
    tokens = draw(st.integers(1, context_length))
    seed = draw(seeds)
    layer = GPTEmbedding(vocab_size, emb_dim, context_length, generator=generator(seed)).double()
    ids = torch.randint(0, vocab_size, (batch, tokens), generator=generator(seed + 1))
    return layer, ids


def formula(layer: GPTEmbedding, ids: torch.Tensor) -> torch.Tensor:
    """out[b, t] = tok_emb.weight[ids[b, t]] + pos_emb.weight[t], element by element."""
    batch, tokens = ids.shape
    rows = [[layer.tok_emb.weight[ids[b, t]] + layer.pos_emb.weight[t] for t in range(tokens)]
            for b in range(batch)]
    return torch.stack([torch.stack(row) for row in rows])


@given(embedding_cases())
def test_each_output_is_its_tokens_row_plus_its_positions_row(case):
    layer, ids = case
    out = layer(ids)
    assert out.shape == (*ids.shape, layer.tok_emb.embedding_dim)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, formula(layer, ids), rtol=0, atol=0)


@given(embedding_cases())
def test_without_dropout_train_and_eval_modes_agree(case):
    layer, ids = case
    assert torch.equal(layer.train()(ids), layer.eval()(ids))


@given(embedding_cases(), st.floats(0.1, 0.9), seeds)
def test_dropout_zeroes_or_rescales_in_train_mode_and_is_off_in_eval_mode(case, rate, seed):
    layer, ids = case
    layer.drop_emb.p = rate
    expected = formula(layer, ids)
    torch.testing.assert_close(layer.eval()(ids), expected, rtol=0, atol=0)
    layer.train()
    with torch.random.fork_rng():  # nn.Dropout draws from torch's global generator
        torch.manual_seed(seed)
        out = layer(ids)
    kept = out != 0
    torch.testing.assert_close(out[kept], expected[kept] / (1 - rate))


def test_dropout_in_train_mode_drops_some_and_keeps_some():
    layer = GPTEmbedding(10, 64, 8, drop_rate=0.5, generator=generator(0))
    ids = torch.arange(8).reshape(1, 8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        zeros = (layer.train()(ids) == 0).float().mean().item()
    assert 0.3 < zeros < 0.7
    assert (layer.eval()(ids) == 0).sum() == 0


def test_the_books_layer_shapes_and_parameter_count():
    layer = GPTEmbedding(50257, 256, 4, generator=generator(0))
    assert isinstance(layer.tok_emb, torch.nn.Embedding)
    assert isinstance(layer.pos_emb, torch.nn.Embedding)
    assert layer.tok_emb.weight.shape == (50257, 256)
    assert layer.pos_emb.weight.shape == (4, 256)
    assert sum(p.numel() for p in layer.parameters()) == 50257 * 256 + 4 * 256
    assert layer(torch.zeros(8, 4, dtype=torch.int64)).shape == (8, 4, 256)


@given(seeds)
def test_initialisation_follows_the_generator_with_unit_normal_rows(seed):
    a = GPTEmbedding(300, 16, 20, generator=generator(seed))
    b = GPTEmbedding(300, 16, 20, generator=generator(seed))
    assert torch.equal(a.tok_emb.weight, b.tok_emb.weight)
    assert torch.equal(a.pos_emb.weight, b.pos_emb.weight)
    assert not torch.equal(a.tok_emb.weight[:20], a.pos_emb.weight)
    assert abs(a.tok_emb.weight.mean().item()) < 0.1
    assert 0.9 < a.tok_emb.weight.std().item() < 1.1


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8])
def test_any_integer_dtype_is_accepted(dtype):
    layer = GPTEmbedding(7, 3, 5, generator=generator(1))
    ids = torch.tensor([[6, 0, 3]])
    assert torch.equal(layer(ids.to(dtype)), layer(ids))


@pytest.mark.parametrize(
    ("ids", "error", "name"),
    [
        ([[1, 2]], TypeError, r"in_idx\b.*\blist"),
        (torch.tensor([[1.0, 2.0]]), TypeError, "in_idx"),
        (torch.tensor([[True, False]]), TypeError, "in_idx"),
        (torch.tensor([1, 2]), ValueError, "in_idx"),
        (torch.tensor([[[1, 2]]]), ValueError, "in_idx"),
        (torch.zeros(1, 6, dtype=torch.int64), ValueError, "context_length"),
        (torch.tensor([[0, 7]]), ValueError, r"in_idx\b.* 7, outside 0\.\.6 \(vocab_size=7\)"),
        (torch.tensor([[0, -1]]), ValueError, r"in_idx\b.* -1, outside 0\.\.6\b"),
        (torch.tensor([[-1, 7]]), ValueError, r"in_idx\b.* -1, outside"),
        (torch.tensor([[1, 7]]), ValueError, r"in_idx\b.* 7, outside"),
    ],
)
def test_bad_token_ids_are_rejected_naming_the_problem(ids, error, name):
    layer = GPTEmbedding(7, 3, 5)
    with pytest.raises(error, match=rf"\b{name}"):
        layer(ids)


def test_exactly_context_length_tokens_and_the_last_id_are_accepted():
    layer = GPTEmbedding(7, 3, 5)
    assert layer(torch.full((2, 5), 6)).shape == (2, 5, 3)
    assert layer(torch.zeros(2, 0, dtype=torch.int64)).shape == (2, 0, 3)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_drop_rate_bounds_zero_and_one_are_accepted(rate):
    layer = GPTEmbedding(7, 3, 5, drop_rate=rate).train()
    out = layer(torch.tensor([[1, 2]]))
    assert bool((out == 0).all()) == (rate == 1.0)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "name"),
    [
        ((0, 3, 5), {}, ValueError, "vocab_size"),
        ((7, 0, 5), {}, ValueError, "emb_dim"),
        ((7, 3, 0), {}, ValueError, "context_length"),
        ((7.0, 3, 5), {}, TypeError, "vocab_size"),
        ((7, "3", 5), {}, TypeError, "emb_dim"),
        ((7, 3, None), {}, TypeError, "context_length"),
        ((7, 3, 5), {"drop_rate": -0.1}, ValueError, "drop_rate"),
        ((7, 3, 5), {"drop_rate": 1.5}, ValueError, "drop_rate"),
        ((7, 3, 5), {"drop_rate": "0.1"}, TypeError, "drop_rate"),
    ],
)
def test_bad_sizes_are_rejected_naming_them(args, kwargs, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        GPTEmbedding(*args, **kwargs)
