"""The book's own training loop (chapter 5): ``train_model_simple``, as the book prints it.

Exports ``train_model_simple`` (epochs over a loader, one AdamW-style step per batch, an
evaluation every ``eval_freq`` steps from step 0, a greedy sample after each epoch; returns
the train losses, validation losses and tokens seen), ``evaluate_model`` (the book's name for
``training.evaluate``) and ``generate_and_print_sample``. Appendix D's ``train_model`` is this
loop with a learning-rate schedule and clipping hooked in (``appendix_d``).

A reader who seeds and builds the data as the book does gets the book's numbers: the book's
chapter-7 test (a 12-wide one-layer model, 15 instructions, 10 epochs) reports a first train and
validation loss of 10.9, and so does this loop. ``train`` (``gpt_components.training``) is the
project's loop for real runs: checkpoints, exact resume, a schedule, several processes.

>>> import contextlib, io, torch
>>> from gpt_components.model import GPTConfig, GPTModel
>>> model = GPTModel(GPTConfig.from_name("gpt-nano", vocab_size=50257))
>>> batch = (torch.tensor([[40, 367, 2885]]), torch.tensor([[367, 2885, 1464]]))
>>> optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
>>> with contextlib.redirect_stdout(io.StringIO()) as printed:
...     train_losses, val_losses, seen = train_model_simple(
...         model, [batch], [batch], optimizer, "cpu", num_epochs=2, eval_freq=1, eval_iter=1,
...         start_context="Every effort moves you", tokenizer=None)
>>> seen, printed.getvalue().split("\\n")[0].split(":")[0]
([3, 6], 'Ep 1 (Step 000000)')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .generation import generate_text_simple, text_to_token_ids, token_ids_to_text
from .machinery.checks import check_int
from .training import calc_loss_batch, evaluate

__all__ = ["train_model_simple", "evaluate_model", "generate_and_print_sample"]

evaluate_model = evaluate  # the book's name: (train loss, val loss) over eval_iter batches each


def _context_size(model: nn.Module) -> int:
    """The most tokens the model reads: its position table (GPT-2) or its config's length."""
    pos_emb = getattr(model, "pos_emb", None)
    if isinstance(pos_emb, nn.Embedding):
        return pos_emb.weight.shape[0]
    return model.cfg.context_length


def generate_and_print_sample(model: nn.Module, tokenizer: Any, device: torch.device | str,
                              start_context: str) -> None:
    """Print 50 greedy tokens after ``start_context`` on one line (newlines as spaces).

    ``tokenizer`` None is GPT-2's BPE. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate_text_simple(model, encoded, max_new_tokens=50,
                                         context_size=_context_size(model))
    print(token_ids_to_text(token_ids, tokenizer).replace("\n", " "))
    model.train(was_training)


def check_loop_counts(**counts: Any) -> None:
    """Each count an int >= 1, else a TypeError (not an int) or ValueError naming it."""
    for name, value in counts.items():
        check_int(name, value, low=1)


def book_loop(model: nn.Module, train_loader: Any, val_loader: Any,
              optimizer: torch.optim.Optimizer, device: torch.device | str, num_epochs: int,
              eval_freq: int, eval_iter: int, start_context: str, tokenizer: Any, *,
              label: str = "Step", on_step: Callable[[int], None] | None = None,
              on_gradients: Callable[[int], None] | None = None,
              ) -> tuple[list[float], list[float], list[int]]:
    """The loop both book loops share; ``on_step(global_step)`` runs before the loss,
    ``on_gradients(global_step)`` between ``backward`` and the optimizer step."""
    check_loop_counts(num_epochs=num_epochs, eval_freq=eval_freq, eval_iter=eval_iter)
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for input_batch, target_batch in train_loader:
            optimizer.zero_grad()
            global_step += 1
            if on_step is not None:
                on_step(global_step)
            loss = calc_loss_batch(input_batch, target_batch, model, device)
            loss.backward()
            if on_gradients is not None:
                on_gradients(global_step)
            optimizer.step()
            tokens_seen += input_batch.numel()
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate(model, train_loader, val_loader, device,
                                                eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                track_tokens_seen.append(tokens_seen)
                print(f"Ep {epoch + 1} ({label} {global_step:06d}): "
                      f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def train_model_simple(model: nn.Module, train_loader: Any, val_loader: Any,
                       optimizer: torch.optim.Optimizer, device: torch.device | str,
                       num_epochs: int, eval_freq: int, eval_iter: int, start_context: str,
                       tokenizer: Any) -> tuple[list[float], list[float], list[int]]:
    """Chapter 5's loop: returns (train losses, validation losses, tokens seen).

    Per batch: ``zero_grad``, ``calc_loss_batch``, ``backward``, ``optimizer.step()`` (at the
    optimizer's own rate, no clipping). Every ``eval_freq`` steps, from step 0, it evaluates on
    ``eval_iter`` batches of each loader in eval mode and prints ``Ep 1 (Step 000000): Train
    loss ..., Val loss ...``; after each epoch it prints ``generate_and_print_sample``'s line.
    """
    return book_loop(model, train_loader, val_loader, optimizer, device, num_epochs,
                     eval_freq, eval_iter, start_context, tokenizer)
