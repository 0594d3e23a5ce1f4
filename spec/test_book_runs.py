"""The book's own package tests at full size: its published ids and losses (``-m slow``).

Each builds GPT-2 small's shape (163M parameters with its separate head) from the book's seed
and runs the book's flow through this package's functions. Minutes on two cores, so they are
left out of the default run; the cheap checks they rest on run every time:
``test_a_seeded_model_draws_the_books_weights_in_the_books_order`` (spec/test_model.py),
the loops against the book's steps (spec/test_simple_loop.py, spec/test_appendix_d.py) and the
book's chapter-7 run (spec/test_simple_loop.py).
"""

import contextlib
import io

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from gpt_components.appendix_d import train_model
from gpt_components.data import create_dataloader_v1
from gpt_components.generation import generate_text_simple
from gpt_components.machinery.resources import load_text
from gpt_components.model import GPTModel
from gpt_components.simple_loop import train_model_simple
from gpt_components.tokenizers import gpt2_tokenizer

pytestmark = pytest.mark.slow

GPT_CONFIG_124M = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12,
                   "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}


def one_window_loaders():
    """The-verdict split 90/10, 256-token windows; the first window of each part."""
    text = load_text("the-verdict.txt")
    split = int(0.9 * len(text))
    parts = [create_dataloader_v1(part, batch_size=1, max_length=256, stride=256,
                                  drop_last=last, shuffle=last)
             for part, last in ((text[:split], True), (text[split:], False))]
    return [DataLoader(Subset(loader.dataset, range(1)), batch_size=1) for loader in parts]


@pytest.mark.ch04
def test_the_books_seeded_gpt2_small_continues_hello_i_am_with_its_ids():
    torch.manual_seed(123)
    model = GPTModel(GPT_CONFIG_124M).eval()
    out = generate_text_simple(model, torch.tensor([[15496, 11, 314, 716]]), 10, 1024)
    assert out.tolist() == [[15496, 11, 314, 716, 27018, 24086, 47843, 30961, 42348, 7267,
                             49706, 43231, 47062, 34657]]


@pytest.mark.ch05
def test_the_books_chapter_5_run_starts_at_its_losses():
    # Book: round(train_losses[0], 1) == 7.6, round(val_losses[0], 1) == 10.1; the figures are
    # what the book's package (llms-from-scratch 1.0.19) gives on the same data.
    torch.manual_seed(123)
    train_loader, val_loader = one_window_loaders()
    model = GPTModel({**GPT_CONFIG_124M, "context_length": 256})
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.1)
    with contextlib.redirect_stdout(io.StringIO()):
        train_losses, val_losses, seen = train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=2, eval_freq=1,
            eval_iter=1, start_context="Every effort moves you", tokenizer=gpt2_tokenizer())
    assert train_losses == pytest.approx([7.641331, 4.934692], abs=1e-4)
    assert val_losses == pytest.approx([10.072664, 10.550053], abs=1e-4)
    assert seen == [256, 512]


@pytest.mark.appendix_d
def test_the_books_appendix_d_run_starts_at_its_losses():
    # Book: round(train_losses[0], 1) == 10.9, round(val_losses[0], 1) == 11.0 (6 steps, warm-up
    # 1, initial = min = 1e-5, peak 1e-3); the figures are what the book's package gives.
    torch.manual_seed(123)
    model = GPTModel({**GPT_CONFIG_124M, "context_length": 256})
    train_loader, val_loader = one_window_loaders()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001, weight_decay=0.1)
    with contextlib.redirect_stdout(io.StringIO()):
        train_losses, val_losses, _, rates = train_model(
            model, train_loader, val_loader, optimizer, "cpu", n_epochs=6, eval_freq=5,
            eval_iter=1, start_context="Every effort moves you", tokenizer=gpt2_tokenizer(),
            warmup_steps=1, initial_lr=1e-5, min_lr=1e-5)
    assert train_losses == pytest.approx([10.871319, 1.265951], abs=1e-4)
    assert val_losses == pytest.approx([10.958714, 9.895312], abs=1e-4)
    assert [round(r, 9) for r in rates] == [1e-05, 0.001, 0.000905463, 0.000657963,
                                            0.000352037, 0.000104537]
