"""Reinforcement learning with verifiable rewards: GRPO (the sequel's chapters 6 and 7).

No labels of good reasoning exist, only a check of the final answer. GRPO (DeepSeekMath, used
for DeepSeek-R1) turns that check into a gradient: sample a *group* of answers to one prompt,
reward each (1 if its boxed answer grades equal to the ground truth, else 0), and push up the
answers that beat their group's mean and down the ones below it. The group is the baseline, so
no value network is needed, and a group whose answers all score alike teaches nothing.

The pieces, each a small pure function the loop is built from:

- ``reward_rlvr(answer_text, ground_truth)``: 1.0 if the answer's ``\\boxed{}`` grades equal
  to the ground truth (the verifier's ``grade_answer``), else 0.0; ``reward_format``: 1.0 if a
  ``<think>`` token comes before a ``</think>`` token in the answer (the sequel's ids);
- ``sequence_logprob(model, token_ids, prompt_len)``: the summed log-probability of the
  answer tokens (the sequel's); ``token_logprobs``: each token's, for a batch;
- ``group_advantages(rewards, eps=1e-4)``: ``(r - mean) / (std + eps)`` per group (torch's
  unbiased std); ``compute_advantage_stats``, the sequel's with its mean and spread;
- ``grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, *, clip_eps, kl_coef)``:
  the DeepSeekMath objective, negated: per response token the clipped surrogate
  ``min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)`` with ``ratio = exp(logp - old)``,
  minus ``kl_coef`` times the k3 estimator of the KL divergence to the reference,
  ``exp(ref - logp) - (ref - logp) - 1`` (never negative; zero where they agree), averaged over
  each sequence's response tokens, then over sequences;
- ``grpo_step``: one step of the loop: sample ``group_size`` answers to each prompt (sharing
  its prefill, ``scaling.sample_responses``), reward them, and take ``updates`` optimizer steps
  on ``grpo_loss`` against the frozen reference.

At ratio 1 (one update per batch of samples) and no KL the gradient is exactly REINFORCE's
with the group-normalised advantage; ``spec/test_grpo.py`` proves that and the rest against a
float64 recomputation. ``gpt-components finetune-grpo`` runs the loop with checkpoints.

>>> import torch
>>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
tensor([[ 0.8659, -0.8659, -0.8659,  0.8659],
        [ 0.0000,  0.0000,  0.0000,  0.0000]])
>>> logp = torch.tensor([[-1.0, -2.0]])
>>> grpo_loss(logp, logp, logp, torch.tensor([0.5]), torch.ones(1, 2, dtype=torch.bool))
tensor(-0.5000)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..machinery.checks import (
    check_float,
    check_instance,
    check_int,
    check_str,
    check_tensor,
    type_error,
    value_error,
)
from ..training import train_step
from .scaling import eos_id_of, sample_responses

__all__ = [
    "reward_rlvr",
    "reward_format",
    "sequence_logprob",
    "token_logprobs",
    "compute_advantage_stats",
    "group_advantages",
    "grpo_loss",
    "grpo_step",
]

THINK_TOKEN_ID = 151667  # Qwen3's <think>
END_THINK_TOKEN_ID = 151668  # Qwen3's </think>


def reward_rlvr(answer_text: str, ground_truth: str) -> float:
    """1.0 if ``answer_text`` has a ``\\boxed{}`` answer that grades equal to ``ground_truth``,
    else 0.0: an answer without a box earns nothing (the sequel's ``fallback=None``, here
    ``"none"``)."""
    from .verifier import extract_final_candidate, grade_answer

    check_str("answer_text", answer_text, empty=True)
    check_str("ground_truth", ground_truth, empty=True)
    extracted = extract_final_candidate(answer_text, fallback="none")
    if not extracted:
        return 0.0
    return float(grade_answer(extracted, ground_truth))


def reward_format(token_ids: torch.Tensor | Sequence[int], prompt_len: int,
                  start_think_id: int = THINK_TOKEN_ID,
                  end_think_id: int = END_THINK_TOKEN_ID) -> float:
    """1.0 if the answer (``token_ids`` past ``prompt_len``) opens a think block before it
    closes one, else 0.0 (the sequel's format reward for Qwen3's ``<think>``/``</think>``)."""
    if isinstance(token_ids, torch.Tensor):
        check_tensor("token_ids", token_ids, dims=1, kind="integer")
        token_ids = token_ids.tolist()
    check_int("prompt_len", prompt_len, low=0)
    answer = list(token_ids)[prompt_len:]
    if start_think_id not in answer or end_think_id not in answer:
        return 0.0
    return float(answer.index(start_think_id) < answer.index(end_think_id))


def token_logprobs(model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """Each token's log-probability under ``model`` given the tokens before it: [rows, T].

    Position 0 has no prediction and holds 0 (a mask leaves it out). Computed in float32 at
    least, with the gradient (wrap in ``torch.no_grad()`` to score only).
    """
    check_tensor("token_ids", token_ids, dims=2, kind="integer")
    logits = model(token_ids)  # (R, T, V)
    logprobs = torch.log_softmax(logits[:, :-1].float() if logits.dtype in (
        torch.float16, torch.bfloat16) else logits[:, :-1], dim=-1)
    picked = logprobs.gather(-1, token_ids[:, 1:, None]).squeeze(-1)  # (R, T-1)
    return torch.cat([torch.zeros_like(picked[:, :1]), picked], dim=1)


def sequence_logprob(model: nn.Module, token_ids: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """The sum of the log-probabilities of the answer tokens ``token_ids[prompt_len:]`` (one
    1-D sequence, prompt and answer), with the gradient: the sequel's chapter-6 score."""
    check_tensor("token_ids", token_ids, dims=1, kind="integer")
    check_int("prompt_len", prompt_len, low=1, high=token_ids.shape[0])
    return token_logprobs(model, token_ids.unsqueeze(0))[0, prompt_len:].sum()


def _check_eps(eps: float) -> None:
    check_float("eps", eps, low=0, low_open=True)


def group_advantages(rewards: torch.Tensor | Sequence[float], eps: float = 1e-4) -> torch.Tensor:
    """``(r - mean) / (std + eps)`` within each group: one group for a 1-D ``rewards``, one per
    row of a [groups, rollouts] tensor. ``std`` is torch's default (unbiased, n - 1), as the
    sequel uses, so each group needs at least 2 rollouts; a group of equal rewards gets 0."""
    if not isinstance(rewards, torch.Tensor):
        rewards = torch.tensor(rewards, dtype=torch.float32)
    check_tensor("rewards", rewards, dims={1, 2})
    if not rewards.is_floating_point():
        rewards = rewards.float()
    _check_eps(eps)
    rows = rewards.unsqueeze(0) if rewards.dim() == 1 else rewards  # (G, K)
    if rows.shape[1] < 2:
        raise value_error("rewards", f"rewards must hold a group size of at least 2 rollouts "
                                     f"per group (the std of one is undefined), got "
                                     f"{rows.shape[1]}")
    if not bool(torch.isfinite(rows).all()):
        raise value_error("rewards", "rewards must be finite, got NaN or infinity")
    advantages = (rows - rows.mean(dim=1, keepdim=True)) / (rows.std(dim=1, keepdim=True) + eps)
    return advantages.squeeze(0) if rewards.dim() == 1 else advantages


def compute_advantage_stats(rewards_list: Sequence[float]) -> tuple[torch.Tensor, float, float]:
    """The sequel's chapter-7 statistics: the group's advantages, their mean and their std."""
    advantages = group_advantages(torch.tensor(list(rewards_list), dtype=torch.float32))
    return advantages, advantages.mean().item(), advantages.std().item()


def _check_like(name: str, value: Any, shape: torch.Size) -> torch.Tensor:
    check_tensor(name, value, kind="floating")
    if value.shape != shape:
        raise value_error(name, f"{name} must have logprobs' shape {tuple(shape)} "
                                f"[rollouts, tokens], got {tuple(value.shape)}")
    return value


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
              ref_logprobs: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
              *, clip_eps: float = 0.2, kl_coef: float = 0.0) -> torch.Tensor:
    """The GRPO loss (DeepSeekMath's objective, negated) of [rollouts, tokens] log-probabilities.

    ``logprobs`` are the policy's (with gradient), ``old_logprobs`` the sampling policy's and
    ``ref_logprobs`` the frozen reference's (None allowed when ``kl_coef`` is 0); ``advantages``
    are per rollout ([rollouts], or [rollouts, tokens] per token); ``mask`` selects the
    response tokens. ``clip_eps`` and ``kl_coef`` must be finite and >= 0. A rollout without
    response tokens counts as 0 in the mean over rollouts.
    """
    check_tensor("logprobs", logprobs, dims=2, kind="floating")
    shape = logprobs.shape
    _check_like("old_logprobs", old_logprobs, shape)
    check_float("clip_eps", clip_eps, low=0)
    check_float("kl_coef", kl_coef, low=0)
    if ref_logprobs is None and kl_coef > 0:
        raise value_error("ref_logprobs", f"ref_logprobs must be given when kl_coef > 0, got "
                                          f"None with kl_coef={kl_coef}")
    if ref_logprobs is not None:
        _check_like("ref_logprobs", ref_logprobs, shape)
    check_tensor("advantages", advantages, dims={1, 2}, kind="floating")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (R, 1): one advantage per rollout
    if advantages.shape[0] != shape[0] or advantages.shape[1] not in (1, shape[1]):
        raise value_error("advantages", f"advantages must be [rollouts={shape[0]}] or "
                                        f"[rollouts, tokens] {tuple(shape)}, got "
                                        f"{tuple(advantages.shape)}")
    check_tensor("mask", mask, dims=2)
    if mask.shape != shape or mask.is_floating_point():
        raise value_error("mask", f"mask must be a bool (or 0/1 int) tensor of logprobs' "
                                  f"shape {tuple(shape)}, got {mask.dtype} "
                                  f"{tuple(mask.shape)}")
    advantages = advantages.detach()
    ratio = torch.exp(logprobs - old_logprobs.detach())
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    per_token = torch.minimum(ratio * advantages, clipped * advantages)  # (R, T)
    if kl_coef > 0:
        log_ratio = ref_logprobs.detach() - logprobs
        per_token = per_token - kl_coef * (torch.exp(log_ratio) - log_ratio - 1)  # k3 >= 0
    mask = mask.bool()
    zero = torch.zeros_like(per_token)
    per_rollout = torch.where(mask, per_token, zero).sum(1) / mask.sum(1).clamp(min=1)
    return -per_rollout.mean()


def _check_examples(examples: Any) -> list[Mapping[str, str]]:
    if isinstance(examples, (str, Mapping)) or not isinstance(examples, Sequence) or not examples:
        raise type_error("examples", "examples must be a non-empty list of {'problem', "
                                     "'answer'} records")
    for i, e in enumerate(examples):
        if not isinstance(e, Mapping) or not isinstance(e.get("problem"), str) or \
                not isinstance(e.get("answer"), str):
            raise value_error("examples", f"examples[{i}] must be a record with string "
                                          f"'problem' and 'answer', got {e!r}")
    return list(examples)


def _rollout_batch(prompts: list[list[int]], answers: list[list[list[int]]],
                   ended: list[list[bool]], eos: int | None, device: torch.device):
    """Prompt + answer rows, right-padded, with the mask of the answer tokens: [R, T] each.

    An answer that ended with the end-of-text id gets it back, so the model learns to stop."""
    rows, starts = [], []
    for prompt, group, group_ended in zip(prompts, answers, ended, strict=True):
        for answer, stop in zip(group, group_ended, strict=True):
            rows.append(prompt + answer + ([eos] if stop and eos is not None else []))
            starts.append(len(prompt))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos if eos is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, start: len(row)] = True
    return ids.to(device), mask.to(device)


def grpo_step(
    policy: nn.Module,
    reference: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Any,
    examples: Sequence[Mapping[str, str]],
    *,
    prompt_fn: Callable[[str], str],
    reward_fn: Callable[[str, str], float] = reward_rlvr,
    group_size: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float | None = None,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    updates: int = 1,
    grad_clip: float | None = 1.0,
    seed: int = 0,
    step: int = 0,
) -> dict[str, float]:
    """One GRPO step on ``examples`` (records with ``problem`` and ``answer``): a record of it.

    For each example, ``group_size`` answers to ``prompt_fn(problem)`` are sampled in one batch
    (example ``g`` seeded with ``seed + 1000 * g``); ``reward_fn(text, answer)`` scores each;
    ``group_advantages`` normalises them per example; then ``updates`` optimizer steps follow
    on ``grpo_loss`` (the first at ratio 1; later ones are clipped at ``clip_eps``). The
    reference model only scores, without gradient. Returns ``loss``, ``reward`` (the mean),
    ``response_length`` (mean answer tokens), ``kl`` (the mean k3 per response token, before
    the update), ``clip_fraction`` (of response tokens, last update) and ``grad_norm``.
    """
    examples = _check_examples(examples)
    check_instance("reference", reference, nn.Module, "the frozen reference model")
    if reference is policy:
        raise value_error("reference", "reference must be a frozen copy of the policy "
                                       "(copy.deepcopy(policy)), not the policy itself")
    check_int("group_size", group_size, low=2)
    check_int("updates", updates, low=1)
    check_float("clip_eps", clip_eps, low=0)
    check_float("kl_coef", kl_coef, low=0)
    check_int("seed", seed, low=0)
    eos = eos_id_of(tokenizer)
    device = next(policy.parameters()).device
    policy.eval()
    prompts, answers, ended, rewards = [], [], [], []
    for g, example in enumerate(examples):
        prompt = list(tokenizer.encode(prompt_fn(example["problem"])))
        limit = min(max_new_tokens, policy.cfg.context_length - len(prompt))
        group = sample_responses(policy, prompt, group_size, max_new_tokens=max_new_tokens,
                                 temperature=temperature, top_p=top_p, eos_token_id=eos,
                                 seed=seed + 1000 * g)
        prompts.append(prompt)
        answers.append(group)
        ended.append([len(a) < limit for a in group])
        rewards.append([float(reward_fn(tokenizer.decode(a), example["answer"])) for a in group])
    reward_tensor = torch.tensor(rewards, dtype=torch.float32)  # (G, K)
    advantages = group_advantages(reward_tensor).flatten().to(device)  # (G*K,)
    ids, mask = _rollout_batch(prompts, answers, ended, eos, device)
    with torch.no_grad():
        old = token_logprobs(policy, ids)
        ref = token_logprobs(reference, ids)
        log_ratio = ref - old
        k3 = torch.exp(log_ratio) - log_ratio - 1
        kl = (k3[mask].mean().item() if bool(mask.any()) else 0.0)
    clip_fraction = 0.0

    def loss_fn(model: nn.Module, batch: Any, _device: torch.device) -> torch.Tensor:
        nonlocal clip_fraction
        logp = token_logprobs(model, ids)
        ratio = torch.exp(logp.detach() - old)
        clipped = ((ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)) & mask
        clip_fraction = clipped.sum().item() / max(int(mask.sum()), 1)
        return grpo_loss(logp, old, ref, advantages, mask, clip_eps=clip_eps, kl_coef=kl_coef)

    # Eval mode throughout: with dropout the policy that learns would not be the one that
    # sampled, and the first ratio would not be 1.
    for _ in range(updates):
        loss, norm = train_step(policy, optimizer, [None], device, grad_clip=grad_clip,
                                step=step + 1, loss_fn=loss_fn)
    return {"loss": loss, "reward": reward_tensor.mean().item(),
            "response_length": sum(len(a) for g in answers for a in g) / reward_tensor.numel(),
            "kl": kl, "clip_fraction": clip_fraction, "grad_norm": norm}
