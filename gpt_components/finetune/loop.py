"""The finetuning loop (chapters 6 and 7), shared by the classifier and the instruction model.

Both chapters train the same way: epochs over a loader, one optimizer step per batch (the
training module's ``train_step``, with the task's own loss), a record per step and an evaluation
every ``eval_freq`` steps and at each epoch's end. Only the loss, what is counted and what is
evaluated differ, and the caller passes those in; the loop knows nothing about GPT.

>>> import torch
>>> from torch import nn
>>> model = nn.Linear(2, 1)
>>> batches = [(torch.ones(4, 2), torch.zeros(4, 1))] * 3
>>> def mse(model, batch, device):
...     x, y = batch
...     return ((model(x) - y) ** 2).mean()
>>> records = finetune_loop(model, batches, torch.optim.SGD(model.parameters(), lr=0.1),
...                         loss_fn=mse, count=lambda batch: len(batch[0]),
...                         evaluate=lambda: {"val_loss": 0.0}, eval_freq=2, seed=0)
>>> [(r["step"], r["examples_seen"], "val_loss" in r) for r in records]
[(1, 4, False), (2, 8, True), (3, 12, True)]
>>> records[2]["loss"] < records[0]["loss"]
True
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import torch
from torch import nn

from ..machinery import checks
from ..machinery.checks import type_error
from ..training import TrainingInterrupted, check_grad_clip, stop_on_signals, train_step

__all__ = ["finetune_loop"]


def finetune_loop(
    model: nn.Module,
    train_loader: Collection[Any],
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable[[nn.Module, Any, torch.device], torch.Tensor] | None = None,
    count: Callable[[Any], int],
    evaluate: Callable[[], dict[str, float]],
    device: str | torch.device = "cpu",
    num_epochs: int = 1,
    eval_freq: int = 50,
    grad_clip: float | None = None,
    seed: int | None = None,
    counted: str = "examples_seen",
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` for ``num_epochs`` over ``train_loader``; one record per step.

    A record holds ``epoch``, ``step``, ``counted`` (the running total of ``count(batch)``) and
    ``loss``; every ``eval_freq`` steps and at the end of each epoch it also holds what
    ``evaluate()`` returns (called with the model in eval mode). With ``seed``, dropout draws
    from torch's generator seeded with it, and the global state is restored afterwards.
    ``loss_fn(model, batch, device)`` is the task's loss; without it a batch is an ``(inputs,
    targets)`` pair for next-token cross-entropy. A non-finite loss raises
    ``TrainingDivergedError`` naming the step. Ctrl-C or SIGTERM (main thread) finishes the step
    in progress and raises ``TrainingInterrupted`` holding the records so far, for the caller to
    save with the model as it stands.
    """
    checks.check_int("num_epochs", num_epochs, low=1)
    checks.check_int("eval_freq", eval_freq, low=1)
    check_grad_clip(grad_clip)
    if not hasattr(train_loader, "__len__"):
        raise type_error("train_loader", f"train_loader must be re-iterable with a length (a "
                                         f"DataLoader or a list of batches), got "
                                         f"{type(train_loader).__name__}")
    records: list[dict] = []
    step, seen = 0, 0
    with torch.random.fork_rng(devices=[]), stop_on_signals() as stopping:
        if seed is not None:
            torch.manual_seed(seed)
        for epoch in range(num_epochs):
            for i, batch in enumerate(train_loader):
                model.train()
                loss, _ = train_step(model, optimizer, [batch], device, grad_clip=grad_clip,
                                     step=step + 1, loss_fn=loss_fn)
                step += 1
                seen += count(batch)
                record = {"epoch": epoch + 1, "step": step, counted: seen, "loss": loss}
                if step % eval_freq == 0 or i == len(train_loader) - 1:
                    model.eval()
                    record |= evaluate()
                    model.train()
                records.append(record)
                if on_record is not None:
                    on_record(record)
                if stopping() is not None:
                    raise TrainingInterrupted(step, None, stopping(), records)
    return records
