"""Instruction finetuning (chapter 7): Alpaca prompts, shifted targets, masks on the prompt."""

from __future__ import annotations

import json
from collections import Counter
from functools import partial

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpt_components.finetune.instructions import (
    InstructionDataset,
    InstructionExample,
    extract_response,
    format_input,
    format_response,
    generate_responses,
    instruction_collate,
    instruction_loss,
    instruction_splits,
    load_instruction_data,
    train_instructions,
    write_responses,
)
from gpt_components.generation import generate_text_simple
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.tokenizers import gpt2_tokenizer
from gpt_components.training import calc_loss_loader
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch07

EOT, IGNORE = 50256, -100

token_lists = st.lists(st.integers(0, EOT), min_size=1, max_size=12)
examples = token_lists.flatmap(
    lambda ids: st.integers(0, len(ids)).map(lambda p: InstructionExample(ids, p))
)
limits = st.none() | st.integers(1, 14)


def _expected_row(ids: list[int], width: int) -> tuple[list[int], list[int]]:
    """The book's rule, written out: pad, shift, keep the first end-of-text, ignore the rest."""
    padded = ids + [EOT] * (width + 1 - len(ids))
    inputs, targets = padded[:-1], padded[1:]
    targets = targets[: len(ids)] + [IGNORE] * (width - len(ids))
    return inputs, targets


@given(st.lists(token_lists, min_size=1, max_size=5), limits)
def test_targets_are_inputs_shifted_by_one_with_only_later_padding_ignored(batch, limit):
    inputs, targets = instruction_collate(batch, allowed_max_length=limit)
    width = max(map(len, batch))
    for row, ids in enumerate(batch):
        expected_inputs, expected_targets = _expected_row(ids, width)
        assert inputs[row].tolist() == expected_inputs[:limit]
        assert targets[row].tolist() == expected_targets[:limit]


@given(st.lists(token_lists, min_size=1, max_size=5), limits)
def test_lengths_never_exceed_allowed_max_length(batch, limit):
    inputs, targets = instruction_collate(batch, allowed_max_length=limit)
    width = max(map(len, batch))
    assert inputs.shape == targets.shape == (len(batch), width if limit is None else
                                             min(width, limit))
    assert inputs.dtype == targets.dtype == torch.long


@given(st.lists(examples, min_size=1, max_size=5), limits)
def test_with_prompt_masking_no_prompt_token_is_a_target(batch, limit):
    masked_inputs, masked = instruction_collate(batch, allowed_max_length=limit, mask_prompt=True)
    inputs, plain = instruction_collate(batch, allowed_max_length=limit)
    assert torch.equal(masked_inputs, inputs)
    for row, (_ids, prompt_length) in enumerate(batch):
        for j, target in enumerate(masked[row].tolist()):
            predicts_prompt_token = j + 1 < prompt_length
            assert target == (IGNORE if predicts_prompt_token else plain[row, j].item())


small_examples = st.lists(st.integers(0, 63), min_size=1, max_size=12).flatmap(
    lambda ids: st.integers(0, len(ids)).map(lambda p: InstructionExample(ids, p))
)


@given(st.lists(small_examples, min_size=1, max_size=4), seeds)
def test_loss_counts_only_targets_that_are_not_ignored(batch, seed):
    model = _tiny_gpt(seed, vocab_size=64)  # a 64-token vocabulary, 63 standing for end-of-text
    inputs, targets = instruction_collate(batch, pad_token_id=63, mask_prompt=True)
    kept = targets != IGNORE
    if not kept.any():
        return
    logits = model(inputs).double()
    log_probs = logits.log_softmax(-1)
    expected = -log_probs[kept].gather(1, targets[kept].unsqueeze(1)).mean()
    torch.testing.assert_close(instruction_loss(model, inputs, targets).double(), expected,
                               rtol=1e-5, atol=1e-6)


entries = st.fixed_dictionaries(
    {"instruction": st.text(min_size=1, max_size=20), "input": st.text(max_size=20),
     "output": st.text(max_size=20)}
)


@given(entries)
def test_format_input_renders_the_alpaca_prompt(entry):
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        f"completes the request.\n\n### Instruction:\n{entry['instruction']}"
    )
    if entry["input"]:
        expected += f"\n\n### Input:\n{entry['input']}"
    assert format_input(entry) == expected
    assert format_response(entry) == f"\n\n### Response:\n{entry['output']}"


@given(st.lists(entries, min_size=1, max_size=4))
def test_dataset_tokens_spell_the_prompt_then_the_response(data):
    tok = gpt2_tokenizer()
    for entry, (ids, prompt_length) in zip(data, InstructionDataset(data), strict=True):
        assert tok.decode(ids[:prompt_length]) == format_input(entry)
        assert tok.decode(ids) == format_input(entry) + format_response(entry)


@given(st.lists(st.integers(), min_size=1, max_size=50, unique=True), seeds)
def test_splits_are_disjoint_and_cover_the_data_85_5_10(ids, seed):
    data = [{"instruction": str(i), "input": "", "output": ""} for i in ids]
    train, validation, test = instruction_splits(data, seed=seed)
    n = len(data)
    assert (len(train), len(validation)) == (int(0.85 * n), int(0.05 * n))
    as_keys = [r["instruction"] for r in train + validation + test]
    assert Counter(as_keys) == Counter(str(i) for i in ids)


def test_bundled_data_splits_into_935_55_110():
    data = load_instruction_data()
    assert len(data) == 1100
    assert [len(part) for part in instruction_splits(data)] == [935, 55, 110]


@given(st.text(max_size=30), st.text(max_size=30))
def test_extract_response_returns_what_follows_the_response_marker(prompt, answer):
    generated = f"{prompt}\n\n### Response:\n{answer}<|endoftext|>"
    assert extract_response(generated, prompt) == answer.replace("<|endoftext|>", "").strip()


def test_bad_instruction_files_and_records_are_rejected(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="no records"):
        load_instruction_data(path)
    path.write_text('[{"instruction": "Say hi"}]', encoding="utf-8")
    with pytest.raises(ValueError, match="no 'output' field"):
        load_instruction_data(path)
    path.write_text('[{"output": "hi"}]', encoding="utf-8")
    with pytest.raises(ValueError, match="no 'instruction' field"):
        load_instruction_data(path)
    path.write_text('{"instruction": "x", "output": "y"}', encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list"):
        load_instruction_data(path)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_instruction_data(path)
    with pytest.raises(FileNotFoundError, match="path"):
        load_instruction_data(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="'output'"):
        format_input({"instruction": "x"})
    with pytest.raises(TypeError, match="instruction"):
        InstructionDataset([{"instruction": 3, "output": "y"}])


def test_bad_collate_arguments_name_themselves():
    with pytest.raises(ValueError, match="batch"):
        instruction_collate([])
    with pytest.raises(ValueError, match="allowed_max_length"):
        instruction_collate([[1, 2]], allowed_max_length=0)
    with pytest.raises(TypeError, match="mask_prompt"):
        instruction_collate([[1, 2]], mask_prompt=True)
    with pytest.raises(ValueError, match="prompt_length"):
        instruction_collate([InstructionExample([1, 2], 3)])


def _tiny_gpt(seed: int, vocab_size: int = EOT + 1, context_length: int = 96) -> GPTModel:
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=8,
                    n_heads=2, n_layers=2, drop_rate=0.0)
    with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG: isolate it
        model = GPTModel(cfg)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def _short_records(n: int) -> list[dict[str, str]]:
    data = sorted(load_instruction_data(), key=lambda e: len(format_input(e) + e["output"]))
    return data[:n]


def test_training_steps_lower_the_loss_on_a_tiny_model():
    data = InstructionDataset(_short_records(4))
    collate = partial(instruction_collate, allowed_max_length=64, mask_prompt=True)
    loader = DataLoader(data, batch_size=2, shuffle=True, collate_fn=collate,
                        generator=generator(0))
    everything = DataLoader(data, batch_size=len(data), collate_fn=collate)
    model = _tiny_gpt(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = calc_loss_loader(everything, model, "cpu")
    records = train_instructions(model, loader, everything, optimizer, num_epochs=3,
                                 eval_freq=2, eval_iter=1, seed=0)
    after = calc_loss_loader(everything, model, "cpu")
    assert after < before
    assert [r["step"] for r in records] == list(range(1, 7))
    assert "val_loss" in records[-1]


def test_responses_are_the_greedy_continuation_after_the_prompt(tmp_path):
    tok = gpt2_tokenizer()
    model = _tiny_gpt(2).eval()
    data = _short_records(3)
    results = generate_responses(model, data, tok, max_new_tokens=4)
    for entry, result in zip(data, results, strict=True):
        assert {k: result[k] for k in entry} == entry
        ids = torch.tensor([tok.encode(format_input(entry))])
        new = generate_text_simple(model, ids, 4, context_size=96)[0, ids.shape[1]:].tolist()
        new = new[: new.index(EOT)] if EOT in new else new
        assert result["model_response"] == extract_response(tok.decode(new))
    write_responses(tmp_path / "responses.json", results)
    assert json.loads((tmp_path / "responses.json").read_text(encoding="utf-8")) == results


def test_finetune_instructions_and_responses_commands_run_end_to_end(tmp_path, capsys):
    import argparse

    from gpt_components.finetune.commands import add_commands

    parser = argparse.ArgumentParser(prog="gpt-components")
    add_commands(parser.add_subparsers(dest="command", required=True))
    data = tmp_path / "data.json"
    data.write_text(json.dumps(_short_records(20)), encoding="utf-8")
    out = tmp_path / "assistant"
    args = parser.parse_args(["finetune-instructions", "--data", str(data), "--preset",
                              "gpt-nano", "--epochs", "1", "--batch-size", "4",
                              "--mask-prompt", "--out", str(out), "--device", "cpu"])
    args.run(args)
    assert "RANDOM weights" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "metrics.jsonl"} <= {p.name for p in
                                                                      out.iterdir()}
    args = parser.parse_args(["instruction-responses", "--model", str(out), "--data", str(data),
                              "--max-new-tokens", "2", "--limit", "2"])
    args.run(args)
    written = json.loads((out / "test-responses.json").read_text(encoding="utf-8"))
    test = instruction_splits(load_instruction_data(data), seed=123).test[:2]
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in written] == test
    assert all(isinstance(r["model_response"], str) for r in written)


def test_finetune_instructions_command_rejects_an_empty_file(tmp_path):
    import argparse

    from gpt_components.finetune.commands import add_commands

    parser = argparse.ArgumentParser(prog="gpt-components")
    add_commands(parser.add_subparsers(dest="command", required=True))
    (tmp_path / "empty.json").write_text("[]", encoding="utf-8")
    args = parser.parse_args(["finetune-instructions", "--data", str(tmp_path / "empty.json"),
                              "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="no records"):
        args.run(args)
