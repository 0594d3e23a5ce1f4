"""Benchmarks: building sliding-window datasets over a million tokens must take milliseconds.

``GPTDatasetV1`` keeps its windows as strided views (``Tensor.unfold``); the book's loop, which
copies every window into a Python list, is timed beside it for comparison.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt_components.data import GPTDatasetV1

N_TOKENS = 1_000_000


@pytest.fixture(scope="module")
def token_ids() -> torch.Tensor:
    return torch.randint(0, 50257, (N_TOKENS,), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("max_length", "stride"), [(256, 128), (256, 1)])
def test_build_dataset_from_a_tensor(benchmark, token_ids, max_length, stride):
    dataset = benchmark(GPTDatasetV1.from_token_ids, token_ids, max_length, stride)
    assert len(dataset) == (N_TOKENS - max_length - 1) // stride + 1


def test_build_dataset_from_a_uint16_memmap(benchmark, tmp_path):
    path = tmp_path / "tokens.bin"
    (np.arange(N_TOKENS) % 50257).astype(np.uint16).tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r")
    dataset = benchmark(GPTDatasetV1.from_token_ids, memmap, 256, 128)
    assert len(dataset) == (N_TOKENS - 256 - 1) // 128 + 1


def test_fetch_a_batch_of_windows(benchmark, token_ids):
    dataset = GPTDatasetV1.from_token_ids(token_ids, 256, 128)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=False)

    def first_batch():
        return next(iter(loader))

    inputs, targets = benchmark(first_batch)
    assert inputs.shape == targets.shape == (8, 256)


def _book_loop(token_ids: list[int], max_length: int, stride: int) -> int:
    """The book's construction: one copied tensor per window."""
    inputs, targets = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        inputs.append(torch.tensor(token_ids[i:i + max_length]))
        targets.append(torch.tensor(token_ids[i + 1:i + max_length + 1]))
    return len(inputs)


def test_the_books_loop_for_comparison(benchmark, token_ids):
    ids = token_ids.tolist()
    count = benchmark.pedantic(_book_loop, args=(ids, 256, 128), rounds=3, iterations=1)
    assert count == (N_TOKENS - 256 - 1) // 128 + 1
