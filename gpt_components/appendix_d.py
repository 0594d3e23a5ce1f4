"""Appendix D as the book writes it: warm-up from ``initial_lr``, cosine decay, late clipping.

Exports ``appendix_d_lr`` (the rate the book's loop sets at ``global_step``) and ``train_model``
(the book's loop, same arguments, same returns, same printed lines: chapter 5's
``train_model_simple`` with the schedule and the clipping added). A reader following appendix D
with a seed gets the book's rates, losses and samples: the book's own appendix-D test (GPT-2
small's shape at context 256, the-verdict, seed 123, 6 steps) gives a first train loss of
10.871 and validation loss of 10.959 (the book's 10.9 and 11.0) both there and here.

The book's schedule: the peak rate is the optimizer's ``lr``; step ``s < warmup_steps`` runs at
``initial_lr + s * (peak - initial_lr) / warmup_steps``; from ``warmup_steps`` on,
``min_lr + (peak - min_lr) * 0.5 * (1 + cos(pi * progress))`` with ``progress = (s -
warmup_steps) / (total_steps - warmup_steps)``. Gradients are clipped to norm 1 only from
``s >= warmup_steps`` (the printed book has ``>``, a known erratum the book's code fixed).

``train`` (``gpt_components.training``) keeps its own schedule, ``lr_at``, for three reasons.
Its first step already trains at the first warm-up rate instead of ``initial_lr`` (3e-5 by
default, a step that barely moves the weights), its warm-up reaches the peak in exactly
``warmup_steps`` steps, and its last step lands on ``min_lr``: the book's cosine stops one step
short (for 6 steps, warm-up 1, peak 1e-3, min 1e-5 it ends at 1.05e-4, ten times ``min_lr``).
And ``train`` clips from the first step, when a freshly initialised model's gradients are at
their largest, instead of leaving the warm-up steps unclipped.

>>> rates = [appendix_d_lr(s, peak_lr=1e-3, total_steps=6, warmup_steps=1, initial_lr=1e-5,
...                        min_lr=1e-5) for s in range(6)]
>>> [round(r, 9) for r in rates]
[1e-05, 0.001, 0.000905463, 0.000657963, 0.000352037, 0.000104537]
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .machinery.checks import check_float, check_int, value_error
from .simple_loop import book_loop, check_loop_counts

__all__ = ["appendix_d_lr", "train_model"]


def appendix_d_lr(global_step: int, *, peak_lr: float, total_steps: int, warmup_steps: int,
                  initial_lr: float = 3e-05, min_lr: float = 1e-6) -> float:
    """The learning rate appendix D's ``train_model`` sets at step ``global_step`` (0-based)."""
    for name, value, low in (("global_step", global_step, 0), ("total_steps", total_steps, 1),
                             ("warmup_steps", warmup_steps, 0)):
        check_int(name, value, low=low)
    for name, value in (("peak_lr", peak_lr), ("initial_lr", initial_lr), ("min_lr", min_lr)):
        check_float(name, value, low=0)
    if global_step < warmup_steps:
        return initial_lr + global_step * (peak_lr - initial_lr) / warmup_steps
    if total_steps <= warmup_steps:
        raise value_error("total_steps", f"total_steps must exceed warmup_steps={warmup_steps} "
                                         f"for a step past the warm-up, got {total_steps}")
    progress = (global_step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def train_model(model: nn.Module, train_loader: Any, val_loader: Any,
                optimizer: torch.optim.Optimizer, device: torch.device | str, n_epochs: int,
                eval_freq: int, eval_iter: int, start_context: str, tokenizer: Any,
                warmup_steps: int, initial_lr: float = 3e-05, min_lr: float = 1e-6,
                ) -> tuple[list[float], list[float], list[int], list[float]]:
    """Appendix D's loop: returns (train losses, validation losses, tokens seen, rates).

    Chapter 5's ``train_model_simple`` with two additions: every step sets ``appendix_d_lr`` on
    all parameter groups (the peak is the optimizer's ``lr`` when the call starts) and records
    it, and from step ``warmup_steps`` on gradients are clipped to norm 1. It prints ``Ep 1
    (Iter 000000): Train loss ..., Val loss ...`` every ``eval_freq`` steps and a sample
    continuation after each epoch.
    """
    check_loop_counts(n_epochs=n_epochs, eval_freq=eval_freq, eval_iter=eval_iter)
    peak_lr = optimizer.param_groups[0]["lr"]
    total_steps = len(train_loader) * n_epochs
    appendix_d_lr(0, peak_lr=peak_lr, total_steps=max(total_steps, 1),
                  warmup_steps=warmup_steps, initial_lr=initial_lr, min_lr=min_lr)  # checks
    track_lrs: list[float] = []

    def set_rate(global_step: int) -> None:
        lr = appendix_d_lr(global_step, peak_lr=peak_lr, total_steps=total_steps,
                           warmup_steps=warmup_steps, initial_lr=initial_lr, min_lr=min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        track_lrs.append(lr)

    def clip(global_step: int) -> None:
        if global_step >= warmup_steps:  # no clipping during the warm-up
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)

    losses = book_loop(model, train_loader, val_loader, optimizer, device, n_epochs, eval_freq,
                       eval_iter, start_context, tokenizer, label="Iter", on_step=set_rate,
                       on_gradients=clip)
    return (*losses, track_lrs)
