"""Spec of GPTModel (chapter 4): causality, batch independence, kernels, KV cache, sizes."""

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from torch import nn

from gpt_components.kv_cache import KVCache
from gpt_components.model import (
    MODEL_PRESETS,
    GPTConfig,
    GPTModel,
    count_parameters,
    memory_footprint_mb,
)
from spec.strategies import (
    decoding_layout,
    generator,
    layouts,
    random_gpt_model,
    seeds,
    tiny_gpt_configs,
)

pytestmark = pytest.mark.ch04

EXACT = {"rtol": 1e-10, "atol": 1e-10}


def token_ids(cfg, seed, batch, tokens):
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=generator(seed))


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 3), data=st.data())
def test_changing_tokens_after_position_t_never_changes_logits_up_to_t(cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)
    tokens = data.draw(st.integers(2, cfg.context_length))
    t = data.draw(st.integers(0, tokens - 2))
    idx = token_ids(cfg, seed + 1, batch, tokens)
    changed = idx.clone()
    changed[:, t + 1:] = token_ids(cfg, seed + 2, batch, tokens - t - 1)
    torch.testing.assert_close(model(changed)[:, :t + 1], model(idx)[:, :t + 1], **EXACT)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(2, 4), data=st.data())
def test_a_rows_logits_do_not_depend_on_the_other_rows(cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)
    tokens = data.draw(st.integers(1, cfg.context_length))
    row = data.draw(st.integers(0, batch - 1))
    idx = token_ids(cfg, seed + 1, batch, tokens)
    torch.testing.assert_close(model(idx)[row], model(idx[row:row + 1])[0], **EXACT)


@given(cfg=tiny_gpt_configs(attn_kernel="sdpa"), seed=seeds, batch=st.integers(1, 3),
       data=st.data())
def test_sdpa_and_textbook_kernels_give_the_same_logits(cfg, seed, batch, data):
    fast = random_gpt_model(cfg, seed)
    textbook = GPTModel(dataclasses.replace(cfg, attn_kernel="textbook")).double().eval()
    textbook.load_state_dict(fast.state_dict())
    idx = token_ids(cfg, seed + 1, batch, data.draw(st.integers(1, cfg.context_length)))
    torch.testing.assert_close(fast(idx), textbook(idx), **EXACT)


@settings(max_examples=10)
@given(cfg=tiny_gpt_configs(layer_kernel="fused"), seed=seeds, batch=st.integers(1, 3),
       data=st.data())
def test_fused_and_textbook_layer_kernels_give_the_same_logits_and_gradients(
        cfg, seed, batch, data):
    fused = random_gpt_model(cfg, seed)
    textbook = GPTModel(dataclasses.replace(cfg, layer_kernel="textbook")).double().eval()
    textbook.load_state_dict(fused.state_dict())  # the same keys: checkpoints load either way
    idx = token_ids(cfg, seed + 1, batch, data.draw(st.integers(1, cfg.context_length)))
    targets = token_ids(cfg, seed + 2, *idx.shape)

    def logits_and_gradients(model):
        logits = model(idx)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return [logits, *torch.autograd.grad(loss, list(model.parameters()))]

    for got, expected in zip(logits_and_gradients(fused), logits_and_gradients(textbook),
                             strict=True):
        torch.testing.assert_close(got, expected, **EXACT)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 3), data=st.data())
def test_prefix_through_the_cache_then_chunks_give_the_logits_of_one_full_pass(
        cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)
    tokens = data.draw(st.integers(1, cfg.context_length))
    cuts = sorted(data.draw(st.sets(st.integers(1, tokens - 1), max_size=4))) if tokens > 1 else []
    idx = token_ids(cfg, seed + 1, batch, tokens)
    cache = model.new_kv_cache(batch)
    pieces = [model(idx[:, lo:hi], kv_cache=cache)
              for lo, hi in zip([0, *cuts], [*cuts, tokens], strict=True)]
    assert cache.length == tokens
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx), **EXACT)


class CachedDecodingMatchesFullRecompute(RuleBasedStateMachine):
    """Tokens arrive one or a few at a time; after every step the cache and the logits equal a
    full recompute of the window. ``slide`` refills the cache from the last tokens, as
    generation does past the context length."""

    @initialize(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 2))
    def build(self, cfg, seed, batch):
        self.cfg = cfg
        self.model = random_gpt_model(cfg, seed)
        self.cache = self.model.new_kv_cache(batch)
        self.tokens = torch.empty(batch, 0, dtype=torch.long)
        self.start = 0  # first token of the window the cache holds
        self.batch = batch

    def feed(self, new):
        self.tokens = torch.cat([self.tokens, new], dim=1)
        logits = self.model(new, kv_cache=self.cache)
        window = self.tokens[:, self.start:]
        full = self.model(window)
        torch.testing.assert_close(logits, full[:, -new.shape[1]:], **EXACT)
        fresh = self.model.new_kv_cache(self.batch)
        self.model(window, kv_cache=fresh)
        n = window.shape[1]
        torch.testing.assert_close(self.cache.keys[..., :n, :], fresh.keys[..., :n, :], **EXACT)
        torch.testing.assert_close(self.cache.values[..., :n, :], fresh.values[..., :n, :],
                                   **EXACT)

    @precondition(lambda self: self.cache.remaining > 0)
    @rule(data=st.data())
    def append(self, data):
        n = data.draw(st.integers(1, min(3, self.cache.remaining)), label="new tokens")
        seed = data.draw(seeds, label="token seed")
        self.feed(token_ids(self.cfg, seed, self.batch, n))

    @precondition(lambda self: self.tokens.shape[1] > 0)
    @rule(data=st.data())
    def slide(self, data):
        n = self.tokens.shape[1]
        keep = data.draw(st.integers(1, min(n, self.cfg.context_length)), label="tokens kept")
        kept = self.tokens[:, n - keep:]
        self.cache.reset()
        self.tokens, self.start = self.tokens[:, :n - keep], n - keep
        self.feed(kept)

    @invariant()
    def cache_length_counts_the_window(self):
        if hasattr(self, "cache"):
            assert self.cache.length == self.tokens.shape[1] - self.start


# Each step runs the model three times: 25 examples of up to 12 steps keep this near a second.
CachedDecodingMatchesFullRecompute.TestCase.settings = settings(
    max_examples=25, stateful_step_count=12, deadline=None
)
TestCachedDecodingMatchesFullRecomputeAfterEveryStep = CachedDecodingMatchesFullRecompute.TestCase


@given(cfg=tiny_gpt_configs())
def test_the_cache_lives_outside_the_state_dict_and_the_tied_head_is_the_embedding(cfg):
    model = GPTModel(cfg)
    cache = model.new_kv_cache(2)
    assert cache.state_dict() == {} and list(cache.parameters()) == []
    assert cache.keys.shape == (cfg.n_layers, 2, cfg.n_heads, cfg.context_length, cfg.head_dim)
    assert (model.out_head.weight is model.tok_emb.weight) == cfg.tie_weights
    assert not any("mask" in key for key in model.state_dict())


@pytest.mark.parametrize("field", ["n_layers", "batch_size", "n_heads", "head_dim",
                                   "max_tokens"])
@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_a_kv_cache_of_bad_sizes_is_refused_naming_the_size(field, bad):
    sizes = {"n_layers": 1, "batch_size": 1, "n_heads": 2, "head_dim": 4, "max_tokens": 8}
    error = ValueError if bad in (0, -2) else TypeError  # a wrong value, or a wrong type
    with pytest.raises(error, match=rf"^{field} must be an int >= 1, got {bad!r}$"):
        KVCache(**{**sizes, field: bad})


def test_a_full_kv_cache_says_how_full_it_is():
    cache = KVCache(1, 1, 1, 2, max_tokens=3)
    cache.layers[0].store(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    cache.advance(2)
    with pytest.raises(ValueError, match=r"^the cache holds 2 of max_tokens=3 positions; "
                                         r"2 more do not fit$"):
        cache.layers[0].store(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"^num_tokens must be an int in \[0, 1\], got 2$"):
        cache.advance(2)  # more positions than fit are never counted
    assert cache.length == cache.layers[0].length == 2


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 2), data=st.data())
def test_the_blocks_read_token_plus_position_embeddings_positions_continuing_the_cache(
        cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)
    seen = []
    model.trf_blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    tokens = data.draw(st.integers(1, cfg.context_length))
    cut = data.draw(st.integers(0, tokens - 1))
    idx = torch.randint(0, cfg.vocab_size, (batch, tokens), generator=generator(seed + 1))
    cache = model.new_kv_cache(batch)
    if cut:
        model(idx[:, :cut], kv_cache=cache)
    model(idx[:, cut:], kv_cache=cache)
    first_block_input = torch.cat(seen, dim=1)
    expected = model.tok_emb.weight[idx] + model.pos_emb.weight[:tokens]  # (B, T, emb)
    torch.testing.assert_close(first_block_input, expected, rtol=0, atol=0)


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 2), data=st.data())
def test_eval_mode_lays_widening_weights_out_column_major_training_row_major_same_function(
        cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)  # in eval mode
    assert layouts(model) == decoding_layout(model)
    idx = torch.randint(0, cfg.vocab_size, (batch, data.draw(st.integers(1, cfg.context_length))),
                        generator=generator(seed + 1))
    decoding = model(idx)
    decoding.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    parameters = dict(model.named_parameters())
    values = {name: p.detach().clone() for name, p in parameters.items()}
    model.train()  # drop_rate 0: the same function
    assert all(p.is_contiguous() and p.grad.is_contiguous() for p in model.parameters())
    assert dict(model.named_parameters()) == parameters  # the same Parameter objects
    assert all(torch.equal(p, values[name]) and torch.equal(p.grad, grads[name])
               for name, p in model.named_parameters())
    model.zero_grad()
    training = model(idx)
    training.square().sum().backward()
    torch.testing.assert_close(training, decoding, rtol=1e-12, atol=1e-12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-10, atol=1e-10)
    model.eval()
    assert layouts(model) == decoding_layout(model)
    assert all(p.grad.stride() == p.stride() for p in model.parameters())
    # Loading a state dict (tensors in any order) keeps the layout of the mode.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    fresh = GPTModel(cfg).to(torch.float64).train(data.draw(st.booleans(), label="training"))
    before = layouts(fresh)
    fresh.load_state_dict(state)
    assert layouts(fresh) == before
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


@given(cfg=tiny_gpt_configs(), seed=seeds, data=st.data())
def test_without_the_decoding_layout_eval_mode_rounds_exactly_as_training_mode(cfg, seed, data):
    model = random_gpt_model(cfg, seed).train()  # drop_rate 0: the same function in both modes
    idx = torch.randint(0, cfg.vocab_size, (2, data.draw(st.integers(1, cfg.context_length))),
                        generator=generator(seed + 1))
    training = model(idx)
    model.decoding_layout = False
    model.eval()
    assert all(p.is_contiguous() for p in model.parameters())  # training's row-major layout
    assert torch.equal(model(idx), training)
    model.decoding_layout = True
    model.eval()
    assert layouts(model) == decoding_layout(model)


def expected_parameter_count(cfg):
    """GPT-2's size in closed form, term by term."""
    e, v = cfg.emb_dim, cfg.vocab_size
    attention = 3 * e * e + (3 * e if cfg.qkv_bias else 0) + e * e + e
    feed_forward = e * 4 * e + 4 * e + 4 * e * e + e
    block = attention + feed_forward + 2 * 2 * e
    head = 0 if cfg.tie_weights else v * e
    return v * e + cfg.context_length * e + cfg.n_layers * block + 2 * e + head


@pytest.mark.parametrize("name", sorted(MODEL_PRESETS))
@pytest.mark.parametrize("tie_weights", [False, True])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_every_preset_has_gpt2s_closed_form_parameter_count(name, tie_weights, qkv_bias):
    cfg = GPTConfig.from_name(name, tie_weights=tie_weights, qkv_bias=qkv_bias)
    with torch.device("meta"):
        model = GPTModel(cfg)
    assert count_parameters(model) == expected_parameter_count(cfg)


@given(cfg=tiny_gpt_configs())
def test_drawn_configs_have_the_closed_form_parameter_count(cfg):
    assert count_parameters(GPTModel(cfg)) == expected_parameter_count(cfg)


def test_the_books_gpt2_small_figures():
    with torch.device("meta"):
        untied = GPTModel(GPTConfig.from_name("gpt2-small"))
        tied = GPTModel(GPTConfig.from_name("gpt2-small", tie_weights=True))
        openai = GPTModel(GPTConfig.from_name("gpt2-small", tie_weights=True, qkv_bias=True))
    assert count_parameters(untied) == 163_009_536
    assert count_parameters(tied) == 124_412_160
    assert count_parameters(openai) == 124_439_808
    assert round(memory_footprint_mb(untied), 2) == 621.83
    assert memory_footprint_mb(untied, dtype=torch.bfloat16) == memory_footprint_mb(untied) / 2


def test_presets_are_the_published_gpt2_sizes():
    sizes = {name: (c.emb_dim, c.n_layers, c.n_heads) for name, c in MODEL_PRESETS.items()}
    assert sizes["gpt2-small"] == (768, 12, 12)
    assert sizes["gpt2-medium"] == (1024, 24, 16)
    assert sizes["gpt2-large"] == (1280, 36, 20)
    assert sizes["gpt2-xl"] == (1600, 48, 25)
    assert GPTConfig.from_name("gpt2-xl", drop_rate=0.0).drop_rate == 0.0
    assert GPTConfig.from_name("gpt-micro")["emb_dim"] == 128


def test_the_books_dict_config_builds_the_same_model():
    book = {"vocab_size": 60, "context_length": 8, "emb_dim": 16, "n_heads": 2, "n_layers": 1,
            "drop_rate": 0.1, "qkv_bias": False}
    assert GPTModel(book).cfg == GPTConfig(**book)



def books_draws(cfg, seed):
    """The book's GPTModel construction written out as plain layers, in its order, seeded.

    tok_emb, pos_emb; per block W_query, W_key, W_value, out_proj, the feed-forward's two
    linears (norms draw nothing); the output head. Named as the state dict names them.
    """
    torch.manual_seed(seed)
    e, bias = cfg.emb_dim, cfg.qkv_bias
    layers = {"tok_emb": nn.Embedding(cfg.vocab_size, e),
              "pos_emb": nn.Embedding(cfg.context_length, e)}
    for i in range(cfg.n_layers):
        for name, layer in (("att.W_query", nn.Linear(e, e, bias=bias)),
                            ("att.W_key", nn.Linear(e, e, bias=bias)),
                            ("att.W_value", nn.Linear(e, e, bias=bias)),
                            ("att.out_proj", nn.Linear(e, e)),
                            ("ff.layers.0", nn.Linear(e, 4 * e)),
                            ("ff.layers.2", nn.Linear(4 * e, e))):
            layers[f"trf_blocks.{i}.{name}"] = layer
    layers["out_head"] = nn.Linear(e, cfg.vocab_size, bias=False)
    return {f"{name}.{key}": value for name, layer in layers.items()
            for key, value in layer.state_dict().items()}


@settings(max_examples=10)
@given(cfg=tiny_gpt_configs(tie_weights=False), seed=seeds)
def test_a_seeded_model_draws_the_books_weights_in_the_books_order(cfg, seed):
    # Why the book's seeded numbers come out here (chapter 4's "Hello, I am" ids, chapters 5
    # and 7 and appendix D's first losses): the same draws from torch's global generator.
    expected = books_draws(cfg, seed)
    torch.manual_seed(seed)
    got = GPTModel(cfg).state_dict()
    drawn = {name: value for name, value in got.items() if name in expected}
    assert sorted(drawn) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(drawn[name], value), name
    for name in set(got) - set(expected):  # the norms: ones and zeros, as the book's
        assert torch.equal(got[name], torch.full_like(got[name], float(name.endswith("scale"))))

@pytest.mark.parametrize(
    ("idx", "error", "match"),
    [
        ([[1, 2]], TypeError, "idx"),
        (torch.tensor([[1.0, 2.0]]), TypeError, "idx"),
        (torch.tensor([1, 2]), ValueError, "idx"),
        (torch.tensor([[[1, 2]]]), ValueError, "idx"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, "idx"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, r"^idx must hold at least one row"),
        (torch.tensor([[1, 60]]), ValueError,
         r"^idx holds token id 60, outside \[0, vocab_size=60\)$"),
        (torch.tensor([[-1, 2]]), ValueError, r"^idx holds token id -1, outside"),
        (torch.tensor([[0, 70]]), ValueError, r"^idx holds token id 70, outside"),
        (torch.tensor([[True, False]]), TypeError,
         r"^idx must hold integer numbers, got dtype torch\.bool$"),
        ([[1, 2]], TypeError, r"^idx must be a torch\.Tensor, got list$"),
        (torch.zeros(1, 9, dtype=torch.long), ValueError, "context_length"),
    ],
)
def test_bad_token_ids_are_refused_naming_the_parameter(idx, error, match):
    model = GPTModel(GPTConfig(vocab_size=60, context_length=8, emb_dim=8, n_heads=2,
                               n_layers=1))
    with pytest.raises(error, match=match):
        model(idx)


def test_bad_configs_and_caches_are_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="gpt2-small"):
        GPTConfig.from_name("gpt2-tiny")
    with pytest.raises(TypeError, match=r"^overrides must be GPTConfig fields .*\['emb_size'\]$"):
        GPTConfig.from_name("gpt2-small", emb_size=10)
    with pytest.raises(ValueError, match="emb_dim"):
        GPTConfig(emb_dim=10, n_heads=3)
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig(n_layers=0)
    for bad in (1.5, True):
        with pytest.raises(TypeError, match=rf"^n_layers must be an int >= 1, got {bad!r}"):
            GPTConfig(n_layers=bad)
    with pytest.raises(ValueError, match="drop_rate"):
        GPTConfig(drop_rate=1.0)
    with pytest.raises(ValueError, match="attn_kernel"):
        GPTConfig(attn_kernel="flash")
    with pytest.raises(ValueError, match=r"^layer_kernel must be one of \['fused', 'textbook'\], "
                                         r"got 'apex'$"):
        GPTConfig(layer_kernel="apex")
    with pytest.raises(TypeError, match=r"^cfg must be a GPTConfig or a dict of its fields, "
                                        r"got str$"):
        GPTModel("gpt2-small")
    model = GPTModel(GPTConfig(vocab_size=60, context_length=8, emb_dim=8, n_heads=2,
                               n_layers=1))
    with pytest.raises(ValueError, match="max_tokens"):
        model.new_kv_cache(1, max_tokens=9)
    with pytest.raises(ValueError, match="batch_size"):
        model(torch.zeros(2, 1, dtype=torch.long), kv_cache=model.new_kv_cache(1))
    cache = model.new_kv_cache(1, max_tokens=4)
    model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match=r"^Sequence length 5 exceeds the cache's 4 tokens: idx "
                                         r"adds 2 tokens to a kv_cache holding 3 of "
                                         r"max_tokens=4 \(context_length=8\)$"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=cache)
    one = model.new_kv_cache(1, max_tokens=1)  # the smallest cache: one position
    assert model(torch.zeros(1, 1, dtype=torch.long), kv_cache=one).shape[1] == 1
    assert one.length == one.max_tokens == 1
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=KVCache(1, 1, 2, 4, 16))
    with pytest.raises(ValueError, match="max_tokens"):
        KVCache(1, 1, 1, 1, 0)
    with pytest.raises(TypeError, match=r"^model must be a torch\.nn\.Module, got str$"):
        count_parameters("gpt2-small")
    with pytest.raises(TypeError, match=r"^model must be a torch\.nn\.Module, got str$"):
        memory_footprint_mb("gpt2-small")
    with pytest.raises(TypeError, match=r"^dtype must be a torch\.dtype or None, got 'fp16'$"):
        memory_footprint_mb(model, dtype="fp16")
