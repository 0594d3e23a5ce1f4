"""Spec of chapter 5's loop as the book prints it: ``train_model_simple`` and its helpers."""

import contextlib
import io
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpt_components.finetune.instructions import (
    InstructionDataset,
    format_input,
    instruction_collate,
    load_instruction_data,
)
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.simple_loop import evaluate_model, train_model_simple
from gpt_components.tokenizers import gpt2_tokenizer
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch05


class ByteTokenizer:
    """Text as its UTF-8 bytes: a 256-token vocabulary keeps the model tiny."""

    def encode(self, text, allowed_special=()):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


def tiny_run(seed, n_batches):
    cfg = GPTConfig(vocab_size=256, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                    drop_rate=0.0)
    model = GPTModel(cfg)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ids = torch.randint(0, 256, (n_batches, 2, 9), generator=g)
    return model, [(row[:, :-1], row[:, 1:]) for row in ids]


def mean_loss(model, batches):
    with torch.no_grad():
        return sum(torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                   for x, y in batches) / len(batches)


@settings(max_examples=3)
@given(seed=seeds, n_batches=st.integers(1, 3), n_epochs=st.integers(1, 2),
       eval_freq=st.integers(1, 3), eval_iter=st.integers(1, 3))
def test_train_model_simple_steps_at_the_optimizers_rate_and_evaluates_from_step_zero(
        seed, n_batches, n_epochs, eval_freq, eval_iter):
    model, batches = tiny_run(seed, n_batches)
    reference, _ = tiny_run(seed, n_batches)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1)
    # The book's steps, written out: no schedule, no clipping, evaluation after the step.
    expected_train, expected_val, step = [], [], -1
    for _ in range(n_epochs):
        for inputs, targets in batches:
            ref_optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(reference(inputs).flatten(0, 1),
                                                     targets.flatten())
            loss.backward()
            ref_optimizer.step()
            step += 1
            if step % eval_freq == 0:
                expected_train.append(mean_loss(reference, batches[:eval_iter]))
                expected_val.append(mean_loss(reference, batches[:1]))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_losses, val_losses, seen = train_model_simple(
            model, batches, batches[:1], torch.optim.AdamW(model.parameters(), lr=1e-2,
                                                           weight_decay=0.1),
            "cpu", num_epochs=n_epochs, eval_freq=eval_freq, eval_iter=eval_iter,
            start_context="Every effort moves you", tokenizer=ByteTokenizer())
    for got, want in zip(model.state_dict().values(), reference.state_dict().values(),
                         strict=True):
        assert torch.equal(got, want)
    assert train_losses == pytest.approx(expected_train, rel=1e-6)
    assert val_losses == pytest.approx(expected_val, rel=1e-6)
    evaluated = [s for s in range(n_batches * n_epochs) if s % eval_freq == 0]
    assert seen == [(s + 1) * 16 for s in evaluated]  # 2 x 8 tokens a step
    lines = printed.getvalue().split("\n")
    assert [line.split(":")[0] for line in lines if line.startswith("Ep ")] == [
        f"Ep {s // n_batches + 1} (Step {s:06d})" for s in evaluated]
    assert sum(line.startswith("Every effort moves you") for line in lines) == n_epochs


@pytest.mark.ch07
def test_the_books_chapter_7_test_run_gives_its_first_losses_and_sample():
    # The book's own chapter-7 package test: the first 15 training and validation instructions
    # (85/10/5 split), a 12-wide one-layer GPT seeded with 123, AdamW 5e-5, 10 epochs of one
    # batch, evaluated at steps 0 and 5. It asserts 10.9 for both first losses. The values to 4
    # places are what the book's package (llms-from-scratch 1.0.19) gives on this data: 10.9456
    # and 10.9254 at step 0, then 10.9208 and 10.9225 at step 5 (3,352 tokens seen). The first
    # epoch (one step, the first evaluation and sample) is the cheap part of that run.
    data = load_instruction_data()
    train_data = data[:int(len(data) * 0.85)][:15]
    val_data = data[int(len(data) * 0.85) + int(len(data) * 0.1):][:15]
    tokenizer = gpt2_tokenizer()
    collate = partial(instruction_collate, device="cpu", allowed_max_length=100)
    torch.manual_seed(123)
    train_loader = DataLoader(InstructionDataset(train_data, tokenizer), batch_size=8,
                              collate_fn=collate, shuffle=True, drop_last=True)
    val_loader = DataLoader(InstructionDataset(val_data, tokenizer), batch_size=8,
                            collate_fn=collate)
    model = GPTModel({"vocab_size": 50257, "context_length": 120, "drop_rate": 0.0,
                      "qkv_bias": False, "emb_dim": 12, "n_layers": 1, "n_heads": 2}).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    torch.manual_seed(123)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_losses, val_losses, seen = train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=1, eval_freq=5,
            eval_iter=5, start_context=format_input(val_data[0]), tokenizer=tokenizer)
    assert round(train_losses[0], 1) == round(val_losses[0], 1) == 10.9
    assert [round(x, 4) for x in train_losses + val_losses] == [10.9456, 10.9254]
    assert seen == [496]
    first, sample = printed.getvalue().split("\n")[:2]
    assert first == "Ep 1 (Step 000000): Train loss 10.946, Val loss 10.925"
    assert sample.endswith("every day.' shoe Sheriff Krishna Eid nu Pick unle ACL battles"
                           "Departmentcoord dismissinglex Haiti SHALL Su differentlyutils "
                           "economist commodities antibioticsSeveralemale interpretationendif "
                           "ALL THIS McK Coc headphone indiscyond Pistlined sympathetic "
                           "swingsPull CENT guiActiveUn swingsuna racked knack escorted Roz "
                           "ConwayMahBatmanWheel dotted")


def test_evaluate_model_is_the_books_name_for_evaluate_and_leaves_the_mode():
    model, batches = tiny_run(0, 2)
    model.train()
    train_loss, val_loss = evaluate_model(model, batches, batches[1:], "cpu", eval_iter=1)
    assert model.training
    assert train_loss == pytest.approx(mean_loss(model, batches[:1]), rel=1e-6)
    assert val_loss == pytest.approx(mean_loss(model, batches[1:]), rel=1e-6)


def test_bad_loop_counts_name_the_parameter():
    model, batches = tiny_run(0, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    for name in ("num_epochs", "eval_freq", "eval_iter"):
        kwargs = {"num_epochs": 1, "eval_freq": 1, "eval_iter": 1, name: 0}
        with pytest.raises(ValueError, match=rf"^{name} must be an int >= 1, got 0$"):
            train_model_simple(model, batches, batches, optimizer, "cpu",
                               start_context="Hi", tokenizer=ByteTokenizer(), **kwargs)
