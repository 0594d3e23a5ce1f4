"""Inference-time scaling (the sequel's chapters 4 and 5): temperature, top-p, shared prefill,
best-of-N and the self-consistency vote.

The references are written out here: nucleus filtering one token at a time in float64, the
probabilities of ``logits / T`` as ``p ** (1 / T)`` renormalised, and K separate uncached runs
(the whole sequence through the model at every step, each sample with its own generator) for
the shared-prefill sampler.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.model import GPTConfig
from gpt_components.modern.book_names import Qwen3Model
from gpt_components.reasoning.scaling import (
    avg_logprob_answer,
    best_of_n,
    sample_responses,
    scale_logits_by_temperature,
    top_p_filter,
)
from spec.strategies import generator, random_gpt_model, seeds

pytestmark = pytest.mark.reasoning


@settings(deadline=None)
@given(seed=seeds, vocab=st.integers(1, 12), top_p=st.floats(0.0, 1.2))
def test_top_p_keeps_the_most_probable_tokens_whose_running_total_stays_within_p(seed, vocab,
                                                                                 top_p):
    probas = torch.softmax(torch.randn(2, vocab, generator=generator(seed),
                                       dtype=torch.float64) * 3, -1)
    got = top_p_filter(probas, top_p)
    for row, out in zip(probas.tolist(), got.tolist(), strict=True):
        order = sorted(range(vocab), key=lambda i: -row[i])
        kept, total = set(), 0.0
        for rank, i in enumerate(order):
            total += row[i]
            if rank == 0 or total <= top_p or top_p >= 1:
                kept.add(i)
        mass = sum(row[i] for i in kept)
        expected = [row[i] / mass if i in kept else 0.0 for i in range(vocab)]
        assert out == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(deadline=None)
@given(seed=seeds, temperature=st.floats(0.05, 20.0))
def test_temperature_raises_each_probability_to_the_power_one_over_t(seed, temperature):
    logits = torch.randn(1, 9, generator=generator(seed), dtype=torch.float64) * 2
    got = torch.softmax(scale_logits_by_temperature(logits, temperature), -1)[0].tolist()
    p = torch.softmax(logits, -1)[0].tolist()
    powered = [x ** (1 / temperature) for x in p]
    assert got == pytest.approx([x / sum(powered) for x in powered], rel=1e-7, abs=1e-300)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan])
def test_a_temperature_that_is_not_positive_is_refused_by_name(temperature):
    with pytest.raises(ValueError) as caught:
        scale_logits_by_temperature(torch.zeros(1, 3), temperature)
    assert caught.value.parameter == "temperature"


def _separate_run(model, prompt, steps, temperature, top_p, eos, seed):
    """One sample alone, without a cache: the whole sequence through the model every step."""
    g = torch.Generator().manual_seed(seed)
    ids, answer = list(prompt), []
    for _ in range(steps):
        logits = model(torch.tensor([ids]))[:, -1]
        if temperature == 0:
            token = int(logits.argmax())
        else:
            probas = top_p_filter(torch.softmax(logits / temperature, -1), top_p)
            token = int(torch.multinomial(probas[0], 1, generator=g))
        if token == eos:
            break
        answer.append(token)
        ids.append(token)
    return answer


def _qwen3(seed):
    torch.manual_seed(seed)  # the book's constructor draws its init from the global generator
    return Qwen3Model({"vocab_size": 23, "context_length": 24, "emb_dim": 16, "n_heads": 4,
                       "n_layers": 2, "hidden_dim": 32, "head_dim": 4, "qk_norm": True,
                       "n_kv_groups": 2, "rope_base": 1e4, "dtype": torch.float64}).eval()


@settings(deadline=None, max_examples=8)
@given(seed=seeds, family=st.sampled_from(["gpt", "qwen3"]), k=st.integers(1, 4),
       prompt_len=st.integers(1, 5), steps=st.integers(1, 6),
       temperature=st.sampled_from([0.0, 0.7, 1.0, 2.0]),
       top_p=st.sampled_from([None, 0.5, 0.9]), eos=st.sampled_from([None, 3]))
def test_k_samples_sharing_one_prefill_are_k_separate_runs_with_the_same_seeds(
        seed, family, k, prompt_len, steps, temperature, top_p, eos):
    if family == "gpt":
        model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=23,
                                                     context_length=24), seed % 2**16)
    else:
        with torch.random.fork_rng(devices=[]):
            model = _qwen3(seed % 2**16)
    prompt = torch.randint(0, 23, (prompt_len,), generator=generator(seed)).tolist()
    base = seed % 1000
    shared = sample_responses(model, prompt, k, max_new_tokens=steps, temperature=temperature,
                              top_p=top_p, eos_token_id=eos, seed=base)
    separate = [_separate_run(model, prompt, steps, temperature, top_p, eos, base + i + 1)
                for i in range(k)]
    assert shared == separate
    assert sample_responses(model, prompt, 1, max_new_tokens=steps, temperature=temperature,
                            top_p=top_p, eos_token_id=eos, seed=base) == shared[:1]


def test_sampling_stops_at_the_models_context():
    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=10, context_length=8), 0)
    answers = sample_responses(model, [1, 2, 3], 3, max_new_tokens=50, seed=0)
    assert [len(a) for a in answers] == [5, 5, 5]
    with pytest.raises(ValueError) as caught:
        sample_responses(model, list(range(8)), 2)
    assert caught.value.parameter == "prompt_ids"
    with pytest.raises(ValueError) as caught:
        sample_responses(model, [1], 0)
    assert caught.value.parameter == "num_samples"


class _Letters:
    """A tokenizer of the letters a-v (ids 0-21) with end of text 22."""

    eos_token_id = 22

    def encode(self, text):
        return [ord(c) - 97 for c in text if "a" <= c <= "v"]

    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids if i < 22)


@settings(deadline=None, max_examples=5)
@given(seed=seeds, answer=st.text(alphabet="abcdefgh", min_size=1, max_size=5))
def test_avg_logprob_answer_is_the_mean_log_probability_of_the_answer_tokens(seed, answer):
    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=23), seed % 2**16)
    tok = _Letters()
    ids = tok.encode("abc" + answer)
    logits = model(torch.tensor([ids]))[0].double()
    expected = sum((logits[t - 1, ids[t]] - torch.logsumexp(logits[t - 1], 0)).item()
                   for t in range(3, len(ids))) / len(answer)
    assert avg_logprob_answer(model, tok, "abc", answer) == pytest.approx(expected, rel=1e-9)


def test_best_of_n_keeps_the_answer_the_model_finds_most_likely():
    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=23), 5)
    tok = _Letters()
    result = best_of_n(model, tok, "abc", num_samples=5, max_new_tokens=4, temperature=1.5,
                       seed=1)
    scores = [avg_logprob_answer(model, tok, "abc", a) if tok.encode(a) else -math.inf
              for a in result["answers"]]
    assert result["scores"] == scores
    assert result["best"] == result["answers"][scores.index(max(scores))]
    again = best_of_n(model, tok, "abc", num_samples=5, max_new_tokens=4, temperature=1.5,
                      seed=1)
    assert again == result


class _Digits:
    """Ids 0-9 are the digits, 10 is ' ', 11 is end of text: answers are numbers."""

    eos_token_id = 11

    def encode(self, text):
        return [int(c) if c.isdigit() else 10 for c in text]

    def decode(self, ids):
        return "".join(str(i) if i < 10 else " " for i in ids if i != 11)


@settings(deadline=None, max_examples=5)
@given(seed=seeds, k=st.integers(1, 7), family=st.sampled_from(["gpt", "qwen3"]))
def test_self_consistency_repeats_for_a_seed_and_its_winner_has_the_most_votes_alone(
        seed, k, family):
    from gpt_components.reasoning.scaling import self_consistency_vote

    if family == "gpt":
        model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=12,
                                                     context_length=16), seed % 2**16)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed % 2**16)
            model = Qwen3Model({"vocab_size": 12, "context_length": 16, "emb_dim": 16,
                                "n_heads": 2, "n_layers": 1, "hidden_dim": 32, "head_dim": 8,
                                "qk_norm": True, "n_kv_groups": 1, "dtype": torch.float64})
    kwargs = {"num_samples": k, "temperature": 1.5, "top_p": None, "max_new_tokens": 3,
              "show_progress": False, "seed": seed % 10_000}
    result = self_consistency_vote(model.eval(), _Digits(), "12 ", **kwargs)
    assert self_consistency_vote(model, _Digits(), "12 ", **kwargs) == result
    short = result["short_answers"]
    assert len(short) == k and sum(result["counts"].values()) == k
    assert all(short[i] == answer for answer, idx in result["groups"].items() for i in idx)
    top = max(result["counts"].values())
    winners = [a for a in dict.fromkeys(short) if result["counts"][a] == top]  # first seen
    assert result["majority_winners"] == winners
    assert result["final_answer"] == (winners[0] if len(winners) == 1 else None)


def test_a_tie_has_no_winner_as_in_the_sequel(monkeypatch):
    from gpt_components.reasoning import scaling

    texts = iter([["\\boxed{3}", "\\boxed{4}", "\\boxed{4}", "\\boxed{3}"]])
    monkeypatch.setattr(scaling, "_sample_texts", lambda *args: next(texts))
    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=12), 0)
    result = scaling.self_consistency_vote(model, _Digits(), "1", num_samples=4,
                                           show_progress=False, seed=0)
    assert result["majority_winners"] == ["3", "4"] and result["final_answer"] is None
    assert result["groups"] == {"3": [0, 3], "4": [1, 2]}


def test_zero_samples_is_refused_by_name():
    from gpt_components.reasoning.scaling import self_consistency_vote

    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=12), 0)
    with pytest.raises(ValueError) as caught:
        self_consistency_vote(model, _Digits(), "1", num_samples=0, show_progress=False)
    assert caught.value.parameter == "num_samples"


def test_self_refinement_keeps_a_revision_only_when_it_scores_no_worse_and_repeats():
    from gpt_components.reasoning.scaling import self_refinement_loop
    from gpt_components.reasoning.verifier import extract_final_candidate

    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=23,
                                                 context_length=512), 2)
    scores = {}

    def score_fn(answer, prompt):  # prefers answers with many 'a's: any rule that varies
        scores.setdefault(answer, answer.count("a") + len(answer) / 100)
        return scores[answer]

    kwargs = {"iterations": 3, "max_response_tokens": 6, "max_critique_tokens": 4,
              "score_fn": score_fn, "prompt_renderer": lambda raw: raw, "temperature": 1.5,
              "seed": 4}
    result = self_refinement_loop(model, _Letters(), "abc", **kwargs)
    assert self_refinement_loop(model, _Letters(), "abc", **kwargs) == result
    assert [s["iteration"] for s in result["steps"]] == [1, 2, 3]
    kept = result["steps"][0]["draft_full"]
    for step in result["steps"]:
        assert step["draft_full"] == kept and step["score_before"] == score_fn(kept, "")
        if step["score_after"] >= step["score_before"]:
            kept = step["revised_full"]
    assert result["final"] == extract_final_candidate(kept, fallback="number_then_full")


def test_the_heuristic_score_rewards_a_box_then_a_number_then_brevity():
    from gpt_components.reasoning.scaling import heuristic_score

    assert heuristic_score("so \\boxed{3}") == pytest.approx(2.0 + 1.5 * math.exp(-12 / 500))
    assert heuristic_score("it is 3") == pytest.approx(1.0 + 1.5 * math.exp(-7 / 500))
    assert heuristic_score("") == pytest.approx(1.5)
