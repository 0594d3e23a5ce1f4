"""Appendix D as the book writes it: warm-up from ``initial_lr``, cosine decay, late clipping.

Exports ``appendix_d_lr`` (the rate the book's loop sets at ``global_step``), ``train_model``
(the book's loop, same arguments, same returns, same printed lines) and
``generate_and_print_sample`` (chapter 5's progress sample, which that loop prints each epoch).
A reader following appendix D with a seed gets the book's rates, losses and samples.

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

from .generation import generate_text_simple, text_to_token_ids, token_ids_to_text
from .training import calc_loss_batch, evaluate

__all__ = ["appendix_d_lr", "train_model", "generate_and_print_sample"]


def appendix_d_lr(global_step: int, *, peak_lr: float, total_steps: int, warmup_steps: int,
                  initial_lr: float = 3e-05, min_lr: float = 1e-6) -> float:
    """The learning rate appendix D's ``train_model`` sets at step ``global_step`` (0-based)."""
    for name, value, low in (("global_step", global_step, 0), ("total_steps", total_steps, 1),
                             ("warmup_steps", warmup_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    for name, value in (("peak_lr", peak_lr), ("initial_lr", initial_lr), ("min_lr", min_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if global_step < warmup_steps:
        return initial_lr + global_step * (peak_lr - initial_lr) / warmup_steps
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps must exceed warmup_steps={warmup_steps} for a step past "
                         f"the warm-up, got {total_steps}")
    progress = (global_step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def generate_and_print_sample(model: nn.Module, tokenizer: Any, device: torch.device | str,
                              start_context: str) -> None:
    """Print 50 greedy tokens after ``start_context`` on one line (newlines as spaces)."""
    was_training = model.training
    model.eval()
    context_size = model.pos_emb.weight.shape[0]
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model, encoded, max_new_tokens=50,
                                         context_size=context_size)
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train(was_training)


def train_model(model: nn.Module, train_loader: Any, val_loader: Any,
                optimizer: torch.optim.Optimizer, device: torch.device | str, n_epochs: int,
                eval_freq: int, eval_iter: int, start_context: str, tokenizer: Any,
                warmup_steps: int, initial_lr: float = 3e-05, min_lr: float = 1e-6,
                ) -> tuple[list[float], list[float], list[int], list[float]]:
    """Appendix D's loop: returns (train losses, validation losses, tokens seen, rates).

    Every step sets ``appendix_d_lr`` on all parameter groups (the peak is the optimizer's
    ``lr`` when the call starts) and records it; every ``eval_freq`` steps, from step 0, it
    evaluates on ``eval_iter`` batches of each loader and prints ``Ep 1 (Iter 000000): Train
    loss ..., Val loss ...``; after each epoch it prints a sample continuation.
    """
    for name, value in (("n_epochs", n_epochs), ("eval_freq", eval_freq),
                        ("eval_iter", eval_iter)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    peak_lr = optimizer.param_groups[0]["lr"]
    total_steps = len(train_loader) * n_epochs
    appendix_d_lr(0, peak_lr=peak_lr, total_steps=max(total_steps, 1),
                  warmup_steps=warmup_steps, initial_lr=initial_lr, min_lr=min_lr)  # checks
    train_losses, val_losses, track_tokens_seen, track_lrs = [], [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(n_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            global_step += 1
            lr = appendix_d_lr(global_step, peak_lr=peak_lr, total_steps=total_steps,
                               warmup_steps=warmup_steps, initial_lr=initial_lr, min_lr=min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            track_lrs.append(lr)
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            if global_step >= warmup_steps:  # no clipping during the warm-up
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            tokens_seen += input_batch.numel()
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate(model, train_loader, val_loader, device,
                                                eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} (Iter {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen, track_lrs
