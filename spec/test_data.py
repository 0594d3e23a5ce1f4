"""Properties of the sliding-window dataset and its data loader (chapter 2)."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from gpt_components.data import GPTDatasetV1, create_dataloader_v1
from gpt_components.machinery.resources import load_text
from gpt_components.tokenizers import (
    ENDOFTEXT,
    UNK,
    SimpleTokenizerV2,
    build_vocab,
    gpt2_tokenizer,
)
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch02


@functools.cache
def verdict() -> str:
    return load_text("the-verdict.txt")


def book_windows(token_ids: list[int], max_length: int, stride: int):
    """The book's GPTDatasetV1 loop: one copied (input, target) pair per window start."""
    inputs, targets = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        inputs.append(token_ids[i:i + max_length])
        targets.append(token_ids[i + 1:i + max_length + 1])
    return inputs, targets


@st.composite
def streams(draw, min_extra=1):
    """Token ids, max_length and stride with at least one window (n >= max_length + min_extra)."""
    max_length = draw(st.integers(1, 12))
    stride = draw(st.integers(1, 16))
    n = draw(st.integers(max_length + min_extra, max_length + 60))
    ids = torch.randint(0, 50257, (n,), generator=generator(draw(seeds)))
    return ids, max_length, stride


@example((torch.arange(5), 4, 1))
@example((torch.arange(6), 2, 2))
@given(streams())
def test_windows_are_the_books_windows(case):
    ids, max_length, stride = case
    dataset = GPTDatasetV1.from_token_ids(ids, max_length, stride)
    inputs, targets = book_windows(ids.tolist(), max_length, stride)
    assert len(dataset) == len(inputs)
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.dtype == y.dtype == torch.int64
        assert x.tolist() == inputs[i] and y.tolist() == targets[i]


@example((torch.arange(10), 3, 3), np.uint16)
@given(streams(), st.sampled_from([np.uint16, np.int32, np.int64]))
def test_numpy_streams_give_the_same_windows_as_tensors(case, dtype):
    ids, max_length, stride = case
    array = ids.numpy().astype(dtype)
    dataset = GPTDatasetV1.from_token_ids(array, max_length, stride)
    assert dataset.token_ids is array
    assert np.shares_memory(dataset.input_ids, array)
    inputs, targets = book_windows(ids.tolist(), max_length, stride)
    assert len(dataset) == len(inputs)
    assert dataset.input_ids.tolist() == inputs and dataset.target_ids.tolist() == targets
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.dtype == y.dtype == torch.int64
        assert x.tolist() == inputs[i] and y.tolist() == targets[i]


@given(streams())
def test_window_count_is_the_closed_form(case):
    ids, max_length, stride = case
    dataset = GPTDatasetV1.from_token_ids(ids, max_length, stride)
    assert len(dataset) == (len(ids) - max_length - 1) // stride + 1
    assert dataset.input_ids.shape == dataset.target_ids.shape == (len(dataset), max_length)


@given(streams())
def test_window_i_starts_at_i_times_stride_and_its_target_is_shifted_by_one(case):
    ids, max_length, stride = case
    dataset = GPTDatasetV1.from_token_ids(ids, max_length, stride)
    for i in range(len(dataset)):
        x, y = dataset[i]
        start = i * stride
        assert torch.equal(x, ids[start:start + max_length])
        assert torch.equal(y, ids[start + 1:start + 1 + max_length])
        assert torch.equal(x[1:], y[:-1])


@given(streams())
def test_no_window_reads_past_the_end_and_the_unread_tail_is_shorter_than_a_stride(case):
    ids, max_length, stride = case
    dataset = GPTDatasetV1.from_token_ids(ids, max_length, stride)
    last_target_end = (len(dataset) - 1) * stride + max_length  # index of the last target
    assert last_target_end <= len(ids) - 1
    assert len(ids) - 1 - last_target_end < stride
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@given(streams().filter(lambda case: case[2] <= case[1]))
def test_with_stride_at_most_max_length_every_read_token_but_the_first_is_a_target(case):
    ids, max_length, stride = case
    n = len(ids)
    positions = torch.arange(n)
    dataset = GPTDatasetV1.from_token_ids(positions, max_length, stride)
    covered = set(torch.cat([dataset[i][1] for i in range(len(dataset))]).tolist())
    last_target_end = max(covered)
    assert covered == set(range(1, last_target_end + 1))
    assert n - 1 - last_target_end < stride  # only a tail shorter than one stride is left over


def test_windows_are_views_into_one_token_tensor():
    ids = torch.arange(1_000_000)
    dataset = GPTDatasetV1.from_token_ids(ids, 256, 128)
    assert dataset.token_ids is ids
    storage = ids.untyped_storage().data_ptr()
    assert dataset.input_ids.untyped_storage().data_ptr() == storage
    assert dataset.target_ids.untyped_storage().data_ptr() == storage
    assert dataset[3][0].untyped_storage().data_ptr() == storage
    assert len(dataset) == (1_000_000 - 256 - 1) // 128 + 1


@pytest.mark.parametrize(
    "convert",
    [
        lambda ids: ids.tolist(),
        lambda ids: ids.to(torch.int32),
        lambda ids: ids.numpy().astype(np.uint16),
        lambda ids: ids.numpy().astype(np.int64),
    ],
    ids=["list", "int32-tensor", "uint16-array", "int64-array"],
)
def test_token_ids_may_be_lists_tensors_or_arrays_of_any_integer_type(convert):
    ids = torch.randint(0, 50257, (40,), generator=generator(7))
    reference = GPTDatasetV1.from_token_ids(ids, 5, 3)
    dataset = GPTDatasetV1.from_token_ids(convert(ids), 5, 3)
    assert len(dataset) == len(reference) == 12
    for i in range(len(dataset)):
        for got, want in zip(dataset[i], reference[i], strict=True):
            assert got.dtype == torch.int64 and torch.equal(got, want)


def test_a_uint16_memmap_is_windowed_without_loading_it(tmp_path):
    path = tmp_path / "tokens.bin"
    ids = np.arange(1000, dtype=np.uint16) * 50
    ids.tofile(path)
    memmap = np.memmap(path, dtype=np.uint16, mode="r")
    dataset = GPTDatasetV1.from_token_ids(memmap, 8, 8)
    assert len(dataset) == (1000 - 8 - 1) // 8 + 1
    assert np.shares_memory(dataset.input_ids, memmap)
    x, y = dataset[len(dataset) - 1]
    start = (len(dataset) - 1) * 8
    assert x.tolist() == ids[start:start + 8].astype(int).tolist()
    assert y.tolist() == ids[start + 1:start + 9].astype(int).tolist()
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    first_x, first_y = next(iter(loader))
    assert first_x.dtype == torch.int64 and first_x.shape == (4, 8)
    assert torch.equal(first_x[:, 1:], first_y[:, :-1])


@given(st.text(max_size=200), st.integers(1, 6), st.integers(1, 6))
def test_a_text_dataset_windows_the_tokenizers_ids(text, max_length, stride):
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(text)
    if len(ids) < max_length + 1:
        with pytest.raises(ValueError, match=r"\btxt\b.*\bmax_length\b"):
            GPTDatasetV1(text, tokenizer, max_length, stride)
        return
    dataset = GPTDatasetV1(text, tokenizer, max_length, stride)
    inputs, targets = book_windows(ids, max_length, stride)
    assert dataset.input_ids.tolist() == inputs
    assert dataset.target_ids.tolist() == targets


def test_a_text_dataset_allows_endoftext_with_tiktoken():
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
    dataset = GPTDatasetV1(text, gpt2_tokenizer(), 4, 4)
    assert 50256 in dataset.input_ids.flatten().tolist() + dataset.target_ids.flatten().tolist()


def test_any_tokenizer_with_an_encode_method_works():
    vocab = build_vocab(verdict(), special_tokens=(ENDOFTEXT, UNK))
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of the palace."
    dataset = GPTDatasetV1(text, SimpleTokenizerV2(vocab), 4, 2)
    ids = [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    assert dataset.input_ids.tolist() == book_windows(ids, 4, 2)[0]

    class TiktokenLike:
        def __init__(self):
            self.calls = []

        def encode(self, text, allowed_special=frozenset()):
            self.calls.append(allowed_special)
            return list(range(len(text)))

    tokenizer = TiktokenLike()
    assert len(GPTDatasetV1("abcdefgh", tokenizer, 3, 1)) == 5
    assert tokenizer.calls == [{ENDOFTEXT}]


def test_a_tokenizer_whose_encode_has_no_signature_is_called_with_the_text_alone():
    class Opaque:
        @property
        def __signature__(self):
            raise ValueError("no signature found")

        def __call__(self, text):
            return [ord(c) for c in text]

    class Tokenizer:
        encode = Opaque()

    dataset = GPTDatasetV1("abcde", Tokenizer(), 2, 2)
    assert dataset.input_ids.tolist() == [[97, 98], [99, 100]]


# ---------------------------------------------------------------- create_dataloader_v1

def test_the_books_first_batches_on_the_verdict():
    loader = create_dataloader_v1(verdict(), batch_size=1, max_length=4, stride=1, shuffle=False)
    batches = iter(loader)
    x, y = next(batches)
    assert x.tolist() == [[40, 367, 2885, 1464]] and y.tolist() == [[367, 2885, 1464, 1807]]
    x, y = next(batches)
    assert x.tolist() == [[367, 2885, 1464, 1807]] and y.tolist() == [[2885, 1464, 1807, 3619]]


def test_the_books_batch_of_eight_with_stride_four():
    loader = create_dataloader_v1(verdict(), batch_size=8, max_length=4, stride=4, shuffle=False)
    x, y = next(iter(loader))
    assert x.tolist() == [[40, 367, 2885, 1464], [1807, 3619, 402, 271],
                          [10899, 2138, 257, 7026], [15632, 438, 2016, 257],
                          [922, 5891, 1576, 438], [568, 340, 373, 645],
                          [1049, 5975, 284, 502], [284, 3285, 326, 11]]
    assert y.tolist()[0] == [367, 2885, 1464, 1807]
    assert len(loader) == ((5145 - 4 - 1) // 4 + 1) // 8


def test_the_default_loader_is_the_books_chapter_5_setup():
    loader = create_dataloader_v1(verdict())
    assert loader.batch_size == 4
    assert loader.drop_last is True
    assert loader.num_workers == 0
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    assert loader.dataset.input_ids.shape == ((5145 - 256 - 1) // 128 + 1, 256)
    assert loader.dataset.stride == 128 and loader.dataset.max_length == 256


@given(st.integers(1, 5), st.integers(1, 4), st.booleans(), st.booleans(), seeds)
def test_an_epoch_yields_each_window_once_and_a_seed_fixes_the_order(
    batch_size, stride, shuffle, drop_last, seed
):
    text = verdict()[:400]
    kwargs = dict(batch_size=batch_size, max_length=3, stride=stride, shuffle=shuffle,
                  drop_last=drop_last)
    loader = create_dataloader_v1(text, seed=seed, **kwargs)
    windows = loader.dataset.input_ids.tolist()
    seen = [row for x, _ in loader for row in x.tolist()]
    assert all(len(x) == batch_size for x, _ in loader) or not drop_last
    expected = len(windows) // batch_size * batch_size if drop_last else len(windows)
    assert len(seen) == expected
    if drop_last:
        assert all(row in windows for row in seen)
    else:
        assert sorted(seen) == sorted(windows)
    if not shuffle:
        assert seen == windows[:expected]
    again = create_dataloader_v1(text, seed=seed, **kwargs)
    assert [row for x, _ in again for row in x.tolist()] == seen
    from_generator = create_dataloader_v1(text, generator=generator(seed), **kwargs)
    assert [row for x, _ in from_generator for row in x.tolist()] == seen


def test_shuffling_changes_the_order():
    text = verdict()[:2000]
    orders = {
        tuple(row for x, _ in create_dataloader_v1(text, max_length=4, stride=4, seed=seed)
              for row in x[:, 0].tolist())
        for seed in range(3)
    }
    assert len(orders) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"batch_size": 0}, ValueError, r"batch_size\b.*\b0"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"max_length": 0}, ValueError, "max_length"),
        ({"max_length": "4"}, TypeError, "max_length"),
        ({"stride": 0}, ValueError, "stride"),
        ({"stride": -3}, ValueError, "stride"),
        ({"stride": True}, TypeError, "stride"),
        ({"num_workers": -1}, ValueError, "num_workers"),
        ({"shuffle": 1}, TypeError, "shuffle"),
        ({"drop_last": None}, TypeError, "drop_last"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"generator": 3}, TypeError, r"generator\b.*\bint"),
        ({"seed": 1, "generator": torch.Generator()}, ValueError, "seed"),
        ({"tokenizer": object()}, TypeError, r"tokenizer\b.*\bobject"),
        ({"txt": b"bytes"}, TypeError, r"txt\b.*\bbytes"),
        ({"txt": "too short", "max_length": 100}, ValueError, "max_length"),
    ],
)
def test_create_dataloader_v1_rejects_bad_arguments_naming_them(kwargs, error, name):
    arguments = {"txt": verdict()[:500], "max_length": 4, "stride": 4, **kwargs}
    with pytest.raises(error, match=rf"\b{name}"):
        create_dataloader_v1(**arguments)


def test_loader_arguments_reach_the_dataloader():
    loader = create_dataloader_v1(verdict()[:300], batch_size=3, max_length=1, stride=1,
                                  shuffle=False, drop_last=False, num_workers=1)
    assert (loader.batch_size, loader.drop_last, loader.num_workers) == (3, False, 1)
    assert isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    assert loader.dataset.max_length == 1 and loader.dataset.input_ids.shape[1] == 1


@pytest.mark.parametrize(
    ("token_ids", "max_length", "stride", "error", "name"),
    [
        (torch.arange(10), 0, 1, ValueError, "max_length"),
        (torch.arange(10), 3, 0, ValueError, "stride"),
        (torch.arange(10), 10, 1, ValueError, "token_ids"),
        (torch.arange(10).reshape(2, 5), 2, 1, ValueError, "token_ids"),
        (torch.arange(10.0), 2, 1, TypeError, "token_ids"),
        (torch.ones(10, dtype=torch.bool), 2, 1, TypeError, "token_ids"),
        (np.arange(10.0), 2, 1, TypeError, "token_ids"),
        ([0.5, 1.5, 2.5], 1, 1, TypeError, "token_ids"),
        ("0123", 1, 1, TypeError, r"token_ids\b.*\bstr"),
    ],
)
def test_from_token_ids_rejects_bad_arguments_naming_them(token_ids, max_length, stride, error,
                                                          name):
    with pytest.raises(error, match=rf"\b{name}"):
        GPTDatasetV1.from_token_ids(token_ids, max_length, stride)


@pytest.mark.parametrize("max_length", [1, 3])
def test_one_token_more_than_max_length_is_exactly_one_window(max_length):
    ids = torch.arange(max_length + 1)
    assert len(GPTDatasetV1.from_token_ids(ids, max_length, 1)) == 1
    message = rf"\btoken_ids has {max_length} tokens\b.*max_length \+ 1 = {max_length + 1}$"
    with pytest.raises(ValueError, match=message):
        GPTDatasetV1.from_token_ids(ids[:-1], max_length, 1)
