"""GRPO with verifiable rewards (the sequel's chapters 6 and 7): advantages, the loss, one step.

Every number is checked against a float64 recomputation written out here one rollout and one
token at a time: the group-normalised advantage with the unbiased std, the clipped surrogate
``min(r A, clip(r) A)``, the k3 estimator ``exp(ref - logp) - (ref - logp) - 1``, and
REINFORCE's gradient ``-A_i / (n_i R)`` per response token at ratio 1.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.bpe import BPETokenizer
from gpt_components.cli import main
from gpt_components.machinery.checkpoint import latest_step, load_checkpoint
from gpt_components.machinery.metrics import read_metrics
from gpt_components.model import GPTConfig
from gpt_components.reasoning.grpo import (
    compute_advantage_stats,
    group_advantages,
    grpo_loss,
    grpo_step,
    reward_format,
    sequence_logprob,
    token_logprobs,
)
from gpt_components.reasoning.tasks import write_worked_examples
from spec.strategies import generator, random_gpt_model, seeds

pytestmark = pytest.mark.reasoning


def _advantage64(group: list[float], eps: float) -> list[float]:
    mean = sum(group) / len(group)
    std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
    return [(r - mean) / (std + eps) for r in group]


def _loss64(logp, old, ref, adv, mask, clip_eps, kl_coef) -> float:
    """The DeepSeekMath objective, negated, one token at a time in float64."""
    per_rollout = []
    for i in range(len(logp)):
        terms = []
        for t in range(len(logp[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
            surrogate = min(ratio * adv[i], clipped * adv[i])
            d = ref[i][t] - logp[i][t]
            terms.append(surrogate - kl_coef * (math.exp(d) - d - 1))
        per_rollout.append(sum(terms) / len(terms) if terms else 0.0)
    return -sum(per_rollout) / len(per_rollout)


@st.composite
def rollouts(draw, *, spread: float = 0.5):
    """Per-token log-probabilities of a few rollouts, a mask with at least one token each."""
    seed = draw(seeds)
    rows, tokens = draw(st.integers(2, 6)), draw(st.integers(1, 7))
    g = generator(seed)
    logp = -torch.rand(rows, tokens, generator=g, dtype=torch.float64) * 3
    old = logp + (torch.rand(rows, tokens, generator=g, dtype=torch.float64) - 0.5) * spread
    ref = logp + (torch.rand(rows, tokens, generator=g, dtype=torch.float64) - 0.5) * spread
    mask = torch.rand(rows, tokens, generator=g) < 0.7
    mask[:, -1] = True
    adv = torch.randn(rows, generator=g, dtype=torch.float64)
    return logp, old, ref, adv, mask


@settings(deadline=None)
@given(seed=seeds, groups=st.integers(1, 4), size=st.integers(2, 8),
       eps=st.sampled_from([1e-4, 1e-2, 1.0]))
def test_group_advantages_normalise_each_row_with_the_unbiased_std(seed, groups, size, eps):
    g = generator(seed)
    rewards = (torch.rand(groups, size, generator=g) < 0.5).double()
    rewards[0] += torch.rand(size, generator=g, dtype=torch.float64)  # not only 0/1
    got = group_advantages(rewards, eps=eps)
    for row, values in zip(got.tolist(), rewards.tolist(), strict=True):
        assert row == pytest.approx(_advantage64(values, eps), rel=1e-12, abs=1e-12)
    one = group_advantages(rewards[0], eps=eps)  # a 1-D input is one group
    assert torch.allclose(one, got[0])


def test_a_group_of_equal_rewards_gets_zero_advantage_and_the_stats_match_the_sequel():
    assert group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])).abs().max() == 0
    advantages, mean, std = compute_advantage_stats([1.0, 0.0, 0.0, 0.0])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    expected = (rewards - rewards.mean()) / (rewards.std() + 1e-4)  # the sequel's formula
    assert torch.allclose(advantages, expected)
    assert mean == pytest.approx(expected.mean().item(), abs=1e-7)
    assert std == pytest.approx(expected.std().item())


@settings(deadline=None)
@given(data=rollouts(), clip_eps=st.floats(0.0, 0.5), kl_coef=st.floats(0.0, 2.0))
def test_grpo_loss_is_the_clipped_surrogate_minus_k3_averaged_per_sequence(data, clip_eps,
                                                                            kl_coef):
    logp, old, ref, adv, mask = data
    got = grpo_loss(logp, old, ref, adv, mask, clip_eps=clip_eps, kl_coef=kl_coef)
    expected = _loss64(logp.tolist(), old.tolist(), ref.tolist(), adv.tolist(), mask.tolist(),
                       clip_eps, kl_coef)
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(deadline=None)
@given(data=rollouts())
def test_at_ratio_one_without_kl_the_gradient_is_reinforces_with_the_group_advantage(data):
    logp, _, ref, _, mask = data
    rewards = (torch.rand(logp.shape[0], generator=generator(0)) < 0.5).double()
    rewards[0], rewards[1] = 0.0, 1.0  # never a group of equal rewards
    advantages = group_advantages(rewards)
    leaf = logp.clone().requires_grad_(True)
    grpo_loss(leaf, logp.clone(), ref, advantages, mask, clip_eps=0.2, kl_coef=0.0).backward()
    rows = logp.shape[0]
    adv64 = _advantage64(rewards.tolist(), 1e-4)
    for i in range(rows):
        n = int(mask[i].sum())
        for t in range(logp.shape[1]):
            # d/dlogp of -(1/R) sum_i A_i (1/n_i) sum_t logp_it: REINFORCE, one token at a time
            expected = -adv64[i] / (n * rows) if mask[i, t] else 0.0
            assert leaf.grad[i, t].item() == pytest.approx(expected, rel=1e-9, abs=1e-15)


@settings(deadline=None)
@given(data=rollouts(), clip_eps=st.floats(0.05, 0.4), sign=st.sampled_from([1.0, -1.0]))
def test_a_token_clipped_on_the_side_the_minimum_selects_has_zero_gradient(data, clip_eps, sign):
    logp, _, ref, _, mask = data
    rows = logp.shape[0]
    advantages = torch.full((rows,), sign, dtype=torch.float64)
    # A > 0 and ratio above 1 + eps (or A < 0 and ratio below 1 - eps): min picks the clip.
    push = math.log(1 + clip_eps) + 0.1 if sign > 0 else math.log(1 - clip_eps) - 0.1
    old = logp - push
    leaf = logp.clone().requires_grad_(True)
    grpo_loss(leaf, old, ref, advantages, mask, clip_eps=clip_eps, kl_coef=0.0).backward()
    assert torch.count_nonzero(leaf.grad) == 0
    inside = logp.clone().requires_grad_(True)  # the other side is not clipped: it learns
    grpo_loss(inside, logp + push, ref, advantages, mask, clip_eps=clip_eps).backward()
    assert torch.count_nonzero(inside.grad[mask]) == int(mask.sum())


@settings(deadline=None)
@given(data=rollouts(), kl_coef=st.floats(0.0, 2.0))
def test_a_group_whose_rewards_are_all_equal_contributes_nothing(data, kl_coef):
    logp, old, ref, _, mask = data
    rows = logp.shape[0]
    rewards = torch.stack([torch.ones(rows, dtype=torch.float64),
                           torch.arange(rows, dtype=torch.float64)])  # group 0: all equal
    advantages = group_advantages(rewards).flatten()
    # Group 1 samples on-policy (old = the policy: ratio 1, never clipped), so its gradient
    # cannot vanish by clipping: drawn old log-probabilities could clip every one of its rows
    # (a ratio below 0.8 where the advantage is negative, above 1.2 where it is positive).
    both = (torch.cat([logp, logp]), torch.cat([old, logp]), torch.cat([ref, ref]),
            torch.cat([mask, mask]))
    leaf = both[0].clone().requires_grad_(True)
    grpo_loss(leaf, both[1], both[2], advantages, both[3], clip_eps=0.2, kl_coef=0.0).backward()
    assert torch.count_nonzero(leaf.grad[:rows]) == 0
    assert torch.count_nonzero(leaf.grad[rows:][both[3][rows:]]) > 0


@settings(deadline=None)
@given(data=rollouts(spread=4.0), kl_coef=st.floats(0.01, 3.0))
def test_the_k3_term_is_never_negative_and_zero_where_policy_and_reference_agree(data, kl_coef):
    logp, old, ref, _, mask = data
    zero = torch.zeros(logp.shape[0], dtype=torch.float64)  # no surrogate: the KL term alone
    kl = grpo_loss(logp, old, ref, zero, mask, kl_coef=kl_coef) / kl_coef
    assert kl.item() >= 0
    d = (ref - logp)[mask]
    expected = sum(
        sum(math.exp(x) - x - 1 for x in (ref[i] - logp[i])[mask[i]].tolist()) / int(mask[i].sum())
        for i in range(logp.shape[0])) / logp.shape[0]
    assert kl.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert grpo_loss(logp, old, logp.clone(), zero, mask, kl_coef=kl_coef).item() == 0.0
    assert bool((torch.exp(d) - d - 1 >= 0).all())


@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"clip_eps": -0.1}, "clip_eps"), ({"clip_eps": math.nan}, "clip_eps"),
    ({"clip_eps": math.inf}, "clip_eps"), ({"kl_coef": -1.0}, "kl_coef"),
    ({"kl_coef": math.nan}, "kl_coef"), ({"kl_coef": math.inf}, "kl_coef")])
def test_a_negative_or_non_finite_clip_or_kl_coefficient_is_refused_by_name(kwargs, parameter):
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError) as caught:
        grpo_loss(logp, logp, logp, torch.ones(2), torch.ones(2, 3, dtype=torch.bool), **kwargs)
    assert caught.value.parameter == parameter and parameter in str(caught.value)


def test_a_group_size_below_two_is_refused_by_name():
    with pytest.raises(ValueError) as caught:
        group_advantages(torch.ones(3, 1))
    assert caught.value.parameter == "rewards" and "at least 2" in str(caught.value)
    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=20), 0)
    with pytest.raises(ValueError) as caught:
        grpo_step(model, copy.deepcopy(model), torch.optim.SGD(model.parameters(), lr=0.1),
                  _Chars(), [{"problem": "1", "answer": "1"}], prompt_fn=str,
                  reward_fn=lambda text, answer: 0.0, group_size=1)
    assert caught.value.parameter == "group_size"


@settings(deadline=None, max_examples=5)
@given(seed=seeds, prompt_len=st.integers(1, 5), answer_len=st.integers(1, 5))
def test_sequence_logprob_sums_the_answer_tokens_log_probabilities(seed, prompt_len, answer_len):
    model = random_gpt_model(GPTConfig.from_name("gpt-nano", vocab_size=30), seed)
    ids = torch.randint(0, 30, (prompt_len + answer_len,), generator=generator(seed))
    logits = model(ids.unsqueeze(0))[0].double()
    expected = 0.0
    for t in range(prompt_len, len(ids)):  # log p(token t | tokens before it)
        expected += (logits[t - 1, ids[t]] - torch.logsumexp(logits[t - 1], 0)).item()
    assert sequence_logprob(model, ids, prompt_len).item() == pytest.approx(expected, rel=1e-9)
    assert token_logprobs(model, ids.unsqueeze(0))[0, 0].item() == 0.0


def test_the_format_reward_asks_for_a_think_block_opened_before_it_closes():
    assert reward_format([5, 151667, 9, 151668], 1) == 1.0
    assert reward_format(torch.tensor([5, 151668, 9, 151667]), 1) == 0.0
    assert reward_format([151667, 151668], 1) == 0.0  # the opening one is in the prompt
    assert reward_format([1, 2, 3], 0, start_think_id=1, end_think_id=3) == 1.0


class _Chars:
    """A character tokenizer of digits: ids 0-9, end of text 10."""

    eos_token_id = 10

    def encode(self, text):
        return [int(c) for c in text if c.isdigit()]

    def decode(self, ids):
        return "".join(str(i) for i in ids if i < 10)


def test_the_reference_never_receives_a_gradient_and_stays_bit_identical_through_a_step():
    cfg = GPTConfig.from_name("gpt-nano", vocab_size=11, context_length=16)
    policy = random_gpt_model(cfg, 1, dtype=torch.float32, std=0.1)
    reference = copy.deepcopy(policy)  # requires_grad left on: the step must not use it
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    record = grpo_step(policy, reference, optimizer, _Chars(),
                       [{"problem": "12", "answer": "3"}, {"problem": "45", "answer": "9"}],
                       prompt_fn=str, reward_fn=lambda text, answer: float(answer in text),
                       group_size=6, max_new_tokens=4, kl_coef=0.5, updates=2, seed=3)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    changed = any(not torch.equal(v, start[k]) for k, v in policy.state_dict().items())
    assert changed == (record["grad_norm"] > 0)
    assert 0.0 <= record["reward"] <= 1.0 and record["kl"] >= 0


def test_the_rlvr_reward_pays_a_boxed_answer_that_grades_equal_and_nothing_else():
    from gpt_components.reasoning.grpo import reward_rlvr

    assert reward_rlvr("so the answer is \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert reward_rlvr("so the answer is \\boxed{632}", "632") == 1.0
    assert reward_rlvr("so the answer is 632", "632") == 0.0  # no box: no reward
    assert reward_rlvr("\\boxed{631}", "632") == 0.0


# ---------------------------------------------------------------- finetune-grpo, end to end

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: every process computes alike


def _grpo_argv(start: Path, out: Path, *more: str) -> list[str]:
    return ["finetune-grpo", "--run", str(start), "--out", str(out), "--max-digits", "1",
            "--steps", "5", "--prompts-per-step", "3", "--group-size", "4",
            "--max-new-tokens", "24", "--lr", "3e-3", "--eval-problems", "6",
            "--eval-interval", "2", "--checkpoint-interval", "1", "--format-reward", "0.5",
            "--no-progress", *more]


def _cli(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpt_components.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            **kwargs)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """gpt-nano trained for a few seconds on worked one-digit sums: it writes the format and
    sometimes the right sum, so a group's rewards differ and GRPO has a gradient."""
    root = tmp_path_factory.mktemp("grpo")
    corpus = write_worked_examples(root / "corpus.txt", 1500, seed=0, max_digits=1)
    BPETokenizer.train("0123456789", vocab_size=257).save(root / "bytes")
    assert main(["train", "--corpus", str(corpus), "--tokenizer", str(root / "bytes"),
                 "--run-dir", str(root / "run"), "--preset", "gpt-nano", "--batch-size", "8",
                 "--steps", "120", "--lr", "1e-2", "--min-lr", "1e-3", "--dropout", "0",
                 "--eval-iters", "1", "--sample-tokens", "0", "--no-progress"]) == 0
    return root / "run"


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run).weights


def _steps(run: Path) -> list[dict]:
    return [r for r in read_metrics(run) if "reward" in r]


@pytest.mark.slow
def test_finetune_grpo_resumes_exactly_after_sigkill_and_ctrl_c(pretrained, tmp_path):
    whole = tmp_path / "whole"
    done = subprocess.run([sys.executable, "-m", "gpt_components.cli",
                           *_grpo_argv(pretrained, whole)], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = _steps(whole)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert any(r["grad_norm"] > 0 for r in records), records  # the runs learn something
    assert [r["step"] for r in read_metrics(whole) if "eval_accuracy" in r] == [0, 2, 4, 5]
    assert (whole / "grpo.png").stat().st_size > 0
    for sig, status in ((signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 130)):
        run = tmp_path / sig.name
        child = _cli(*_grpo_argv(pretrained, run))
        try:
            while latest_step(run) < 2:  # a checkpoint of step 2 or later, then the signal
                assert child.poll() is None, child.communicate()[1]
                time.sleep(0.05)
            child.send_signal(sig)
            _, err = child.communicate(timeout=120)
        finally:
            child.kill()
        assert child.returncode == status, err
        if sig == signal.SIGINT:
            assert err.splitlines()[-1].endswith(
                f"checkpoint saved; resume with: gpt-components finetune-grpo --resume {run}")
        resumed = _cli("finetune-grpo", "--resume", str(run), "--no-progress")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, err
        assert _steps(run) == records  # the same samples, rewards and losses
        got, expected = _weights(run), _weights(whole)
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in expected), sig.name


@pytest.mark.parametrize(("flags", "flag"), [
    (["--group-size", "1"], "--group-size"), (["--clip-eps", "-0.1"], "--clip-eps"),
    (["--clip-eps", "nan"], "--clip-eps"), (["--kl-coef", "-1"], "--kl-coef"),
    (["--kl-coef", "inf"], "--kl-coef"), (["--lr", "0"], "--lr"),
    (["--prompts-per-step", "0"], "--prompts-per-step")])
def test_a_bad_grpo_flag_is_one_line_naming_it_with_exit_2(flags, flag, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune-grpo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gpt-components: error: {flag} must be ") and err.count("\n") == 1
    assert not out.exists()  # refused before any work


def test_every_grpo_option_has_help_and_a_misspelt_preset_says_did_you_mean(tmp_path, capsys):
    from gpt_components.cli import build_parser

    command = build_parser()._subparsers._group_actions[0].choices["finetune-grpo"]
    assert [a.dest for a in command._actions if not (a.help or "").strip()] == []
    assert len((command.description or "").split()) >= 8
    assert main(["finetune-grpo", "--out", str(tmp_path / "run"), "--preset", "gpt-nan"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt-components: error: --preset ") and err.count("\n") == 1
    assert "did you mean 'gpt-nano'?" in err
    assert main(["finetune-grpo"]) == 2  # neither --out nor --resume
    assert capsys.readouterr().err.startswith("gpt-components: error: --out must name a new ")
