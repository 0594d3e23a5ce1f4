"""Preference tuning with DPO (the chapter-7 bonus): pairs, masks, log-probabilities, the loss.

Every number is checked against a float64 recomputation written out here one position and one
pair at a time: log p(token | prefix) = logit - logsumexp(logits), and the DPO loss
``-logsigmoid(beta * ((pc - rc) - (pr - rr)))`` through ``softplus``'s stable form.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.finetune.commands import add_commands
from gpt_components.finetune.dpo import (
    PreferenceDataset,
    compute_dpo_loss,
    compute_dpo_loss_batch,
    compute_dpo_loss_loader,
    compute_logprobs,
    evaluate_dpo_loss_loader,
    load_preference_data,
    preference_collate,
    preference_splits,
    train_model_dpo_simple,
)
from gpt_components.finetune.instructions import format_input, instruction_splits
from gpt_components.finetune.lora import replace_linear_with_lora
from gpt_components.machinery.pretrained import save_pretrained
from gpt_components.machinery.registry import build_model, preset_config
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.tokenizers import gpt2_tokenizer
from spec.strategies import generator, random_gpt_model, seeds

pytestmark = [pytest.mark.ch07, pytest.mark.dpo]

VOCAB = 60
PAD = VOCAB - 1
TINY = GPTConfig(vocab_size=VOCAB, context_length=24, emb_dim=16, n_heads=2, n_layers=1,
                 drop_rate=0.0)
betas = st.floats(0.01, 2.0)


# ------------------------------------------------------------------ independent references

def reference_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                       mask: torch.Tensor | None) -> list[float]:
    """Mean log-probability of each row's selected labels, one position at a time in float64.

    Position t's label is predicted by the logits at t - 1, so t runs from 1; a row with
    nothing selected has mean 0.
    """
    means = []
    for b in range(labels.shape[0]):
        terms = []
        for t in range(1, labels.shape[1]):
            if mask is None or bool(mask[b, t]):
                row = logits[b, t - 1].double()
                terms.append((row[labels[b, t]] - torch.logsumexp(row, 0)).item())
        means.append(math.fsum(terms) / len(terms) if terms else 0.0)
    return means


def neg_logsigmoid(z: float) -> float:
    """-log(sigmoid(z)) = softplus(-z), in the form that neither overflows nor cancels."""
    return max(-z, 0.0) + math.log1p(math.exp(-abs(z)))


def reference_dpo(pc, pr, rc, rr, beta) -> tuple[float, float, float, list[float], list[float]]:
    """Loss, mean chosen reward, mean rejected reward, and the per-pair rewards."""
    pairs = list(zip(pc, pr, rc, rr, strict=True))
    losses = [neg_logsigmoid(beta * ((c - r) - (cr - rj))) for c, r, cr, rj in pairs]
    chosen = [c - cr for c, _, cr, _ in pairs]
    rejected = [r - rj for _, r, _, rj in pairs]
    n = len(pairs)
    return math.fsum(losses) / n, math.fsum(chosen) / n, math.fsum(rejected) / n, chosen, rejected


# ------------------------------------------------------------------ drawn data

token_ids = st.integers(0, PAD - 1)


@st.composite
def preference_items(draw, max_prompt: int = 6, max_response: int = 6):
    """A dataset item: ``prompt`` ids, and ``chosen``/``rejected`` = the prompt + a response."""
    prompt = draw(st.lists(token_ids, min_size=1, max_size=max_prompt))
    chosen = draw(st.lists(token_ids, max_size=max_response))
    rejected = draw(st.lists(token_ids, max_size=max_response))
    return {"prompt": prompt, "chosen": prompt + chosen, "rejected": prompt + rejected}


def drawn_batches(seed: int, n_batches: int, batch_size: int, max_length: int | None = None):
    """Collated batches of random items whose responses are never empty."""
    g = generator(seed)

    def ids(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high + 1, (1,), generator=g))
        return torch.randint(0, PAD, (n,), generator=g).tolist()

    batches = []
    for _ in range(n_batches):
        items = []
        for _ in range(batch_size):
            prompt = ids(1, 6)
            items.append({"prompt": prompt, "chosen": prompt + ids(1, 6),
                          "rejected": prompt + ids(1, 6)})
        batches.append(preference_collate(items, pad_token_id=PAD,
                                          allowed_max_length=max_length))
    return batches


# ------------------------------------------------------------------ the collate

@settings(max_examples=25)
@given(st.lists(preference_items(), min_size=1, max_size=4), st.none() | st.integers(1, 14),
       st.booleans())
def test_masks_cover_exactly_the_response_and_the_prompt_only_when_unmasked(batch, limit,
                                                                          mask_prompt):
    out = preference_collate(batch, pad_token_id=PAD, allowed_max_length=limit,
                             mask_prompt_tokens=mask_prompt)
    width = max(len(item[key]) for item in batch for key in ("chosen", "rejected"))
    width = width if limit is None else min(width, limit)
    for key in ("chosen", "rejected"):
        assert out[key].shape == out[f"{key}_mask"].shape == (len(batch), width)
        assert out[key].dtype == torch.long and out[f"{key}_mask"].dtype == torch.bool
        for row, item in enumerate(batch):
            ids, n_prompt = item[key], len(item["prompt"])
            padded = (ids + [PAD] * width)[:width]
            assert out[key][row].tolist() == padded
            expected = [j < len(ids) and (not mask_prompt or j >= n_prompt) for j in range(width)]
            assert out[f"{key}_mask"][row].tolist() == expected  # never a padding position


@settings(max_examples=20)
@given(st.lists(preference_items(), min_size=1, max_size=4), st.none() | st.integers(1, 14))
def test_chosen_and_rejected_rows_begin_with_the_same_prompt_tokens(batch, limit):
    out = preference_collate(batch, pad_token_id=PAD, allowed_max_length=limit)
    for row, item in enumerate(batch):
        n = len(item["prompt"]) if limit is None else min(len(item["prompt"]), limit)
        assert out["chosen"][row, :n].tolist() == out["rejected"][row, :n].tolist() == \
            item["prompt"][:n]
        assert out["prompt"][row].tolist() == item["prompt"]


entries = st.fixed_dictionaries({
    "instruction": st.text(min_size=1, max_size=15), "input": st.text(max_size=10),
    "output": st.text(max_size=10), "chosen": st.text(max_size=15),
    "rejected": st.text(max_size=15)})


@settings(max_examples=10)
@given(st.lists(entries, min_size=1, max_size=3))
def test_dataset_items_are_the_prompt_then_each_response_in_gpt2_tokens(data):
    tok = gpt2_tokenizer()
    dataset = PreferenceDataset(data, tok)
    assert len(dataset) == len(data)
    for entry, item in zip(data, dataset, strict=True):
        prompt_text = format_input(entry) + "\n\n### Response:\n"
        assert tok.decode(item["prompt"]) == prompt_text
        for key in ("chosen", "rejected"):
            assert item[key][: len(item["prompt"])] == item["prompt"]
            assert tok.decode(item[key]) == prompt_text + entry[key]


def test_the_bundled_pairs_are_the_instruction_records_with_a_chosen_and_a_rejected_response():
    from gpt_components.finetune.instructions import load_instruction_data

    pairs, records = load_preference_data(), load_instruction_data()
    assert len(pairs) == 1100
    assert [{k: p[k] for k in ("instruction", "input", "output")} for p in pairs] == records
    assert all(isinstance(p["chosen"], str) and isinstance(p["rejected"], str) for p in pairs)
    # the same split as the instruction finetuning, so neither stage trains on the other's test
    assert [{k: p[k] for k in ("instruction", "input", "output")}
            for p in preference_splits(pairs).test] == instruction_splits(records).test


# ------------------------------------------------------------------ log-probabilities

@st.composite
def logits_labels_masks(draw):
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(2, 8)), draw(st.integers(2, 12))
    g = generator(draw(seeds))
    logits = 3 * torch.randn(b, t, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = draw(st.none() | st.just(torch.rand(b, t, generator=g) < 0.6))
    return logits, labels, mask


@settings(max_examples=20)
@given(logits_labels_masks())
def test_logprobs_are_the_mean_log_probability_of_the_selected_labels(case):
    logits, labels, mask = case
    got = compute_logprobs(logits, labels, mask)
    assert got.shape == (labels.shape[0],) and got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(reference_logprobs(logits, labels, mask),
                                                 dtype=torch.float64), rtol=1e-12, atol=1e-12)


@settings(max_examples=25)
@given(logits_labels_masks(), seeds)
def test_changing_logits_or_labels_at_unselected_positions_changes_nothing(case, seed):
    logits, labels, mask = case
    if mask is None:
        mask = torch.zeros_like(labels, dtype=torch.bool)
    g = generator(seed)
    unselected = ~mask  # label t is read from the logits at t - 1; the last logits predict nothing
    logit_positions = torch.cat([unselected[:, 1:], torch.ones_like(mask[:, :1])], dim=1)
    noisy = logits + 50 * torch.randn(logits.shape, generator=g, dtype=logits.dtype) * \
        logit_positions.unsqueeze(-1)
    other = torch.where(unselected, torch.randint(0, logits.shape[-1], labels.shape,
                                                  generator=g), labels)
    assert torch.equal(compute_logprobs(noisy, other, mask), compute_logprobs(logits, labels, mask))


def test_logprobs_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="labels"):
        compute_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="selection_mask"):
        compute_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long),
                         torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="logits"):
        compute_logprobs(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


# ------------------------------------------------------------------ the DPO loss

logprob_vectors = st.integers(1, 5).flatmap(lambda n: st.tuples(*[
    st.lists(st.floats(-10, 0), min_size=n, max_size=n) for _ in range(4)]))


@settings(max_examples=30)
@given(logprob_vectors, betas)
def test_dpo_loss_and_rewards_equal_a_float64_recomputation(vectors, beta):
    pc, pr, rc, rr = (torch.tensor(v, dtype=torch.float64) for v in vectors)
    loss, chosen, rejected = compute_dpo_loss(pc, pr, rc, rr, beta=beta)
    expected = reference_dpo(*vectors, beta)
    for got, want in zip((loss, chosen, rejected), expected[:3], strict=True):
        assert got.dtype == torch.float64 and got.shape == ()
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)


@settings(max_examples=25)
@given(st.integers(1, 5).flatmap(lambda n: st.tuples(*[
    st.lists(st.floats(-10, 0), min_size=n, max_size=n) for _ in range(2)])), betas,
    st.sampled_from([torch.float32, torch.float64]))
def test_a_policy_equal_to_its_reference_has_loss_log_2_and_zero_rewards(vectors, beta, dtype):
    chosen, rejected = (torch.tensor(v, dtype=dtype) for v in vectors)
    loss, chosen_reward, rejected_reward = compute_dpo_loss(chosen, rejected, chosen, rejected,
                                                            beta=beta)
    assert loss.item() == torch.tensor(math.log(2), dtype=dtype).item()
    assert chosen_reward.item() == rejected_reward.item() == 0.0


@settings(max_examples=30)
@given(logprob_vectors, betas, st.floats(0.01, 5.0))
def test_the_loss_falls_as_the_chosen_margin_grows(vectors, beta, delta):
    pc, pr, rc, rr = (torch.tensor(v, dtype=torch.float64) for v in vectors)
    before = compute_dpo_loss(pc, pr, rc, rr, beta=beta)
    after = compute_dpo_loss(pc + delta, pr, rc, rr, beta=beta)
    assert after[0] < before[0]
    assert after[1] > before[1] and after[2] == before[2]
    lower_rejected = compute_dpo_loss(pc, pr - delta, rc, rr, beta=beta)
    assert lower_rejected[0] < before[0]


def test_dpo_loss_rejects_a_bad_beta_and_mismatched_shapes():
    x = torch.zeros(3)
    for beta in (0.0, -0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match="beta"):
            compute_dpo_loss(x, x, x, x, beta=beta)
    with pytest.raises(TypeError, match="beta"):
        compute_dpo_loss(x, x, x, x, beta="0.1")
    with pytest.raises(ValueError, match="reference_rejected_logprobs"):
        compute_dpo_loss(x, x, x, torch.zeros(2))


# ------------------------------------------------------------------ on a model

@settings(max_examples=5)
@given(seeds, seeds, betas, st.none() | st.integers(1, 3))
def test_loader_scores_are_pairwise_means_of_a_float64_recomputation(seed, data_seed, beta,
                                                                     num_batches):
    policy = random_gpt_model(TINY, seed)
    reference = random_gpt_model(TINY, seed + 1)
    batches = drawn_batches(data_seed, n_batches=3, batch_size=2, max_length=10)
    scores = compute_dpo_loss_loader(batches, policy, reference, beta, num_batches)
    used = batches if num_batches is None else batches[:num_batches]
    logps = {}
    for name, model in (("policy", policy), ("reference", reference)):
        for key in ("chosen", "rejected"):
            logps[name, key] = [lp for b in used for lp in reference_logprobs(
                model(b[key]), b[key], b[f"{key}_mask"])]
    loss, chosen, rejected, chosen_each, rejected_each = reference_dpo(
        logps["policy", "chosen"], logps["policy", "rejected"], logps["reference", "chosen"],
        logps["reference", "rejected"], beta)
    accuracy = sum(c > r for c, r in zip(chosen_each, rejected_each, strict=True)) / \
        len(chosen_each)
    assert scores.loss == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert scores.chosen_reward == pytest.approx(chosen, rel=1e-9, abs=1e-12)
    assert scores.rejected_reward == pytest.approx(rejected, rel=1e-9, abs=1e-12)
    assert scores.reward_accuracy == accuracy
    evaluated = evaluate_dpo_loss_loader(policy, reference, batches, used, beta,
                                         eval_iter=len(used))
    assert evaluated["val_loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert evaluated["val_reward_margin"] == pytest.approx(chosen - rejected, rel=1e-9,
                                                           abs=1e-12)
    assert evaluated["val_reward_accuracy"] == accuracy


@settings(max_examples=5)
@given(seeds, seeds, betas)
def test_a_policy_that_is_its_reference_scores_log_2_on_every_batch(seed, data_seed, beta):
    policy = random_gpt_model(TINY, seed)
    for batch in drawn_batches(data_seed, n_batches=2, batch_size=3):
        for reference in (policy, copy.deepcopy(policy)):
            loss, chosen, rejected = compute_dpo_loss_batch(batch, policy, reference, beta)
            assert loss.item() == math.log(2) and chosen.item() == rejected.item() == 0.0


@settings(max_examples=3)
@given(seeds, seeds)
def test_the_reference_gets_no_gradient_and_stays_bit_identical_through_training(seed, data_seed):
    policy = random_gpt_model(TINY, seed)
    reference = copy.deepcopy(policy)  # left trainable on purpose: DPO itself must not train it
    reference_before = copy.deepcopy(reference.state_dict())
    policy_before = copy.deepcopy(policy.state_dict())
    batches = drawn_batches(data_seed, n_batches=3, batch_size=2)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    records = train_model_dpo_simple(policy, reference, batches, batches[:1], optimizer,
                                     num_epochs=1, beta=0.5, eval_freq=2, eval_iter=1, seed=seed)
    assert all(p.grad is None for p in reference.parameters())
    state = reference.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference_before.items())
    assert any(not torch.equal(p, policy_before[k]) for k, p in policy.state_dict().items())
    assert records[0]["loss"] == math.log(2)  # the first step starts from the reference itself
    assert [r["step"] for r in records] == [1, 2, 3]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 3]  # every eval_freq steps and at the epoch's end
    for r in evals:
        assert set(r) >= {"train_loss", "val_loss", "train_reward_margin", "val_reward_margin",
                          "train_reward_accuracy", "val_reward_accuracy"}
        assert r["val_reward_margin"] == pytest.approx(
            r["val_chosen_reward"] - r["val_rejected_reward"], rel=1e-12, abs=1e-15)


@settings(max_examples=3)
@given(seeds, seeds)
def test_training_raises_the_reward_margin_on_the_pairs_it_sees(seed, data_seed):
    policy = random_gpt_model(TINY, seed)
    reference = copy.deepcopy(policy)
    batches = drawn_batches(data_seed, n_batches=1, batch_size=4)
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.05)
    train_model_dpo_simple(policy, reference, batches * 5, batches, optimizer, num_epochs=1,
                           beta=1.0, eval_freq=5, eval_iter=1)
    scores = compute_dpo_loss_loader(batches, policy, reference, beta=1.0)
    assert scores.loss < math.log(2)
    assert scores.chosen_reward > scores.rejected_reward


@settings(max_examples=3)
@given(seeds, seeds, st.integers(1, 4))
@pytest.mark.appendix_e
def test_with_lora_only_the_adapters_move_and_training_starts_at_log_2(seed, data_seed, rank):
    reference = random_gpt_model(TINY, seed)
    policy = replace_linear_with_lora(copy.deepcopy(reference), rank, alpha=2.0,
                                      generator=generator(seed))
    batches = drawn_batches(data_seed, n_batches=2, batch_size=2)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    records = train_model_dpo_simple(policy, reference, batches, batches, optimizer,
                                     num_epochs=1, beta=0.5, eval_freq=2, eval_iter=1)
    assert records[0]["loss"] == math.log(2)  # B = 0: the adapted policy is the reference
    base = {k.replace(".linear.", "."): v for k, v in policy.state_dict().items()
            if ".lora." not in k}
    assert base.keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in base.items())
    assert any(".lora.B" in k and v.abs().sum() > 0 for k, v in policy.state_dict().items())


def tiny_model(family: str, seed: int) -> torch.nn.Module:
    """A float64 one-layer model of ``family`` (emb 16, vocab 60), every parameter drawn."""
    from gpt_components.machinery.registry import build_model
    from gpt_components.modern.gemma3 import FULL, SLIDING, Gemma3Config
    from gpt_components.modern.llama import LlamaConfig
    from gpt_components.modern.qwen3 import Qwen3Config

    sizes = {"vocab_size": VOCAB, "context_length": 24, "emb_dim": 16, "n_heads": 2,
             "n_kv_heads": 1, "hidden_dim": 32}
    cfg = {"gpt2": lambda: TINY,
           "llama": lambda: LlamaConfig(**sizes, n_layers=1),
           "qwen3": lambda: Qwen3Config(**sizes, n_layers=1),
           # one sliding layer whose window is shorter than the drawn sequences, one global
           "gemma3": lambda: Gemma3Config(**sizes, n_layers=2, sliding_window=4,
                                          query_pre_attn_scalar=8.0,
                                          layer_types=(SLIDING, FULL))}[family]()
    with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG: isolate it
        model = build_model(cfg).double()
    g = generator(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.copy_(noise + 1 if p.dim() == 1 and ("norm" in name or "scale" in name) else noise)
    return model


@settings(max_examples=2)
@given(seeds, seeds)
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3"])
@pytest.mark.parametrize("lora", [False, True])
def test_dpo_trains_every_modern_family_with_or_without_lora_and_never_its_reference(
        family, lora, seed, data_seed):
    reference = tiny_model(family, seed)
    policy = copy.deepcopy(reference)
    if lora:
        replace_linear_with_lora(policy, 2, alpha=2.0, generator=generator(seed))
    reference_before = copy.deepcopy(reference.state_dict())
    policy_before = copy.deepcopy(policy.state_dict())
    batches = drawn_batches(data_seed, n_batches=2, batch_size=2)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    records = train_model_dpo_simple(policy, reference, batches, batches, optimizer,
                                     num_epochs=1, beta=0.5, eval_freq=2, eval_iter=1)
    assert records[0]["loss"] == math.log(2)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.equal(reference.state_dict()[k], v) for k, v in reference_before.items())
    moved = {k for k, v in policy.state_dict().items() if not torch.equal(v, policy_before[k])}
    assert moved and (not lora or all(".lora." in k for k in moved))
    assert records[-1]["val_loss"] < math.log(2)


def test_collate_and_training_reject_bad_arguments():
    item = {"prompt": [1], "chosen": [1, 2], "rejected": [1, 3]}
    with pytest.raises(ValueError, match="batch"):
        preference_collate([])
    with pytest.raises(ValueError, match="allowed_max_length"):
        preference_collate([item], allowed_max_length=0)
    with pytest.raises(ValueError, match="chosen"):
        preference_collate([{"prompt": [1, 2], "chosen": [1], "rejected": [1, 2, 3]}])
    with pytest.raises(TypeError, match="batch"):
        preference_collate([[1, 2, 3]])
    model = random_gpt_model(TINY, 0)
    with pytest.raises(ValueError, match="eval_iter"):
        train_model_dpo_simple(model, model, [], [], torch.optim.SGD(model.parameters(), 0.1),
                               eval_iter=0)
    with pytest.raises(ValueError, match="beta"):
        train_model_dpo_simple(model, model, [], [], torch.optim.SGD(model.parameters(), 0.1),
                               beta=0)


def test_records_without_a_chosen_response_are_refused(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b", "rejected": "c"}]))
    with pytest.raises(ValueError, match="chosen"):
        load_preference_data(path)
    with pytest.raises(ValueError, match="rejected"):
        PreferenceDataset([{"instruction": "a", "chosen": "b"}])


# ------------------------------------------------------------------ the command

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt-components")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_every_finetune_dpo_option_has_help_text():
    sub = _parser()._subparsers._group_actions[0].choices["finetune-dpo"]
    actions = [a for a in sub._actions if a.dest != "help"]
    assert [a.dest for a in actions if not (a.help or "").strip()] == []


def _short_pairs(n: int) -> list[dict]:
    return sorted(load_preference_data(),
                  key=lambda e: len(format_input(e) + e["chosen"] + e["rejected"]))[:n]


def test_finetune_dpo_runs_from_an_instruction_model_and_responses_follow(tmp_path, capsys):
    cfg = GPTConfig(context_length=96, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(GPTModel(cfg), tmp_path / "assistant")
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(_short_pairs(20)), encoding="utf-8")
    out = tmp_path / "dpo"
    args = _parser().parse_args([
        "finetune-dpo", "--run", str(tmp_path / "assistant"), "--data", str(data), "--limit", "2",
        "--batch-size", "2", "--eval-iter", "1", "--beta", "0.5",
        "--lr", "1e-3", "--out", str(out), "--device", "cpu", "--no-progress"])
    args.run(args)
    printed = capsys.readouterr().out
    assert "val reward margin" in printed
    assert {"config.json", "model.safetensors", "metrics.jsonl", "summary.json",
            "dpo.png"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1] and "val_reward_accuracy" in records[-1]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["validation"]) == {"loss", "chosen_reward", "rejected_reward",
                                          "reward_margin", "reward_accuracy"}
    args = _parser().parse_args(["instruction-responses", "--model", str(out), "--data",
                                 str(data), "--max-new-tokens", "2", "--limit", "1"])
    args.run(args)
    assert len(json.loads((out / "test-responses.json").read_text(encoding="utf-8"))) == 1


@pytest.mark.parametrize("argv, fragment", [
    (["--beta", "0"], "--beta must be a float > 0, got 0.0"),
    (["--lr", "-1"], "--lr must be a float > 0, got -1.0"),
    (["--epochs", "0"], "--epochs must be an int >= 1, got 0"),
    (["--lora-rank", "0"], "--lora-rank must be an int >= 1, got 0"),
    (["--run", "/no/such/run"], "/no/such/run"),
    (["--data", "/no/such/pairs.json"], "--data '/no/such/pairs.json' is not a file"),
    (["--data", "{bad}"], "--data: record 0"),
])
def test_a_bad_finetune_dpo_argument_is_a_one_line_error(argv, fragment, tmp_path, capsys,
                                                         monkeypatch):
    from gpt_components.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    argv = [str(tmp_path / "bad.json") if a == "{bad}" else a for a in argv]
    assert main(["finetune-dpo", "--out", "o", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error:")
    assert fragment in err and "Traceback" not in err


# ------------------------------------------------- every family, with the tokenizer it comes with

def _learned_bpe(directory, texts: list[str]) -> int:
    """A BPETokenizer learned here, saved in GPT-2's format; its end-of-text id, as the file
    says it."""
    from gpt_components.bpe import BPETokenizer

    BPETokenizer.train("\n".join(texts), vocab_size=400).save(directory)
    return json.loads((directory / "encoder.json").read_text(encoding="utf-8"))["<|endoftext|>"]


def _tokenizer_json(directory, texts: list[str], specials: list[str], eos: str | None) -> int:
    """A byte-level BPE tokenizer.json trained by the tokenizers library (specials first, so
    the end of text is a low id), with a tokenizer_config.json naming ``eos``; the end id as
    the library reads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    if eos is not None:
        (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}))
    return Tokenizer.from_file(str(directory / "tokenizer.json")).token_to_id(
        eos or "<|endoftext|>")


# preset: its tokenizer; whether DPO trains LoRA adapters or every weight; whether the model is
# trained by the CLI with that tokenizer or comes as weights with the tokenizer files beside them
# (as a download of Gemma 3 does)
FAMILIES = {
    "llama3-nano": ("bpe", ["--lora-rank", "2"], "train"),
    "qwen3-nano": ("qwen", [], "train"),
    "gemma3-nano": ("gemma", ["--lora-rank", "2"], "weights"),
}


@pytest.mark.modern
@pytest.mark.parametrize("preset", sorted(FAMILIES))
def test_every_family_finetunes_instructions_then_dpo_with_the_tokenizer_it_trained_with(
        preset, tmp_path, capsys, monkeypatch):
    from tokenizers import Tokenizer

    from gpt_components.bpe import BPETokenizer
    from gpt_components.cli import main
    from gpt_components.finetune import dpo, instructions
    from gpt_components.machinery.resources import load_text
    from gpt_components.machinery.sources import tokenizer_of

    pairs = _short_pairs(20)
    text = load_text("the-verdict.txt")[:3000]
    texts = [text, *(format_input(e) + "\n\n### Response:\n" + e["chosen"] for e in pairs)]
    kind, dpo_flags, start = FAMILIES[preset]
    tokenizer_dir = tmp_path / "tokenizer"
    if kind == "bpe":
        end = _learned_bpe(tokenizer_dir, texts)
    elif kind == "qwen":
        end = _tokenizer_json(tokenizer_dir, texts, ["<|endoftext|>", "<|im_start|>",
                                                     "<|im_end|>"], None)
    else:
        end = _tokenizer_json(tokenizer_dir, texts, ["<pad>", "<eos>", "<bos>",
                                                     "<start_of_turn>", "<end_of_turn>"], "<eos>")

    def reference(sample: str) -> list[int]:
        if kind == "bpe":
            return BPETokenizer.load(tokenizer_dir).encode(sample)
        return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).encode(
            sample, add_special_tokens=False).ids

    batches: dict[str, list] = {"instructions": [], "dpo": []}

    def spy(real, kept: list):
        def collate(batch, *args, **kwargs):
            out = real(batch, *args, **kwargs)
            kept.append((batch, out))
            return out

        return collate

    monkeypatch.setattr(instructions, "instruction_collate",
                        spy(instructions.instruction_collate, batches["instructions"]))
    monkeypatch.setattr(dpo, "preference_collate", spy(dpo.preference_collate, batches["dpo"]))
    corpus, data = tmp_path / "corpus.txt", tmp_path / "pairs.json"
    corpus.write_text(text, encoding="utf-8")
    data.write_text(json.dumps(pairs), encoding="utf-8")
    run, sft, preferred = tmp_path / "run", tmp_path / "sft", tmp_path / "dpo"
    common = ["--data", str(data), "--limit", "2", "--batch-size", "2", "--eval-iter", "1",
              "--device", "cpu"]

    def ok(*argv: str) -> str:
        status = main(list(argv))
        out, err = capsys.readouterr()
        assert status == 0, err
        return out

    if start == "train":
        ok("train", "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--run-dir",
           str(run), "--preset", preset, "--batch-size", "2", "--steps", "2", "--eval-interval",
           "2", "--eval-iters", "1", "--sample-tokens", "0", "--no-progress")
        origin, flag = f"run {run} (step 2)", "--run"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            small = {"n_layers": 2, "layer_types": ("sliding_attention", "full_attention")}
            save_pretrained(build_model(preset_config(preset, vocab_size=400, **small)), run)
        shutil.copytree(tokenizer_dir, run, dirs_exist_ok=True)
        origin, flag = f"weights {run}", "--weights"
    assert f"starting from {origin}" in ok(
        "finetune-instructions", flag, str(run), *common, "--epochs", "1", "--out", str(sft))
    assert f"starting from weights {sft}" in ok(
        "finetune-dpo", "--weights", str(sft), *common, "--lr", "1e-3", "--out", str(preferred),
        "--no-progress", *dpo_flags)
    ok("instruction-responses", "--model", str(preferred), "--data", str(data),
       "--max-new-tokens", "2", "--limit", "1")
    assert len(json.loads((preferred / "test-responses.json").read_text())) == 1

    sample = "Rewrite the sentence: the cat sat. 12345 don't!"
    for directory in (sft, preferred):  # each output keeps the tokenizer, for whatever follows
        assert tokenizer_of(directory).encode(sample) == reference(sample)
    vocab = json.loads((sft / "config.json").read_text())["vocab_size"]
    assert vocab == 400 and end != 50256
    assert batches["instructions"] and batches["dpo"]
    for batch, (inputs, targets) in batches["instructions"]:
        assert int(inputs.max()) < vocab
        for row, item in enumerate(batch):  # padding holds the end id and carries no loss
            n = len(item.token_ids)
            assert inputs[row, n:].eq(end).all() and targets[row, n:].eq(-100).all()
            if n <= inputs.shape[1]:  # not cut to the context
                assert targets[row, n - 1] == end  # the end of text the model learns to emit
    for batch, out in batches["dpo"]:
        for key in ("chosen", "rejected"):
            assert int(out[key].max()) < vocab
            for row, item in enumerate(batch):
                n = len(item[key])
                assert out[key][row, n:].eq(end).all() and not out[f"{key}_mask"][row, n:].any()


@pytest.mark.parametrize("allowed", [None, "8"])
def test_a_context_too_short_for_every_pair_is_one_line_naming_what_to_change(
        allowed, tmp_path, capsys):
    # A model whose context every prompt fills leaves no response token to score: said before
    # torch's sampler refuses an empty dataset ("num_samples=0").
    from gpt_components.cli import main

    cfg = GPTConfig(context_length=16, emb_dim=8, n_heads=2, n_layers=1, drop_rate=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(GPTModel(cfg), tmp_path / "short")
    extra = [] if allowed is None else ["--allowed-max-length", allowed]
    assert main(["finetune-dpo", "--weights", str(tmp_path / "short"), "--limit", "4",
                 "--batch-size", "2", "--out", str(tmp_path / "o"), "--no-progress",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "num_samples" not in err
    assert f"every training pair's prompt fills the {allowed or 16} tokens allowed" in err
    assert "--allowed-max-length" in err
