"""Spec of text generation (chapter 5): greedy, sampling, end of text, KV cache, streaming."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpt_components.generation import (
    generate,
    generate_stream,
    generate_text_simple,
    sample_next_token,
    text_to_token_ids,
    token_ids_to_text,
)
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.tokenizers import gpt2_tokenizer
from spec.strategies import generator, random_gpt_model, seeds, tiny_gpt_configs

pytestmark = pytest.mark.ch05


def token_ids(cfg, seed, batch, tokens):
    return torch.randint(0, cfg.vocab_size, (batch, tokens), generator=generator(seed))


def drawn_logits(seed, batch, vocab):
    """Logits spread wide enough that sampling has real choices; float64 to avoid ties."""
    return torch.randn(batch, vocab, generator=generator(seed), dtype=torch.float64) * 2


@st.composite
def runs(draw, **fixed):
    """A drawn model, prompt and length; runs often cross the context length."""
    cfg = draw(tiny_gpt_configs(**fixed))
    seed = draw(seeds)
    prompt = draw(st.integers(1, cfg.context_length + 4))
    batch = draw(st.integers(1, 2))
    return (random_gpt_model(cfg, seed), token_ids(cfg, seed + 1, batch, prompt),
            draw(st.integers(0, cfg.context_length + 4)),
            draw(st.integers(1, cfg.context_length)))


def greedy_reference(model, idx, max_new_tokens, context_size):
    """The plainest loop: full forward over the window, argmax of the last position."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@given(run=runs(), use_cache=st.booleans())
def test_temperature_zero_is_the_argmax_of_the_window_at_every_step(run, use_cache):
    model, idx, max_new_tokens, context_size = run
    expected = greedy_reference(model, idx, max_new_tokens, context_size)
    out = generate(model, idx, max_new_tokens, context_size, use_cache=use_cache)
    assert torch.equal(out, expected)
    assert torch.equal(generate_text_simple(model, idx, max_new_tokens, context_size), expected)


@given(run=runs())
def test_cached_and_uncached_greedy_decoding_give_identical_tokens(run):
    model, idx, max_new_tokens, context_size = run
    cached = generate(model, idx, max_new_tokens, context_size, use_cache=True)
    uncached = generate(model, idx, max_new_tokens, context_size, use_cache=False)
    assert torch.equal(cached, uncached)


@given(run=runs(), seed=seeds, temperature=st.floats(0.3, 3.0),
       top_k=st.none() | st.integers(1, 20), top_p=st.none() | st.floats(0.05, 1.0))
def test_cached_and_uncached_sampling_draw_the_same_tokens_from_the_same_seed(
        run, seed, temperature, top_k, top_p):
    model, idx, max_new_tokens, context_size = run
    kwargs = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    cached = generate(model, idx, max_new_tokens, context_size, use_cache=True,
                      generator=generator(seed), **kwargs)
    uncached = generate(model, idx, max_new_tokens, context_size, use_cache=False,
                        generator=generator(seed), **kwargs)
    assert torch.equal(cached, uncached)


@given(run=runs(), extra=st.integers(1, 6))
def test_a_prompt_longer_than_the_context_is_cropped_to_its_last_tokens(run, extra):
    model, idx, max_new_tokens, context_size = run
    longer = torch.cat([torch.zeros(idx.shape[0], extra, dtype=idx.dtype), idx], dim=1)
    cropped = longer[:, -context_size:]
    out = generate(model, longer, max_new_tokens, context_size)
    expected = generate(model, cropped, max_new_tokens, context_size)
    assert torch.equal(out[:, longer.shape[1]:], expected[:, cropped.shape[1]:])
    assert torch.equal(out[:, :longer.shape[1]], longer)


@given(seed=seeds, batch=st.integers(1, 4), vocab=st.integers(2, 60), draws=st.integers(1, 5))
def test_temperature_zero_returns_the_argmax_whatever_top_k_and_top_p(seed, batch, vocab, draws):
    logits = drawn_logits(seed, batch, vocab)
    out = sample_next_token(logits, 0.0, top_k=min(draws, vocab), top_p=0.5)
    assert torch.equal(out.squeeze(1), logits.argmax(-1))


@given(seed=seeds, batch=st.integers(1, 4), vocab=st.integers(2, 60), data=st.data(),
       temperature=st.floats(0.1, 10.0))
def test_every_sampled_token_is_among_the_top_k_logits(seed, batch, vocab, data, temperature):
    top_k = data.draw(st.integers(1, vocab))
    logits = drawn_logits(seed, batch, vocab)
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1]
    g = generator(seed + 1)
    for _ in range(5):
        token = sample_next_token(logits, temperature, top_k=top_k, generator=g).squeeze(1)
        assert bool((logits.gather(1, token[:, None]).squeeze(1) >= kth).all())


def more_probable_mass(probs, token):
    """Probability of the tokens strictly more probable than ``token``, per row (float64)."""
    chosen = probs.gather(1, token[:, None])
    return torch.where(probs > chosen, probs, 0).sum(-1)


@given(seed=seeds, batch=st.integers(1, 4), vocab=st.integers(2, 60),
       top_p=st.floats(0.01, 1.0), temperature=st.floats(0.1, 10.0),
       top_k=st.none() | st.integers(1, 60))
@example(seed=0, batch=1, vocab=10, top_p=1.0, temperature=1.0, top_k=None)
def test_every_sampled_token_lies_in_the_smallest_set_reaching_top_p(
        seed, batch, vocab, top_p, temperature, top_k):
    top_k = None if top_k is None else min(top_k, vocab)  # often exactly the vocabulary
    logits = drawn_logits(seed, batch, vocab)
    if top_k is not None and top_k < vocab:  # top-p applies to the top-k distribution
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        probs = torch.softmax(logits.masked_fill(logits < kth, float("-inf")), -1)
    else:
        probs = torch.softmax(logits, -1)
    g = generator(seed + 1)
    for _ in range(5):
        token = sample_next_token(logits, temperature, top_k=top_k, top_p=top_p,
                                  generator=g).squeeze(1)
        # The token is in the nucleus iff the mass strictly above it has not yet reached top_p.
        assert bool((more_probable_mass(probs, token) < top_p + 1e-12).all())
        assert bool((probs.gather(1, token[:, None]) > 0).all())


@given(seed=seeds, batch=st.integers(1, 3), vocab=st.integers(2, 30),
       temperature=st.floats(0.1, 5.0))
def test_the_same_generator_seed_gives_the_same_tokens(seed, batch, vocab, temperature):
    logits = drawn_logits(seed, batch, vocab)
    first = [sample_next_token(logits, temperature, generator=g) for g in [generator(seed)] * 4]
    second = [sample_next_token(logits, temperature, generator=g) for g in [generator(seed)] * 4]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def nucleus_reference(logits, temperature, top_k, top_p):
    """The sampling distribution of one row, built by sorting in float64 by hand."""
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    kept = order[:top_k] if top_k else order
    probs = torch.softmax(logits[kept], -1)
    nucleus, mass = [], 0.0
    for i, p in zip(kept, probs.tolist(), strict=True):
        if mass >= top_p:
            break
        nucleus.append(i)
        mass += p
    expected = torch.zeros_like(logits)
    expected[nucleus] = torch.softmax(logits[nucleus] / temperature, -1)
    return expected


@given(seed=seeds, vocab=st.integers(2, 6), temperature=st.floats(0.5, 2.0),
       top_k=st.none() | st.integers(1, 6), top_p=st.floats(0.3, 1.0))
def test_sampling_follows_the_tempered_softmax_of_the_nucleus_of_the_top_k(
        seed, vocab, temperature, top_k, top_p):
    top_k = None if top_k is None else min(top_k, vocab)  # a top_k past the vocabulary: refused
    logits = drawn_logits(seed, 1, vocab) / 2
    n = 4000
    draws = sample_next_token(logits.expand(n, vocab), temperature, top_k=top_k, top_p=top_p,
                              generator=generator(seed))
    freq = torch.bincount(draws.squeeze(1), minlength=vocab).double() / n
    expected = nucleus_reference(logits[0], temperature, top_k, top_p)
    # Five standard errors of a frequency out of n draws.
    assert bool(((freq - expected).abs() <= 5 * (expected * (1 - expected) / n).sqrt() + 1e-3)
                .all())


@given(cfg=tiny_gpt_configs(), seed=seeds, batch=st.integers(1, 3), data=st.data())
def test_each_row_stops_at_its_own_eos_and_is_padded_with_it(cfg, seed, batch, data):
    model = random_gpt_model(cfg, seed)
    idx = token_ids(cfg, seed + 1, batch, data.draw(st.integers(1, cfg.context_length)))
    max_new_tokens = data.draw(st.integers(1, 2 * cfg.context_length))
    free = generate(model, idx, max_new_tokens)[:, idx.shape[1]:]
    # An eos that row 0 certainly produces, so at least one row finishes.
    eos_id = int(free[0, data.draw(st.integers(0, max_new_tokens - 1))])
    out = generate(model, idx, max_new_tokens, eos_id=eos_id, use_cache=data.draw(st.booleans()))
    new = out[:, idx.shape[1]:]
    assert torch.equal(out[:, :idx.shape[1]], idx)
    ends = []
    for row in range(batch):
        hits = (free[row] == eos_id).nonzero()
        end = int(hits[0]) if len(hits) else max_new_tokens
        ends.append(end)
        # Each row is the row's own free run up to its first eos...
        assert torch.equal(new[row, :end], free[row, :end])
        # ...then eos padding.
        assert bool((new[row, end:] == eos_id).all())
    # Generation stops once every row has finished, without appending the last end token.
    assert new.shape[1] == max(ends)


def books_generate(model, idx, max_new_tokens, context_size, eos_id):
    """Chapter 5's greedy ``generate`` as the book writes it: stop before appending eos."""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(idx[:, -context_size:])[:, -1, :]
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        if idx_next == eos_id:
            break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


@settings(max_examples=8)
@given(cfg=tiny_gpt_configs(), seed=seeds, data=st.data())
def test_one_row_with_eos_gives_exactly_the_books_generate(cfg, seed, data):
    model = random_gpt_model(cfg, seed)
    idx = token_ids(cfg, seed + 1, 1, data.draw(st.integers(1, cfg.context_length)))
    max_new_tokens = data.draw(st.integers(1, 2 * cfg.context_length))
    free = generate(model, idx, max_new_tokens)[0, idx.shape[1]:].tolist()
    eos_id = data.draw(st.sampled_from([*free, cfg.vocab_size - 1]))
    expected = books_generate(model, idx, max_new_tokens, cfg.context_length, eos_id)
    for use_cache in (True, False):
        got = generate(model, idx, max_new_tokens, eos_id=eos_id, use_cache=use_cache)
        assert torch.equal(got, expected)


@given(run=runs(), seed=seeds)
def test_streaming_yields_each_steps_tokens_as_generate_returns_them(run, seed):
    model, idx, max_new_tokens, context_size = run
    steps = list(generate_stream(model, idx, max_new_tokens, context_size, temperature=1.0,
                                 generator=generator(seed)))
    assert len(steps) == max_new_tokens
    assert all(step.shape == (idx.shape[0], 1) for step in steps)
    out = generate(model, idx, max_new_tokens, context_size, temperature=1.0,
                   generator=generator(seed))
    assert torch.equal(torch.cat([idx, *steps], dim=1), out)


def test_streaming_leaves_grad_mode_and_the_models_mode_to_the_caller():
    model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).train()
    for _ in generate_stream(model, torch.tensor([[1, 2]]), 3):
        assert torch.is_grad_enabled()
    assert model.training


@given(text=st.text(max_size=40))
@example(text="Hello, world <|endoftext|> again")
def test_text_to_token_ids_and_back_is_the_identity(text):
    ids = text_to_token_ids(text)
    assert ids.shape == (1, len(gpt2_tokenizer().encode(text, allowed_special="all")))
    assert token_ids_to_text(ids) == text
    assert token_ids_to_text(ids[0]) == token_ids_to_text(ids[0].tolist()) == text


def test_the_books_example_tokens():
    ids = text_to_token_ids("Every effort moves you")
    assert ids.tolist() == [[6109, 3626, 6100, 345]]


BAD_GENERATE_ARGUMENTS = [  # each message starts with the parameter's name
    ({"idx": [[1, 2]]}, TypeError, r"^idx must be a torch\.Tensor"),
    ({"idx": torch.tensor([[1.0]])}, TypeError, r"^idx must hold integer numbers"),
    ({"idx": torch.tensor([1, 2])}, ValueError, r"^idx must be 2-D"),
    ({"idx": torch.tensor([[1, 50]])}, ValueError, r"^idx holds token id 50, .*vocab_size=50"),
    ({"max_new_tokens": -1}, ValueError, r"^max_new_tokens must be an int >= 0, got -1$"),
    ({"max_new_tokens": 2.0}, TypeError, r"^max_new_tokens must be an int >= 0, got 2\.0$"),
    ({"context_size": 65}, ValueError, r"^context_size must be <= .*=64, got 65$"),
    ({"context_size": 0}, ValueError, r"^context_size must be an int >= 1, got 0$"),
    ({"temperature": -0.5}, ValueError, r"^temperature must be a float >= 0, got -0\.5$"),
    ({"temperature": float("inf")}, ValueError,
     r"^temperature must be a float >= 0 \(finite\), got inf$"),
    ({"temperature": "hot"}, TypeError, r"^temperature must be a float >= 0, got 'hot'$"),
    ({"top_k": 0}, ValueError, r"^top_k must be an int >= 1 or None, got 0$"),
    ({"top_p": 0.0}, ValueError, r"^top_p must be a float in \(0, 1\] or None, got 0\.0$"),
    ({"top_p": 1.5}, ValueError, r"^top_p must be a float in \(0, 1\] or None, got 1\.5$"),
    ({"top_p": True}, TypeError, r"^top_p must be a float in \(0, 1\] or None, got True$"),
    ({"top_p": "0.5"}, TypeError, r"^top_p must be a float"),
    ({"eos_id": 50}, ValueError, r"^eos_id must be in \[0, vocab_size=50\), got 50$"),
    ({"eos_id": -1}, ValueError, r"^eos_id must be an int >= 0, got -1$"),
    ({"generator": 42}, TypeError, r"^generator must be a torch\.Generator or None, got int$"),
    ({"use_cache": "yes"}, TypeError, r"^use_cache must be True or False, got 'yes'$"),
]


@pytest.mark.parametrize(("override", "error", "match"), BAD_GENERATE_ARGUMENTS)
@pytest.mark.parametrize("function", [generate, generate_stream])
def test_bad_generation_arguments_are_refused_naming_the_parameter(
        function, override, error, match):
    model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
    kwargs = {"idx": torch.tensor([[1, 2]]), "max_new_tokens": 2, **override}
    with pytest.raises(error, match=match):
        function(model, **kwargs)


def test_other_bad_inputs_are_refused_naming_the_parameter():
    with pytest.raises(TypeError, match=r"^model must be a language model of .*got Linear$"):
        generate(torch.nn.Linear(2, 2), torch.tensor([[1]]), 1)
    with pytest.raises(ValueError, match=r"^logits must be a 2-D .*got shape \(3,\)$"):
        sample_next_token(torch.zeros(3), 1.0)
    with pytest.raises(TypeError, match=r"^logits must be a torch\.Tensor, got list$"):
        sample_next_token([[0.0, 1.0]], 1.0)
    with pytest.raises(TypeError, match=r"^text must be a str, got bytes$"):
        text_to_token_ids(b"bytes")
    with pytest.raises(ValueError, match="token_ids"):
        token_ids_to_text(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^context_size must be an int >= 1, got 0$"):
        generate_text_simple(torch.nn.Identity(), torch.tensor([[1]]), 1, 0)
    with pytest.raises(ValueError, match=r"^max_new_tokens must be an int >= 0, got -1$"):
        generate_text_simple(torch.nn.Identity(), torch.tensor([[1]]), -1, 1)
    with pytest.raises(TypeError, match=r"^max_new_tokens must be an int"):
        generate_text_simple(torch.nn.Identity(), torch.tensor([[1]]), None, 1)


@pytest.mark.parametrize(("override", "error", "match"), [
    ({"top_k": 0}, ValueError, r"^top_k must be an int >= 1"),
    ({"top_p": 1.5}, ValueError, r"^top_p must be a float in"),
    ({"temperature": -1.0}, ValueError, r"^temperature must be"),
    ({"generator": 7}, TypeError, r"^generator must be a torch\.Generator"),
])
def test_sample_next_token_checks_its_own_arguments(override, error, match):
    kwargs = {"temperature": 1.0, **override}
    with pytest.raises(error, match=match):
        sample_next_token(torch.zeros(2, 5), **kwargs)


@given(seed=seeds, batch=st.integers(1, 3), vocab=st.integers(2, 30))
def test_by_default_sampling_is_greedy(seed, batch, vocab):
    logits = drawn_logits(seed, batch, vocab)
    assert torch.equal(sample_next_token(logits).squeeze(1), logits.argmax(-1))


@given(run=runs())
def test_by_default_generation_is_greedy_streamed_or_not(run):
    model, idx, max_new_tokens, context_size = run
    expected = greedy_reference(model, idx, max_new_tokens, context_size)
    assert torch.equal(generate(model, idx, max_new_tokens, context_size), expected)
    streamed = list(generate_stream(model, idx, max_new_tokens, context_size))
    assert torch.equal(torch.cat([idx, *streamed], dim=1), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_tiny_temperature_on_huge_logits_does_not_overflow(dtype):
    # Divided by 0.01, 1e37 and 2e37 overflow float32: the scaling must come after the shift.
    huge = 1e37 if dtype == torch.float32 else 1e307
    logits = torch.tensor([[0.0, huge, -huge], [huge, 0.0, huge / 2]], dtype=dtype)
    out = sample_next_token(logits, temperature=0.01, generator=generator(0))
    assert out.squeeze(1).tolist() == [1, 0]


@given(seed=seeds, vocab=st.integers(3, 20), data=st.data())
def test_top_p_equal_to_a_running_total_keeps_exactly_the_tokens_up_to_it(seed, vocab, data):
    # "The smallest set reaching top_p": reaching includes equality.
    logits = drawn_logits(seed, 1, vocab)
    probs = torch.softmax(logits, -1)
    ranked = probs.sort(-1, descending=True)
    j = data.draw(st.integers(1, vocab - 1))
    top_p = float(ranked.values.cumsum(-1)[0, j - 1])  # exactly the mass of the first j
    if not 0 < top_p < 1:
        return
    kept = set(ranked.indices[0, :j].tolist())
    g = generator(seed + 1)
    draws = {int(sample_next_token(logits, 1.0, top_p=top_p, generator=g)) for _ in range(30)}
    assert draws <= kept


def test_eos_id_zero_is_a_valid_id():
    model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
    out = generate(model, torch.tensor([[1, 2]]), 3, eos_id=0)
    assert out.shape[0] == 1 and out.shape[1] <= 5


def test_text_conversions_use_the_tokenizer_they_are_given():
    from gpt_components.bpe import BPETokenizer

    tok = BPETokenizer.train("a small corpus of a few words, a few times", vocab_size=270)
    ids = text_to_token_ids("a few words", tok)
    assert ids.tolist() == [tok.encode("a few words")]
    assert token_ids_to_text(ids, tok) == "a few words"


def fed_lengths(model):
    """Record how many tokens each forward pass of ``model`` is fed."""
    lengths = []
    hidden_states = model.hidden_states

    def spy(idx, kv_cache=None):
        lengths.append(idx.shape[1])
        return hidden_states(idx, kv_cache)

    model.hidden_states = spy
    return lengths


def expected_fed_lengths(prompt, max_new_tokens, context_size, cached):
    """How many tokens each step feeds the model, as the KV cache's contract says."""
    window = [min(prompt + i, context_size) for i in range(max_new_tokens)]
    if not cached:
        return window  # every step recomputes the whole window
    expected, stored = [], 0
    for i in range(max_new_tokens):
        if i > 0 and stored < context_size:
            expected.append(1)  # room left: only the newest token
            stored += 1
        else:
            expected.append(window[i])  # first step, or full: refill from the last tokens
            stored = window[i]
    return expected


@given(run=runs())
def test_the_cache_feeds_one_new_token_a_step_until_the_window_is_full(run):
    # The cache's promise is speed: check that it is used, not only that it changes nothing.
    model, idx, max_new_tokens, context_size = run
    lengths = fed_lengths(model)
    for cached, kwargs in ((True, {}), (True, {"use_cache": True}), (False, {"use_cache": False})):
        for stream in (False, True):  # generate and generate_stream share the defaults
            lengths.clear()
            if stream:
                list(generate_stream(model, idx, max_new_tokens, context_size, **kwargs))
            else:
                generate(model, idx, max_new_tokens, context_size, **kwargs)
            assert lengths == expected_fed_lengths(idx.shape[1], max_new_tokens, context_size,
                                                   cached), (cached, kwargs, stream)


def sampling_reference(model, idx, max_new_tokens, context_size, g, **kwargs):
    """The plainest sampling loop: the model's own logits of the window, one draw a step."""
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1]
        idx = torch.cat([idx, sample_next_token(logits, generator=g, **kwargs)], dim=1)
    return idx


@given(run=runs(), seed=seeds, temperature=st.floats(0.3, 3.0),
       top_k=st.none() | st.integers(1, 20), top_p=st.none() | st.floats(0.05, 0.95),
       use_cache=st.booleans())
def test_sampling_draws_what_a_loop_over_the_models_own_logits_draws(
        run, seed, temperature, top_k, top_p, use_cache):
    # generate applies the head to the last position only, through its own copy of the head
    # on a CPU: the draws must still be those of the model's forward.
    model, idx, max_new_tokens, context_size = run
    kwargs = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    expected = sampling_reference(model, idx, max_new_tokens, context_size, generator(seed),
                                  **kwargs)
    out = generate(model, idx, max_new_tokens, context_size, use_cache=use_cache,
                   generator=generator(seed), **kwargs)
    assert torch.equal(out, expected)


@given(run=runs(), head=st.sampled_from(["biased", "lora"]), use_cache=st.booleans())
def test_a_replaced_or_adapted_output_head_is_the_one_generation_uses(run, head, use_cache):
    model, idx, max_new_tokens, context_size = run
    emb, vocab = model.cfg.emb_dim, model.cfg.vocab_size
    g = generator(max_new_tokens)
    if head == "biased":
        model.out_head = torch.nn.Linear(emb, vocab, dtype=torch.float64)
        with torch.no_grad():
            model.out_head.bias.copy_(torch.randn(vocab, generator=g, dtype=torch.float64) * 3)
    else:
        from gpt_components.finetune.lora import LinearWithLoRA

        model.out_head = LinearWithLoRA(model.out_head, rank=2, alpha=1.0, generator=g)
        with torch.no_grad():
            model.out_head.lora.B.copy_(torch.randn(2, vocab, generator=g,
                                                    dtype=torch.float64) * 3)
    expected = greedy_reference(model, idx, max_new_tokens, context_size)
    assert torch.equal(generate(model, idx, max_new_tokens, context_size,
                                use_cache=use_cache), expected)


def test_a_plain_cpu_head_is_applied_through_a_row_major_copy_of_its_weight():
    from gpt_components.finetune.lora import LinearWithLoRA
    from gpt_components.generation import _decoding_head

    g = generator(0)
    rows = torch.randn(3, 8, generator=g, dtype=torch.float64)
    plain = torch.nn.Linear(8, 20, bias=False, dtype=torch.float64)
    fast = _decoding_head(plain)
    assert fast is not plain  # the fast path is taken where it pays
    torch.testing.assert_close(fast(rows), plain(rows), rtol=1e-12, atol=1e-12)
    column_major = torch.nn.Linear(8, 20, bias=False, dtype=torch.float64)
    column_major.weight.data = column_major.weight.data.t().contiguous().t()
    biased = torch.nn.Linear(8, 20, dtype=torch.float64)
    for head in (column_major, biased, LinearWithLoRA(plain, 2, 1.0)):
        assert _decoding_head(head) is head


@given(run=runs(), stream=st.booleans())
def test_the_cache_made_holds_exactly_the_positions_generation_will_feed(run, stream):
    # The prompt and every new token but the last are fed, within the window: a cache sized
    # for the whole context would be gigabytes for a few tokens of a large model.
    model, idx, max_new_tokens, context_size = run
    made = []
    new_kv_cache = model.new_kv_cache

    def spy(batch_size, max_tokens=None):
        made.append(new_kv_cache(batch_size, max_tokens))
        return made[-1]

    model.new_kv_cache = spy
    if stream:
        list(generate_stream(model, idx, max_new_tokens, context_size))
    else:
        generate(model, idx, max_new_tokens, context_size)
    needed = max(1, min(context_size, idx.shape[1] + max_new_tokens - 1))
    assert [cache.max_tokens for cache in made] == [needed]
    assert all(layer.keys.shape[2] == needed for layer in made[0].layers)
    assert made[0].length <= needed


def test_top_k_comes_before_top_p_as_in_transformers_logits_processors():
    # Probabilities 0.5, 0.3, 0.2 with top_k=2, top_p=0.6. Top-k first keeps 0.5 and 0.3,
    # renormalised to 0.625 and 0.375: 0.625 already reaches 0.6, so only token 0 is left.
    # Top-p first would keep tokens 0 and 1 (0.5 < 0.6) and draw token 1 about 3 times in 8.
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(400, 3)
    draws = sample_next_token(logits, temperature=1.0, top_k=2, top_p=0.6,
                              generator=torch.Generator().manual_seed(0))
    assert draws.unique().tolist() == [0]
    only_top_p = sample_next_token(logits, temperature=1.0, top_p=0.6,
                                   generator=torch.Generator().manual_seed(0))
    assert only_top_p.unique().tolist() == [0, 1]  # the example tells the two orders apart
