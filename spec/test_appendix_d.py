"""Spec of appendix D as the book writes it: its schedule, its loop, its late clipping."""

import contextlib
import io
import math
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.appendix_d import appendix_d_lr, train_model
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.simple_loop import generate_and_print_sample
from gpt_components.tokenizers import gpt2_tokenizer
from spec.strategies import generator, seeds

pytestmark = pytest.mark.appendix_d

rates = st.floats(1e-6, 1e-2)


def test_the_books_rates_for_six_steps_warm_up_one_initial_and_min_1e5_peak_1e3():
    # The book's own appendix-D test run (6 steps, warm-up 1, initial = min = 1e-5, peak 1e-3).
    book = [1e-05, 0.001, 0.000905463, 0.000657963, 0.000352037, 0.000104537]
    got = [appendix_d_lr(s, peak_lr=1e-3, total_steps=6, warmup_steps=1, initial_lr=1e-5,
                         min_lr=1e-5) for s in range(6)]
    assert [round(r, 9) for r in got] == book


@given(warmup=st.integers(0, 20), decay=st.integers(1, 50), initial=rates, peak=rates,
       low=rates)
def test_warm_up_climbs_in_equal_steps_from_initial_then_the_cosine_falls_toward_min(
        warmup, decay, initial, peak, low):
    total = warmup + decay
    lr = [appendix_d_lr(s, peak_lr=peak, total_steps=total, warmup_steps=warmup,
                        initial_lr=initial, min_lr=low) for s in range(total)]
    if warmup:
        assert lr[0] == initial
        steps = [b - a for a, b in zip(lr[:warmup], lr[1:warmup + 1], strict=True)]
        for step in steps:
            assert math.isclose(step, (peak - initial) / warmup, rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(lr[warmup], peak, rel_tol=1e-12)  # the peak, on step warmup_steps
    # After the warm-up: half a cosine from peak to min over total - warmup steps, the last one
    # short of its end (progress (total - 1 - warmup) / (total - warmup) < 1).
    for s in range(warmup, total):
        progress = (s - warmup) / decay
        expected = low + (peak - low) * (1 + math.cos(math.pi * progress)) / 2
        assert math.isclose(lr[s], expected, rel_tol=1e-12)
    decaying = lr[warmup:]
    sign = 1 if peak >= low else -1
    assert all(sign * (a - b) >= -1e-18 for a, b in zip(decaying, decaying[1:], strict=False))


class ByteTokenizer:
    """Text as its UTF-8 bytes: a 256-token vocabulary keeps the model tiny."""

    def encode(self, text, allowed_special=()):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


def tiny_run(seed, n_batches):
    """A small byte-vocabulary model and a list of (inputs, targets) batches."""
    cfg = GPTConfig(vocab_size=256, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                    drop_rate=0.0)
    model = GPTModel(cfg)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    ids = torch.randint(0, 256, (n_batches, 2, 9), generator=g)
    return model, [(row[:, :-1], row[:, 1:]) for row in ids]


def books_loop(model, batches, optimizer, n_epochs, warmup, initial, low):
    """Appendix D's steps, written out here as the reference: (losses, rates, clipped steps)."""
    peak = optimizer.param_groups[0]["lr"]
    total = len(batches) * n_epochs
    losses, rates_seen, clipped, step = [], [], [], -1
    for _ in range(n_epochs):
        for inputs, targets in batches:
            optimizer.zero_grad()
            step += 1
            if step < warmup:
                lr = initial + step * (peak - initial) / warmup
            else:
                lr = low + (peak - low) * 0.5 * (
                    1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            rates_seen.append(lr)
            logits = model(inputs)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            loss.backward()
            if step >= warmup:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
                clipped.append(step)
            optimizer.step()
            losses.append(loss.item())
    return losses, rates_seen, clipped


@settings(max_examples=3)
@given(seed=seeds, n_batches=st.integers(1, 3), n_epochs=st.integers(1, 2),
       warmup=st.integers(0, 3), eval_freq=st.integers(1, 4))
def test_train_model_takes_the_books_steps_and_clips_only_after_the_warm_up(
        seed, n_batches, n_epochs, warmup, eval_freq):
    total = n_batches * n_epochs
    warmup = min(warmup, total - 1)
    model, batches = tiny_run(seed, n_batches)
    reference, _ = tiny_run(seed, n_batches)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    expected_losses, expected_rates, expected_clips = books_loop(
        reference, batches, torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.1),
        n_epochs, warmup, 1e-4, 1e-5)
    clips = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def counting_clip(*args, **kwargs):
        clips.append(kwargs.get("max_norm"))
        return real_clip(*args, **kwargs)

    printed = io.StringIO()
    with mock.patch.object(torch.nn.utils, "clip_grad_norm_", counting_clip), \
            contextlib.redirect_stdout(printed):
        train_losses, val_losses, seen, lrs = train_model(
            model, batches, batches[:1], optimizer, "cpu", n_epochs=n_epochs,
            eval_freq=eval_freq, eval_iter=1, start_context="Every effort moves you",
            tokenizer=ByteTokenizer(), warmup_steps=warmup, initial_lr=1e-4, min_lr=1e-5)
    assert lrs == expected_rates
    assert clips == [1.0] * len(expected_clips)
    for got, want in zip(model.state_dict().values(), reference.state_dict().values(),
                         strict=True):
        assert torch.equal(got, want)
    evaluated = [s for s in range(total) if s % eval_freq == 0]
    assert seen == [(s + 1) * 16 for s in evaluated]  # 2 x 8 tokens a step
    assert len(train_losses) == len(val_losses) == len(evaluated)
    lines = printed.getvalue().split("\n")
    progress = [line for line in lines if line.startswith("Ep ")]
    assert [line.split(":")[0] for line in progress] == [
        f"Ep {s // n_batches + 1} (Iter {s:06d})" for s in evaluated]
    assert all(", Val loss " in line for line in progress)
    assert sum(line.startswith("Every effort moves you") for line in lines) == n_epochs


def test_the_sample_is_fifty_greedy_tokens_on_one_line(capsys):
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=8, emb_dim=8, n_heads=2,
                               n_layers=1))
    model.train()
    generate_and_print_sample(model, gpt2_tokenizer(), "cpu", "Every effort moves you")
    line, end = capsys.readouterr().out.split("\n")
    assert line.startswith("Every effort moves you") and end == "" and model.training
    assert len(gpt2_tokenizer().encode(line, allowed_special="all")) >= 50


def test_bad_schedule_arguments_name_the_parameter():
    kwargs = {"peak_lr": 1e-3, "total_steps": 6, "warmup_steps": 1}
    with pytest.raises(ValueError, match=r"^global_step must be an int >= 0, got -1$"):
        appendix_d_lr(-1, **kwargs)
    with pytest.raises(TypeError, match=r"^warmup_steps must be an int >= 0, got 1.5$"):
        appendix_d_lr(0, peak_lr=1e-3, total_steps=6, warmup_steps=1.5)
    with pytest.raises(ValueError, match=r"^peak_lr must be a float >= 0 \(finite\), got nan$"):
        appendix_d_lr(0, peak_lr=float("nan"), total_steps=6, warmup_steps=1)
    with pytest.raises(ValueError, match=r"^total_steps must exceed warmup_steps=6"):
        appendix_d_lr(6, peak_lr=1e-3, total_steps=6, warmup_steps=6)
    model, batches = tiny_run(0, 1)
    with pytest.raises(ValueError, match=r"^eval_freq must be an int >= 1, got 0$"):
        train_model(model, batches, batches, torch.optim.AdamW(model.parameters()), "cpu",
                    n_epochs=1, eval_freq=0, eval_iter=1, start_context="Hi",
                    tokenizer=ByteTokenizer(), warmup_steps=0)
