"""The serving engine: many requests at once, each getting exactly what it would get alone.

The reference is ``gpt_components.generation.generate`` run on one request at a time, with
the request's seed in its own generator (greedy needs none), its tokens then cut at the first
stop token (not kept) or at the token in which the first stop string begins (the rule the
engine's docstring states, restated here). Against it:

- any drawn set of requests (prompt lengths, a shared system prompt, arrival steps, greedy
  and seeded sampling with top-k/top-p, stop tokens and strings, cancellations) served with a
  drawn page budget small enough to force preemptions, chunk size, batch limit and prefix
  caching on or off, gives every request exactly its tokens alone (float64 models, so no
  rounding can tip an argmax); a cancelled one gets a prefix of them; what the steps stream
  adds up to what they report; and every block is free once all requests end;
- prefix caching and chunked prefill change no output (and the cache is hit);
- speculative decoding with a smaller draft gives the target's greedy tokens (sampled requests
  served beside them end within their bounds), and with the target as its own draft accepts
  every drafted token;
- speculative sampling draws the next token from the target's distribution exactly: the
  engine's acceptance probability and residual, summed over every draft token in float64,
  give back the target's distribution for any target and draft over a small vocabulary;
  ``sampling_distribution`` is ``sample_next_token``'s (an independent float64 restatement);
- a long prompt is prefilled in chunks that take turns with decoding, so a running sequence
  gets a token at least every other step; where the model's rows pack (every attention hands
  the paged cache its queries), every step decodes every running sequence beside the
  prompts' chunks, so it gets a token at every step, and a short prompt arriving behind a
  long one gets its first token from the very next step;
- the prompt tokens of a step are shared out by water filling: never past the budget nor
  what a prompt still needs, everything when it all fits, and otherwise an equal level that
  only shorter needs stay under (a brute-force search for the level is the reference);
- bad requests are refused before they are queued, naming the parameter.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.generation import generate
from gpt_components.serving.engine import Engine
from gpt_components.serving.paged_cache import PagedKVCache
from gpt_components.serving.requests import SamplingParams
from gpt_components.serving.speculative import (
    acceptance_probability,
    residual_distribution,
    sampling_distribution,
)
from spec.strategies import generator, seeds
from spec.test_paged_cache import family_params, tiny_model

pytestmark = pytest.mark.serving
F64 = torch.float64


class LetterTokenizer:
    """A toy tokenizer for stop strings: token t reads as one or two letters of 'abc'."""

    def decode(self, ids: list[int]) -> str:
        return "".join("abc"[t % 3] * (1 + t // 32) for t in ids)


TOKENIZER = LetterTokenizer()
#: The hybrid families: served with state slots, never speculatively (a state cannot roll back).
RECURRENT = {"qwen3_next", "qwen3_5_text"}


def alone(model, prompt: list[int], p: SamplingParams) -> tuple[list[int], str]:
    """The request's tokens and finish reason, from ``generate`` on it alone."""
    drawn = generate(model, torch.tensor([prompt]), p.max_tokens, temperature=p.temperature,
                     top_k=p.top_k, top_p=p.top_p,
                     generator=generator(p.seed if p.seed is not None else 0))
    out: list[int] = []
    for token in drawn[0, len(prompt):].tolist():
        if token in p.stop_token_ids:
            return out, "stop"
        out.append(token)
        text = TOKENIZER.decode(out)
        found = [text.find(stop) for stop in p.stop if stop in text]
        if found:
            while out and len(TOKENIZER.decode(out)) > min(found):
                out.pop()  # the token the stop string begins in goes, with all after it
            return out, "stop"
    return out, "length"


@st.composite
def requests(draw, greedy_only: bool = False):
    shared = draw(st.lists(st.integers(0, 63), min_size=0, max_size=10))
    drawn = []
    for _ in range(draw(st.integers(1, 5))):
        prompt = (shared if draw(st.booleans()) else []) + draw(
            st.lists(st.integers(0, 63), min_size=1, max_size=12))
        temperature = 0.0 if greedy_only else draw(st.sampled_from([0.0, 0.7, 1.5]))
        params = SamplingParams(
            temperature=temperature,
            top_k=draw(st.sampled_from([None, 5])), top_p=draw(st.sampled_from([None, 0.9])),
            max_tokens=draw(st.integers(1, 10)),
            stop_token_ids=draw(st.sampled_from([(), (draw(st.integers(0, 63)),)])),
            stop=draw(st.sampled_from([(), ("ab",), ("ca", "bbb")])),
            seed=draw(seeds))
        arrival = draw(st.integers(0, 6))
        abort_at = draw(st.none() | st.integers(0, 12))
        drawn.append((prompt, params, arrival, abort_at))
    return drawn


@st.composite
def engine_settings(draw, reqs):
    block_size = draw(st.integers(1, 4))
    most = max(-(-(len(p) + s.max_tokens + 4) // block_size) for p, s, _, _ in reqs)
    # gather="fast" pads every row to the longest: the model's rows no longer pack, and the
    # scheduler's prefill and decode steps take turns instead of sharing one step.
    return dict(block_size=block_size, num_blocks=most + draw(st.integers(0, 6)),
                max_batch_tokens=draw(st.integers(1, 16)), max_running=draw(st.integers(1, 4)),
                prefix_caching=draw(st.booleans()), gather=draw(st.sampled_from(["rows",
                                                                                  "fast"])))


def serve(engine: Engine, reqs) -> dict[str, dict]:
    """Drive the engine step by step: requests arrive and are cancelled at their steps."""
    seen: dict[str, dict] = {}
    last_arrival = max(arrival for _, _, arrival, _ in reqs)
    step = 0
    while step <= last_arrival + 12 or engine.has_unfinished():
        for i, (prompt, params, arrival, abort_at) in enumerate(reqs):
            if arrival == step:
                engine.add_request(f"r{i}", prompt, params)
                seen[f"r{i}"] = {"streamed": [], "finished": None}
            if abort_at is not None and arrival + abort_at == step:
                engine.abort(f"r{i}")
        for output in engine.step():
            record = seen[output.request_id]
            assert record["finished"] is None  # nothing after the end
            record["streamed"] += output.new_token_ids
            assert output.token_ids == record["streamed"]
            if output.finished:
                record["finished"] = output
        step += 1
        assert step < 3000, "the engine stopped making progress"
    return seen


def check_against_alone(model, reqs, seen, engine):
    for i, (prompt, params, _, _) in enumerate(reqs):
        expected, reason = alone(model, prompt, params)
        final = seen[f"r{i}"]["finished"]
        assert final is not None
        if final.finish_reason == "abort":
            assert final.token_ids == expected[:len(final.token_ids)]
        else:
            assert (final.token_ids, final.finish_reason) == (expected, reason)
    assert engine.pool.num_free == engine.num_blocks and not any(engine.pool.ref_counts)
    # Every ring and state slot is back too, each once.
    assert sorted(engine._free_rings) == list(range(engine.max_running))


@pytest.mark.parametrize("name", family_params())
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_every_request_gets_exactly_the_tokens_generate_gives_it_alone(name, data):
    reqs = data.draw(requests())
    settings_ = data.draw(engine_settings(reqs))
    model = tiny_model(name, data.draw(st.integers(0, 3)))
    engine = Engine(model, tokenizer=TOKENIZER, **settings_)
    seen = serve(engine, reqs)
    check_against_alone(model, reqs, seen, engine)


@settings(max_examples=1, deadline=None)
@given(data=st.data())
def test_a_hybrid_gets_exactly_the_tokens_generate_gives_each_request_alone(data):
    # The default tier's hybrid case (the slow tier draws more of both hybrids above): its
    # recurrent layers hold a state slot per running sequence, prefill rows feed equal chunks.
    reqs = data.draw(requests())
    settings_ = data.draw(engine_settings(reqs))
    model = tiny_model(data.draw(st.sampled_from(["qwen3_next", "qwen3_5_text"])),
                       data.draw(st.integers(0, 3)))
    engine = Engine(model, tokenizer=TOKENIZER, **settings_)
    assert engine.cache.stateful and not engine.prefix_caching
    seen = serve(engine, reqs)
    check_against_alone(model, reqs, seen, engine)


def test_speculative_decoding_refuses_a_model_or_draft_with_recurrent_layers():
    hybrid, plain = tiny_model("qwen3_next", 0), tiny_model("qwen3", 0)
    for model, draft in ((hybrid, plain), (plain, hybrid)):
        with pytest.raises(ValueError, match="recurrent layers") as error:
            Engine(model, draft_model=draft, num_speculative_tokens=2, block_size=4,
                   num_blocks=32)
        assert error.value.parameter == "draft_model"


@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_prefix_caching_and_chunked_prefill_change_no_output(data):
    model = tiny_model("llama", 0)
    g = generator(data.draw(seeds))
    system = torch.randint(0, 64, (data.draw(st.integers(8, 20)),), generator=g).tolist()
    prompts = [system + torch.randint(0, 64, (data.draw(st.integers(1, 6)),),
                                      generator=g).tolist() for _ in range(3)]
    params = SamplingParams(temperature=data.draw(st.sampled_from([0.0, 1.0])), max_tokens=6,
                            seed=data.draw(seeds))
    results = []
    for caching, chunk in ((False, 64), (True, 64), (True, data.draw(st.integers(1, 5)))):
        engine = Engine(model, block_size=4, num_blocks=40, prefix_caching=caching,
                        max_batch_tokens=chunk)
        # One after the other, so the later ones find the first one's blocks cached.
        results.append([engine.generate([prompt], params)[0] for prompt in prompts])
        if caching:
            assert engine.stats["prefix_hit_tokens"] >= 2 * (len(system) // 4) * 4
    assert results[0] == results[1] == results[2]
    assert results[0] == [alone(model, prompt, params)[0] for prompt in prompts]


@pytest.mark.parametrize("name", [p for p in family_params()
                                  if getattr(p, "values", (p,))[0] not in RECURRENT])
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_speculative_greedy_decoding_gives_the_target_greedy_tokens(name, data):
    reqs = data.draw(requests())
    settings_ = data.draw(engine_settings(reqs))
    model = tiny_model(name, 1)
    draft = tiny_model(name, 2, n_layers=1)
    engine = Engine(model, tokenizer=TOKENIZER, draft_model=draft,
                    num_speculative_tokens=data.draw(st.integers(1, 4)), **settings_)
    seen = serve(engine, reqs)
    greedy = [i for i, r in enumerate(reqs) if r[1].greedy]
    check_against_alone(model, [reqs[i] for i in greedy],
                        {f"r{j}": seen[f"r{i}"] for j, i in enumerate(greedy)}, engine)
    for i, (_, params, _, _) in enumerate(reqs):  # sampled ones: draws of the same law
        final = seen[f"r{i}"]["finished"]
        assert len(final.token_ids) <= params.max_tokens
        assert not set(final.token_ids) & set(params.stop_token_ids)
        assert all(0 <= t < 64 for t in final.token_ids)


def test_the_target_as_its_own_draft_has_every_drafted_token_accepted():
    model = tiny_model("qwen3", 0)
    engine = Engine(model, draft_model=model, num_speculative_tokens=3, block_size=4,
                    num_blocks=32)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    params = SamplingParams(temperature=0.0, max_tokens=9)
    assert engine.generate(prompts, params) == [alone(model, p, params)[0] for p in prompts]
    assert engine.stats["draft_tokens"] > 0
    assert engine.stats["accepted_tokens"] == engine.stats["draft_tokens"]


def reference_distribution(logits: torch.Tensor, temperature: float, top_k, top_p):
    """Top-k, then top-p over the top-k distribution, then temperature: float64, sorted by
    hand (an independent restatement of generation's order)."""
    probs = torch.softmax(logits, -1)
    order = sorted(range(len(logits)), key=lambda i: -float(logits[i]))
    keep = set(order[:top_k] if top_k else order)
    if top_p is not None:
        kept_probs = {i: float(probs[i]) for i in keep}
        mass = sum(kept_probs.values())
        total, kept = 0.0, set()
        for i in [i for i in order if i in keep]:
            if total >= top_p:
                break
            kept.add(i)
            total += kept_probs[i] / mass
        keep = kept
    weights = torch.tensor([float(torch.exp((logits[i] - logits.max()) / temperature))
                            if i in keep else 0.0 for i in range(len(logits))], dtype=F64)
    return weights / weights.sum()


@settings(max_examples=60, deadline=None)
@given(seed=seeds, vocab=st.integers(2, 6), temperature=st.sampled_from([0.5, 1.0, 2.0]),
       top_k=st.none() | st.integers(1, 6), top_p=st.none() | st.sampled_from([0.5, 0.9]))
def test_speculative_sampling_leaves_the_target_distribution_unchanged(seed, vocab, temperature,
                                                                       top_k, top_p):
    g = generator(seed)
    top_k = None if top_k is None else min(top_k, vocab)
    target_logits = torch.randn(vocab, generator=g, dtype=F64) * 2
    draft_logits = torch.randn(vocab, generator=g, dtype=F64) * 2
    p = sampling_distribution(target_logits, temperature, top_k, top_p)
    q = sampling_distribution(draft_logits, temperature, top_k, top_p)
    torch.testing.assert_close(p, reference_distribution(target_logits, temperature, top_k,
                                                         top_p), rtol=1e-12, atol=1e-12)
    # Enumerate every draft token x ~ q: kept with min(1, p/q), else the residual is drawn.
    outcome = torch.zeros(vocab, dtype=F64)
    residual = residual_distribution(p, q)
    for x in range(vocab):
        if q[x] == 0:
            continue
        accept = acceptance_probability(p, q, x)
        outcome[x] += q[x] * accept
        outcome += q[x] * (1 - accept) * residual
    torch.testing.assert_close(outcome, p, rtol=1e-12, atol=1e-12)


def test_a_long_prompt_is_prefilled_in_chunks_taking_turns_with_decoding():
    model = tiny_model("gpt2", 0)
    # Padded rows (gather="fast"): prefill and decode steps take turns.
    engine = Engine(model, block_size=4, num_blocks=32, max_batch_tokens=4, gather="fast")
    assert not engine.cache.packable
    engine.add_request("short", [1, 2], SamplingParams(temperature=0.0, max_tokens=12))
    engine.step()  # the short prompt's prefill: its first token
    engine.add_request("long", list(range(40)), SamplingParams(temperature=0.0, max_tokens=1))
    gaps, since = [], 0
    while engine.has_unfinished():
        got = {o.request_id for o in engine.step() if o.new_token_ids}
        since = 0 if "short" in got else since + 1
        gaps.append(since)
    assert max(gaps) <= 1  # the short request never waits two steps for its next token


def test_where_rows_pack_every_step_decodes_and_a_short_prompt_is_answered_next_step():
    model = tiny_model("gpt2", 0)
    engine = Engine(model, block_size=4, num_blocks=32, max_batch_tokens=8)
    assert engine.cache.packable and not Engine(model, gather="fast").cache.packable
    engine.add_request("short", [1, 2], SamplingParams(temperature=0.0, max_tokens=5))
    engine.step()  # the short prompt's prefill: its first token
    engine.add_request("long", list(range(60)), SamplingParams(temperature=0.0, max_tokens=1))
    engine.step()  # the long prompt's first chunk, beside the short one's next token
    engine.add_request("late", [3, 4, 5], SamplingParams(temperature=0.0, max_tokens=1))
    got = {o.request_id for o in engine.step() if o.new_token_ids}
    assert got == {"short", "late"}  # the late short prompt did not wait for the long one
    finished = False
    while not finished:  # the long prompt's chunks go on beside it
        short = [o for o in engine.step() if o.request_id == "short"]
        assert short and short[0].new_token_ids  # a token at every step
        finished = short[0].finished
    assert engine.has_unfinished()  # the long prompt was still being fed


@settings(max_examples=200, deadline=None)
@given(wanted=st.lists(st.integers(0, 40), max_size=8), budget=st.integers(0, 120))
def test_a_steps_prompt_tokens_are_shared_out_by_water_filling(wanted, budget):
    from gpt_components.serving.engine import _share

    shares = _share(wanted, budget)
    assert sum(shares) <= budget and all(0 <= s <= w for s, w in zip(shares, wanted,
                                                                      strict=True))
    if sum(wanted) <= budget:
        assert shares == wanted
        return
    # The reference: the highest level L with sum(min(w, L)) within the budget, found by
    # trying every level. Each share is min(w, L) or, for the leftover of the integer
    # division, one more; no budget a share could still use is left beyond that leftover.
    level = max(n for n in range(max(wanted) + 1) if sum(min(w, n) for w in wanted) <= budget)
    for s, w in zip(shares, wanted, strict=True):
        assert min(w, level) <= s <= min(w, level + 1)
    assert budget - sum(shares) < len(wanted)


def test_bad_requests_are_refused_before_they_are_queued():
    model = tiny_model("gpt2", 0)  # context 64, vocabulary 64
    engine = Engine(model, block_size=4, num_blocks=8)
    ok = SamplingParams(max_tokens=4)
    cases = [
        (("a", [], ok), "prompt_token_ids"),
        (("a", list(range(64)), ok), "prompt_token_ids"),
        (("a", [64], ok), "prompt_token_ids"),
        (("a", [1] * 40, SamplingParams(max_tokens=30)), "max_tokens"),
        (("a", [1] * 20, SamplingParams(max_tokens=20)), "max_tokens"),  # 40 > 8 blocks of 4
        (("a", [1], SamplingParams(stop=("x",))), "stop"),
        (("a", [1], SamplingParams(top_k=65)), "top_k"),
        (("", [1], ok), "request_id"),
    ]
    for args, parameter in cases:
        with pytest.raises(ValueError) as error:
            engine.add_request(*args)
        assert error.value.parameter == parameter
    engine.add_request("a", [1], ok)
    with pytest.raises(ValueError) as error:
        engine.add_request("a", [2], ok)
    assert error.value.parameter == "request_id"
    with pytest.raises(TypeError) as error:
        engine.add_request("b", [1], {"max_tokens": 4})
    assert error.value.parameter == "params"
    for bad, parameter in ((dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"),
                           (dict(max_tokens=0), "max_tokens"), (dict(stop="ab"), "stop")):
        with pytest.raises((ValueError, TypeError)) as error:
            SamplingParams(**bad)
        assert error.value.parameter == parameter


def test_an_aborted_request_frees_its_pages_and_is_reported_once():
    model = tiny_model("llama", 0)
    engine = Engine(model, block_size=2, num_blocks=16)
    engine.add_request("a", [1, 2, 3, 4, 5], SamplingParams(temperature=0.0, max_tokens=10))
    engine.step()
    assert engine.num_free_blocks < 16
    engine.abort("a")
    assert engine.num_free_blocks == 16
    (output,) = engine.step()
    assert (output.request_id, output.finished, output.finish_reason) == ("a", True, "abort")
    assert not engine.has_unfinished() and engine.step() == []
    engine.abort("a")  # gone already: nothing happens


def test_windowed_layers_keep_a_ring_of_pages_and_lose_nothing():
    model = tiny_model("gemma3", 0)  # windowed layers of 4 positions, context 64
    engine = Engine(model, block_size=2, num_blocks=64, max_batch_tokens=4, max_running=2)
    ring = engine.cache.ring_blocks * engine.block_size
    assert engine.cache.ringed and ring < 20  # the sequences below outgrow their rings
    prompts = [list(range(1, 21)), list(range(30, 45)), [7, 7, 7]]
    params = SamplingParams(temperature=0.0, max_tokens=12)
    assert engine.generate(prompts, params) == [alone(model, p, params)[0] for p in prompts]
    everything = PagedKVCache(model, 64, 2)  # every position of every layer in pages
    assert engine.cache.memory_bytes() < everything.memory_bytes()
    assert engine.stats["prefix_hit_tokens"] == 0  # a ring keeps no prefix for later
