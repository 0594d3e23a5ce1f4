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

from ..training import train_step

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
    ``TrainingDivergedError`` naming the step.
    """
    check_counts(num_epochs=num_epochs, eval_freq=eval_freq)
    if not hasattr(train_loader, "__len__"):
        raise TypeError(f"train_loader must be re-iterable with a length (a DataLoader or a "
                        f"list of batches), got {type(train_loader).__name__}")
    records: list[dict] = []
    step, seen = 0, 0
    with torch.random.fork_rng(devices=[]):
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
    return records


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    """``TypeError`` unless ``value`` is an int (not a bool), ``ValueError`` outside the range."""
    allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int {allowed}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an int {allowed}, got {value!r}")


def check_counts(**counts: object) -> None:
    """Raise a ``ValueError`` naming the first of ``counts`` that is not an int >= 1."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
