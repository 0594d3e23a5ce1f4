"""Inference-time scaling (the sequel's chapters 4 and 5): spend more compute per question.

A model answers better when it may try several times and choose. This module holds the
sequel's tools for that, for any model of this package (``GPTModel``, every ``DecoderModel``,
``Qwen3Model(cfg)`` of the book's names) and any tokenizer with ``encode``/``decode`` and an
end-of-text id (``eos_token_id``, or this package's ``eot_token``):

- ``scale_logits_by_temperature`` and ``top_p_filter`` (nucleus sampling on probabilities,
  the sequel's order: temperature, softmax, top-p, draw);
- ``sample_responses``: ``num_samples`` answers to one prompt that share its prefill. The
  prompt runs through the model once, into a one-row KV cache, which is then copied into
  ``num_samples`` rows; answer ``i`` draws from its own ``torch.Generator`` seeded with
  ``seed + i + 1`` (the sequel seeds its sample ``i`` so), so it is exactly what a separate run
  of that one answer would draw (``spec/test_scaling.py`` proves it against separate, uncached
  runs);
- ``self_consistency_vote``: the majority over the answers' final candidates; a tie has no
  winner (``final_answer`` None), as in the sequel;
- ``avg_logprob_answer`` and ``best_of_n``: score each sampled answer by the model's mean
  log-probability of it and keep the best; ``heuristic_score``, the sequel's other scorer;
- ``self_refinement_loop``: draft, critique, revise, keep a revision that scores no worse.

The verifier's ``extract_final_candidate`` and ``render_prompt`` (``reasoning/verifier.py``)
read the answers.

>>> import torch
>>> probas = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
>>> top_p_filter(probas, 0.8).tolist()  # 0.5 + 0.3 reach 0.8: the rest is dropped
[[0.625, 0.375, 0.0, 0.0]]
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50)).eval()
>>> answers = sample_responses(model, [1, 2, 3], num_samples=4, max_new_tokens=5, seed=7)
>>> [len(a) for a in answers], answers == sample_responses(model, [1, 2, 3], 4,
...                                                         max_new_tokens=5, seed=7)
([5, 5, 5, 5], True)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..machinery.checks import (
    check_bool,
    check_float,
    check_instance,
    check_int,
    check_str,
    check_tensor,
    type_error,
    value_error,
)

__all__ = [
    "scale_logits_by_temperature",
    "top_p_filter",
    "sample_responses",
    "self_consistency_vote",
    "avg_logprob_answer",
    "heuristic_score",
    "best_of_n",
    "make_critique_prompt",
    "make_refine_prompt",
    "self_refinement_loop",
    "eos_id_of",
]


def scale_logits_by_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``: below 1 sharper, above 1 flatter; ``temperature`` must be > 0."""
    check_tensor("logits", logits, kind="floating")
    check_float("temperature", temperature, low=0, low_open=True)
    return logits / temperature


def top_p_filter(probas: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """Keep each row's most probable tokens while their running total stays <= ``top_p``.

    The most probable token is always kept (so ``top_p`` 0 is greedy); the kept probabilities
    are renormalised to sum to 1. ``top_p`` None or >= 1 returns ``probas`` unchanged. Rows are
    [batch, vocab] (or one [vocab] row).
    """
    check_tensor("probas", probas, dims={1, 2}, kind="floating")
    check_float("top_p", top_p, low=0, optional=True)
    if top_p is None or top_p >= 1.0:
        return probas
    rows = probas.unsqueeze(0) if probas.dim() == 1 else probas  # (B, V)
    sorted_probas, order = torch.sort(rows, dim=-1, descending=True)
    keep = sorted_probas.cumsum(dim=-1) <= top_p
    keep[:, 0] = True  # the argmax survives any top_p
    kept = torch.where(keep, sorted_probas, torch.zeros_like(sorted_probas))
    filtered = torch.zeros_like(rows).scatter(-1, order, kept)
    filtered = filtered / filtered.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return filtered.squeeze(0) if probas.dim() == 1 else filtered


def _draw(logits: torch.Tensor, temperature: float | None, top_p: float | None,
          generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of ``logits`` [K, V], row ``i`` drawn with ``generators[i]``: [K, 1]."""
    if not temperature:
        return logits.argmax(dim=-1, keepdim=True)
    probas = top_p_filter(torch.softmax(scale_logits_by_temperature(logits, temperature), -1),
                          top_p).cpu()  # CPU generators draw from CPU tensors
    drawn = [torch.multinomial(row, 1, generator=g)
             for row, g in zip(probas, generators, strict=True)]
    return torch.stack(drawn).to(logits.device)


def eos_id_of(tokenizer: Any) -> int | None:
    """The tokenizer's end-of-text id: ``eos_token_id`` (the sequel's tokenizers) or
    ``eot_token`` (this package's), else None."""
    for name in ("eos_token_id", "eot_token"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _check_model(model: Any) -> None:
    missing = [n for n in ("cfg", "hidden_states", "out_head", "new_kv_cache")
               if not hasattr(model, n)]
    if not isinstance(model, nn.Module) or missing:
        raise type_error("model", f"model must be a language model of gpt_components "
                                  f"(GPTModel, DecoderModel, Qwen3Model(cfg)), got "
                                  f"{type(model).__name__}")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _prompt_list(prompt_ids: Any, vocab_size: int) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        check_tensor("prompt_ids", prompt_ids, kind="integer")
        if prompt_ids.dim() == 2 and prompt_ids.shape[0] == 1:
            prompt_ids = prompt_ids[0]
        if prompt_ids.dim() != 1:
            raise value_error("prompt_ids", f"prompt_ids must be one prompt ([tokens] or "
                                            f"[1, tokens]), got shape {tuple(prompt_ids.shape)}")
        prompt_ids = prompt_ids.tolist()
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in prompt_ids):
        raise type_error("prompt_ids", f"prompt_ids must be a list of int token ids, got "
                                       f"{type(prompt_ids).__name__}")
    if not prompt_ids:
        raise value_error("prompt_ids", "prompt_ids must hold at least one token, got none")
    bad = [i for i in prompt_ids if not 0 <= i < vocab_size]
    if bad:
        raise value_error("prompt_ids", f"prompt_ids must be ids in [0, {vocab_size}), got "
                                        f"{bad[0]}")
    return list(prompt_ids)


def _copy_rows(one: nn.Module, many: nn.Module) -> None:
    """Fill every row of the cache ``many`` with the one row of ``one`` (the same layout)."""
    for src, dst in zip(one.buffers(), many.buffers(), strict=True):
        dst.copy_(src.expand_as(dst))  # buffers are (batch, ...): row 0 broadcast to K rows


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    prompt_ids: Sequence[int] | torch.Tensor,
    num_samples: int = 1,
    *,
    max_new_tokens: int = 512,
    temperature: float = 0.8,
    top_p: float | None = 0.9,
    eos_token_id: int | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """``num_samples`` answers to one prompt, as lists of new token ids, sharing its prefill.

    The prompt is run once into a one-row cache, copied into ``num_samples`` rows; then every
    step feeds the ``num_samples`` newest tokens together. Answer ``i`` draws from a generator
    seeded with ``seed + i + 1``, so answer ``i`` is the same whatever ``num_samples`` is.
    ``temperature`` 0 (or None) is greedy; an answer ends before ``eos_token_id`` (not
    included) or after ``max_new_tokens``, or when the sequence reaches the model's context.
    """
    _check_model(model)
    prompt = _prompt_list(prompt_ids, model.cfg.vocab_size)
    check_int("num_samples", num_samples, low=1)
    check_int("max_new_tokens", max_new_tokens, low=0)
    check_float("temperature", temperature, low=0, optional=True)
    check_float("top_p", top_p, low=0, optional=True)
    check_int("eos_token_id", eos_token_id, low=0, high=model.cfg.vocab_size - 1, optional=True)
    check_int("seed", seed, low=0)
    context = model.cfg.context_length
    if len(prompt) >= context:
        raise value_error("prompt_ids", f"prompt_ids holds {len(prompt)} tokens, which leaves "
                                        f"no room to answer in the model's context_length="
                                        f"{context}")
    steps = min(max_new_tokens, context - len(prompt))
    answers: list[list[int]] = [[] for _ in range(num_samples)]
    if steps == 0:
        return answers
    device = _device_of(model)
    generators = [torch.Generator().manual_seed(seed + i + 1) for i in range(num_samples)]
    room = len(prompt) + steps - 1  # every token but the last answer token is fed
    one = model.new_kv_cache(1, room)
    hidden = model.hidden_states(torch.tensor([prompt], device=device), kv_cache=one)
    logits = model.out_head(hidden[:, -1]).expand(num_samples, -1)  # (K, V): one prefill
    cache = model.new_kv_cache(num_samples, room)
    _copy_rows(one, cache)
    cache.advance(len(prompt))
    finished = torch.zeros(num_samples, dtype=torch.bool)
    for step in range(steps):
        next_ids = _draw(logits, temperature, top_p, generators)  # (K, 1)
        for i, token in enumerate(next_ids[:, 0].tolist()):
            if not finished[i]:
                if token == eos_token_id:
                    finished[i] = True
                else:
                    answers[i].append(token)
        if bool(finished.all()) or step == steps - 1:
            break
        logits = model.out_head(model.hidden_states(next_ids, kv_cache=cache)[:, -1])
    return answers


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not callable(getattr(tokenizer, "encode", None)) or not callable(
            getattr(tokenizer, "decode", None)):
        raise type_error("tokenizer", f"tokenizer must have encode(text) and decode(ids), got "
                                      f"{type(tokenizer).__name__}")
    return list(tokenizer.encode(text))


def _base_seed(seed: int | None) -> int:
    """``seed`` as given; None draws one from torch's global generator (as the sequel's
    unseeded sampling does), so ``torch.manual_seed`` still makes a run repeat."""
    if seed is None:
        return int(torch.randint(0, 2**31 - 1, (1,)).item())
    return check_int("seed", seed, low=0)


def _sample_texts(model: nn.Module, tokenizer: Any, prompt: str, num_samples: int,
                  max_new_tokens: int, temperature: float, top_p: float | None,
                  seed: int | None) -> list[str]:
    check_str("prompt", prompt, empty=True)
    ids = _encode(tokenizer, prompt)
    answers = sample_responses(model, ids, num_samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p,
                               eos_token_id=eos_id_of(tokenizer), seed=_base_seed(seed))
    return [tokenizer.decode(answer) for answer in answers]


def _on_device(model: nn.Module, device: Any) -> None:
    if device is not None and torch.device(device) != _device_of(model):
        raise value_error("device", f"device {device!r} is not the model's "
                                    f"({_device_of(model)}): move the model with "
                                    f"model.to({str(device)!r})")


def self_consistency_vote(
    model: nn.Module, tokenizer: Any, prompt: str, device: Any = None,
    num_samples: int = 10, temperature: float = 0.8, top_p: float | None = 0.9,
    max_new_tokens: int = 2048, show_progress: bool = True, show_long_answer: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """Sample ``num_samples`` answers, extract each one's final candidate, vote.

    Returns the sequel's dict: ``full_answers``, ``short_answers``, ``counts`` (candidate ->
    votes), ``groups`` (candidate -> sample indices), ``majority_winners`` (every candidate
    with the most votes, in order of first appearance) and ``final_answer``: the winner, or
    None when several tie. The same ``seed`` gives the same result; None draws the seed from
    torch's global generator.
    """
    from .verifier import extract_final_candidate

    _check_model(model)
    _on_device(model, device)
    check_bool("show_progress", show_progress)
    check_bool("show_long_answer", show_long_answer)
    full = _sample_texts(model, tokenizer, prompt, num_samples, max_new_tokens, temperature,
                         top_p, seed)
    short = [extract_final_candidate(text, fallback="number_then_full") for text in full]
    for i, (text, candidate) in enumerate(zip(full, short, strict=True)):
        if show_long_answer:
            print(text)
        if show_progress:
            print(f"[Sample {i + 1}/{num_samples}] -> {candidate!r}")
    counts = Counter(short)
    groups: dict[str, list[int]] = {candidate: [] for candidate in counts}
    for i, candidate in enumerate(short):
        groups[candidate].append(i)
    ranked = counts.most_common()  # ties keep the order of first appearance
    top = ranked[0][1] if ranked else 0
    winners = [candidate for candidate, votes in ranked if votes == top]
    return {"full_answers": full, "short_answers": short, "counts": dict(counts),
            "groups": groups, "majority_winners": winners,
            "final_answer": winners[0] if len(winners) == 1 else None}


@torch.no_grad()
def avg_logprob_answer(model: nn.Module, tokenizer: Any, prompt: str, answer: str,
                       device: Any = "cpu") -> float:
    """The model's mean log-probability of ``answer``'s tokens after ``prompt`` (encoded
    apart, as the sequel does): higher is an answer the model finds more likely."""
    _check_model(model)
    check_str("prompt", prompt, empty=True)
    check_str("answer", answer)
    prompt_ids, answer_ids = _encode(tokenizer, prompt), _encode(tokenizer, answer)
    if not prompt_ids or not answer_ids:
        raise value_error("answer" if prompt_ids else "prompt",
                          "prompt and answer must each encode to at least one token")
    ids = torch.tensor([prompt_ids + answer_ids], device=_device_of(model))
    logprobs = torch.log_softmax(model(ids)[0].double(), dim=-1)  # (T, V)
    start = len(prompt_ids) - 1  # the position that predicts the answer's first token
    picked = logprobs[start:-1].gather(-1, ids[0, start + 1:, None]).squeeze(-1)
    return picked.mean().item()


def heuristic_score(answer: str, prompt: str | None = None, brevity_bonus: float = 500.0,
                    boxed_bonus: float = 2.0, extract_bonus: float = 1.0,
                    fulltext_bonus: float = 0.0) -> float:
    """The sequel's heuristic: a bonus for a boxed answer (smaller ones for a bare number or
    any text), plus ``1.5 * exp(-len(answer) / brevity_bonus)`` for brevity."""
    from .verifier import extract_final_candidate

    check_str("answer", answer, empty=True)
    check_float("brevity_bonus", brevity_bonus, low=0, low_open=True)
    score = 0.0
    if extract_final_candidate(answer, fallback="none"):
        score += boxed_bonus
    elif extract_final_candidate(answer, fallback="number_only"):
        score += extract_bonus
    elif extract_final_candidate(answer, fallback="number_then_full"):
        score += fulltext_bonus
    return score + 1.5 * math.exp(-len(answer) / brevity_bonus)


def best_of_n(
    model: nn.Module, tokenizer: Any, prompt: str, device: Any = None, num_samples: int = 4,
    temperature: float = 0.8, top_p: float | None = 0.9, max_new_tokens: int = 2048,
    score_fn: Callable[..., float] | None = None, seed: int | None = None,
) -> dict[str, Any]:
    """Sample ``num_samples`` answers and keep the one ``score_fn`` rates highest.

    ``score_fn(model, tokenizer, prompt, answer)`` defaults to ``avg_logprob_answer`` (the
    model's own confidence); the first of equal scores wins. Returns ``answers``, ``scores``,
    ``best_index``, ``best`` (the text) and ``final_answer`` (its extracted candidate).
    """
    from .verifier import extract_final_candidate

    _check_model(model)
    _on_device(model, device)
    if score_fn is not None and not callable(score_fn):
        raise type_error("score_fn", f"score_fn must be callable, got {type(score_fn).__name__}")
    answers = _sample_texts(model, tokenizer, prompt, num_samples, max_new_tokens, temperature,
                            top_p, seed)

    def score(answer: str) -> float:
        if score_fn is not None:
            return float(score_fn(model, tokenizer, prompt, answer))
        if not _encode(tokenizer, answer):
            return -math.inf  # an empty answer is never the best
        return avg_logprob_answer(model, tokenizer, prompt, answer)

    scores = [score(answer) for answer in answers]
    best = max(range(len(answers)), key=lambda i: (scores[i], -i))
    return {"answers": answers, "scores": scores, "best_index": best, "best": answers[best],
            "final_answer": extract_final_candidate(answers[best], fallback="number_then_full")}


def make_critique_prompt(raw_prompt: str, draft: str) -> str:
    """The sequel's request for a critique of ``draft`` and a plan to fix it."""
    return ("You are a meticulous reviewer. Identify logical errors, missing steps, or "
            "arithmetic mistakes. If the answer seems correct, say so briefly. Then propose a "
            "concise plan to fix issues.\n\n"
            f"Question:\n{raw_prompt}\n\nDraft answer:\n{draft}\n\n"
            "Write a short critique and bullet-point fix plan (under ~120 words).\nCritique:")


def make_refine_prompt(raw_prompt: str, draft: str, critique: str) -> str:
    """The sequel's request for a revision of ``draft`` that follows ``critique``."""
    return ("Revise the answer using the critique. Keep it concise and end with a final boxed "
            "result: \\boxed{ANSWER}\n\n"
            f"Question:\n{raw_prompt}\n\nPrevious answer:\n{draft}\n\n"
            f"Critique:\n{critique}\n\nRevised answer:")


def self_refinement_loop(
    model: nn.Module, tokenizer: Any, raw_prompt: str, device: Any = None, iterations: int = 2,
    max_response_tokens: int = 2048, max_critique_tokens: int = 256,
    score_fn: Callable[..., float] | None = None,
    prompt_renderer: Callable[[str], str] | None = None,
    prompt_suffix: str = "", verbose: bool = False, temperature: float = 0.7,
    top_p: float | None = 0.9, seed: int | None = None,
) -> dict[str, Any]:
    """Draft an answer, then ``iterations`` times critique it, revise it, and keep the revision
    when ``score_fn(answer=..., prompt=...)`` rates it no worse (always, without a scorer).

    Returns ``final`` (the kept answer's extracted candidate) and ``steps``, one dict per
    iteration as the sequel logs it. Each generation draws with its own seed derived from
    ``seed`` (None: from torch's global generator), so a seeded loop repeats exactly.
    """
    from .verifier import extract_final_candidate, render_prompt

    _check_model(model)
    _on_device(model, device)
    check_int("iterations", iterations, low=0)
    check_bool("verbose", verbose)
    check_str("raw_prompt", raw_prompt)
    check_str("prompt_suffix", prompt_suffix, empty=True)
    renderer = render_prompt if prompt_renderer is None else prompt_renderer
    check_instance("prompt_renderer", renderer, Callable, "a function of the raw prompt")
    base = _base_seed(seed)

    def generate(text: str, tokens: int, call: int) -> str:
        return _sample_texts(model, tokenizer, text, 1, tokens, temperature, top_p,
                             base + 1000 * call)[0]

    def score(answer: str, prompt: str) -> float:
        return float(score_fn(answer=answer, prompt=prompt)) if score_fn else 0.0

    prompt = renderer(raw_prompt) + prompt_suffix
    current = generate(prompt, max_response_tokens, 0)
    extracted = extract_final_candidate(current, fallback="number_then_full")
    current_score = score(current, prompt)
    steps = []
    for it in range(iterations):
        critique = generate(make_critique_prompt(raw_prompt, current), max_critique_tokens,
                            2 * it + 1)
        revised = generate(make_refine_prompt(raw_prompt, current, critique),
                           max_response_tokens, 2 * it + 2)
        revised_extracted = extract_final_candidate(revised, fallback="number_then_full")
        revised_score = score(revised, prompt)  # scored against the original prompt
        steps.append({"iteration": it + 1, "draft_full": current, "draft_extracted": extracted,
                      "critique": critique, "revised_full": revised,
                      "revised_extracted": revised_extracted, "score_before": current_score,
                      "score_after": revised_score})
        if verbose:
            print(f"[Refinement {it + 1}/{iterations}]\nCurrent: {extracted}\nRevised: "
                  f"{revised_extracted}\nScore before: {current_score:.3f}\nScore after: "
                  f"{revised_score:.3f}\n{'=' * 25}")
        if revised_score >= current_score:
            current, extracted, current_score = revised, revised_extracted, revised_score
    return {"final": extracted, "steps": steps}
