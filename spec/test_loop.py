"""Spec of the finetuning loop shared by chapters 6 and 7."""

from __future__ import annotations

import copy
import signal

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from gpt_components.finetune.loop import finetune_loop
from gpt_components.training import TrainingDivergedError, TrainingInterrupted
from spec.strategies import generator, seeds

pytestmark = [pytest.mark.ch06, pytest.mark.ch07]


def regression_batches(seed: int, num_batches: int, batch_size: int, width: int):
    g = generator(seed)
    return [(torch.randn(batch_size, width, generator=g, dtype=torch.float64),
             torch.randn(batch_size, 1, generator=g, dtype=torch.float64))
            for _ in range(num_batches)]


def mse(model, batch, device):
    inputs, targets = batch
    return ((model(inputs.to(device)) - targets.to(device)) ** 2).mean()


def linear_model(seed: int, width: int) -> nn.Module:
    model = nn.Linear(width, 1, dtype=torch.float64)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


plans = st.fixed_dictionaries({
    "seed": seeds,
    "num_batches": st.integers(1, 5),
    "batch_size": st.integers(1, 4),
    "width": st.integers(1, 4),
    "num_epochs": st.integers(1, 3),
    "eval_freq": st.integers(1, 6),
    "lr": st.floats(1e-3, 0.2),
    "grad_clip": st.none() | st.floats(0.1, 5.0),
})


@given(plan=plans)
def test_the_loop_takes_the_steps_a_hand_written_loop_takes(plan):
    batches = regression_batches(plan["seed"], plan["num_batches"], plan["batch_size"],
                                 plan["width"])
    model = linear_model(plan["seed"] + 1, plan["width"])
    reference = copy.deepcopy(model)
    evaluations = []
    records = finetune_loop(
        model, batches, torch.optim.SGD(model.parameters(), lr=plan["lr"]), loss_fn=mse,
        count=lambda batch: len(batch[0]), evaluate=lambda: evaluations.append(1) or {"ev": 1.0},
        num_epochs=plan["num_epochs"], eval_freq=plan["eval_freq"], grad_clip=plan["grad_clip"])
    # The reference: plain SGD, clipping spelled out.
    losses = []
    for _ in range(plan["num_epochs"]):
        for batch in batches:
            reference.zero_grad()
            loss = mse(reference, batch, "cpu")
            loss.backward()
            grads = [p.grad for p in reference.parameters()]
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            clip = plan["grad_clip"]
            scale = 1.0 if clip is None else min(1.0, clip / (norm + 1e-6))
            with torch.no_grad():
                for p in reference.parameters():
                    p -= plan["lr"] * scale * p.grad
            losses.append(loss.item())
    for got, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert [r["loss"] for r in records] == pytest.approx(losses, rel=1e-9, abs=1e-12)
    # One record per step, the running count, and evaluations where they belong.
    per_epoch = plan["num_batches"]
    assert [r["step"] for r in records] == list(range(1, plan["num_epochs"] * per_epoch + 1))
    assert [r["epoch"] for r in records] == [1 + i // per_epoch for i in range(len(records))]
    assert [r["examples_seen"] for r in records] == [
        (i + 1) * plan["batch_size"] for i in range(len(records))]
    evaluated = [r["step"] for r in records if "ev" in r]
    assert evaluated == [s for s in range(1, len(records) + 1)
                         if s % plan["eval_freq"] == 0 or s % per_epoch == 0]
    assert len(evaluations) == len(evaluated)


@given(seed=seeds, counted=st.sampled_from(["examples_seen", "tokens_seen"]))
def test_the_same_seed_gives_the_same_dropout_and_leaves_the_global_rng_alone(seed, counted):
    batches = regression_batches(seed, 3, 4, 3)

    def run():
        model = nn.Sequential(nn.Dropout(0.5), linear_model(seed + 1, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        before = torch.random.get_rng_state()
        records = finetune_loop(model, batches, optimizer, loss_fn=mse,
                                count=lambda batch: batch[0].numel(), evaluate=dict,
                                eval_freq=2, seed=seed, counted=counted)
        assert torch.equal(torch.random.get_rng_state(), before)
        return records

    first = run()
    assert first == run()
    assert all(counted in r for r in first)


def test_the_model_is_evaluated_in_eval_mode_and_trained_in_train_mode():
    model = linear_model(0, 2)
    modes = []

    def loss_fn(model, batch, device):
        modes.append(("step", model.training))
        return mse(model, batch, device)

    finetune_loop(model, regression_batches(0, 2, 2, 2), torch.optim.SGD(model.parameters(), 0.1),
                  loss_fn=loss_fn, count=len,
                  evaluate=lambda: modes.append(("eval", model.training)) or {}, eval_freq=1)
    assert modes == [("step", True), ("eval", False)] * 2


def test_bad_arguments_and_a_diverging_loss_are_refused_clearly():
    model = linear_model(0, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = regression_batches(0, 2, 2, 2)
    common = {"loss_fn": mse, "count": len, "evaluate": dict}
    for name in ("num_epochs", "eval_freq"):
        for bad, kind in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
            with pytest.raises(kind, match=rf"^{name} must be an int >= 1, got {bad!r}$"):
                finetune_loop(model, batches, optimizer, **common, **{name: bad})
    before = [p.detach().clone() for p in model.parameters()]
    for bad, kind in ((0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                      ("1", TypeError), (True, TypeError)):
        with pytest.raises(kind, match=r"^grad_clip must be a float > 0 or None") as caught:
            finetune_loop(model, batches, optimizer, **common, grad_clip=bad)
        assert caught.value.parameter == "grad_clip"
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    with pytest.raises(TypeError, match=r"^train_loader must be re-iterable.*generator"):
        finetune_loop(model, (b for b in batches), optimizer, **common)
    with pytest.raises(TrainingDivergedError, match=r"at step 2\b"):
        finetune_loop(model, batches, optimizer, count=len, evaluate=dict, eval_freq=5,
                      loss_fn=lambda m, b, d: mse(m, b, d) * (float("nan") if
                                                              b is batches[1] else 1.0))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_finishes_the_step_and_hands_back_the_records_so_far(sig):
    previous = signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                             else signal.SIG_DFL)
    try:
        model = linear_model(0, 2)
        batches = regression_batches(0, 5, 2, 2)

        def on_record(record: dict) -> None:
            if record["step"] == 2:
                signal.raise_signal(sig)

        with pytest.raises(TrainingInterrupted) as stopped:
            finetune_loop(model, batches, torch.optim.SGD(model.parameters(), lr=0.1),
                          loss_fn=mse, count=len, evaluate=dict, num_epochs=3,
                          on_record=on_record)
        assert (stopped.value.step, stopped.value.signal) == (2, sig.name)
        assert [r["step"] for r in stopped.value.records] == [1, 2]
        assert stopped.value.checkpoint is None  # the caller saves the model
    finally:
        signal.signal(sig, previous)
