"""Sliding-window datasets (chapter 2): next-token (input, target) pairs from a token stream.

``GPTDatasetV1(txt, tokenizer, max_length, stride)`` tokenizes a text;
``GPTDatasetV1.from_token_ids(token_ids, max_length, stride)`` takes ids directly (a list, a
tensor, or a numpy array such as a ``uint16`` memmap). Window ``i`` starts at token
``i * stride``; its target is the same window shifted one token to the right. The windows are
strided views into the one token stream (``Tensor.unfold``), not copies, so a dataset over
millions of tokens builds in milliseconds. ``create_dataloader_v1`` wraps it in a ``DataLoader``
with GPT-2 BPE by default and reproducible shuffling from a seed.

>>> dataset = GPTDatasetV1.from_token_ids(torch.arange(10), max_length=4, stride=3)
>>> len(dataset)
2
>>> dataset[1]
(tensor([3, 4, 5, 6]), tensor([4, 5, 6, 7]))
>>> loader = create_dataloader_v1("In the sunlit terraces of the palace.", batch_size=2,
...                               max_length=3, stride=3, shuffle=False)
>>> inputs, targets = next(iter(loader))
>>> inputs.tolist(), targets.tolist()
([[818, 262, 4252], [18250, 8812, 2114]], [[262, 4252, 18250], [8812, 2114, 286]])
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .machinery.checks import (
    check_bool,
    check_instance,
    check_int,
    check_str,
    type_error,
    value_error,
)
from .tokenizers import ENDOFTEXT, gpt2_tokenizer

__all__ = ["GPTDatasetV1", "create_dataloader_v1"]


def _encode(tokenizer: Any, txt: str) -> list[int]:
    """Token ids of ``txt``; ``<|endoftext|>`` is allowed where the tokenizer asks (tiktoken)."""
    encode = getattr(tokenizer, "encode", None)
    if not callable(encode):
        raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                      f"{type(tokenizer).__name__}")
    try:
        accepts_special = "allowed_special" in inspect.signature(encode).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        accepts_special = False
    if accepts_special:
        return encode(txt, allowed_special={ENDOFTEXT})
    return encode(txt)


def _token_stream(token_ids: object) -> torch.Tensor | np.ndarray:
    """A 1-D integer stream: int64 tensors as they are, numpy arrays (memmaps) left in place."""
    if isinstance(token_ids, np.ndarray):
        if not np.issubdtype(token_ids.dtype, np.integer):
            raise type_error("token_ids", f"token_ids must hold integers, got a numpy "
                                          f"{token_ids.dtype} array")
        stream = token_ids
    elif isinstance(token_ids, (torch.Tensor, list, tuple)):
        try:
            stream = torch.as_tensor(token_ids)
        except (TypeError, ValueError, RuntimeError):  # ragged, or holding non-numbers
            raise type_error("token_ids", "token_ids must be a flat list of integers, got "
                                          "one torch cannot read as a 1-D tensor") from None
        if stream.numel() == 0:
            stream = stream.to(torch.int64)
        if stream.dtype.is_floating_point or stream.dtype.is_complex or stream.dtype == torch.bool:
            raise type_error("token_ids", f"token_ids must hold integers, got dtype "
                                          f"{stream.dtype}")
        stream = stream.to(torch.int64)
    else:
        raise type_error("token_ids", f"token_ids must be a list, tensor or numpy array of "
                                      f"integers, got {type(token_ids).__name__}")
    if stream.ndim != 1:
        raise value_error("token_ids", f"token_ids must be 1-D, got shape "
                                       f"{tuple(stream.shape)}")
    return stream


class GPTDatasetV1(Dataset):
    """All windows of ``max_length`` tokens, ``stride`` apart, with next-token targets.

    ``input_ids`` and ``target_ids`` are ``(len(dataset), max_length)`` views into the token
    stream ``token_ids``; there are ``(n_tokens - max_length - 1) // stride + 1`` windows, so
    the last few tokens (fewer than ``stride``) may be left out.
    """

    def __init__(self, txt: str, tokenizer: Any, max_length: int, stride: int) -> None:
        check_str("txt", txt, empty=True)
        check_int("max_length", max_length, low=1)
        check_int("stride", stride, low=1)
        self._set_windows(_token_stream(_encode(tokenizer, txt)), max_length, stride, "txt")

    @classmethod
    def from_token_ids(cls, token_ids: Any, max_length: int, stride: int) -> GPTDatasetV1:
        """The dataset over ids already tokenized: a list, tensor or numpy array (or memmap)."""
        check_int("max_length", max_length, low=1)
        check_int("stride", stride, low=1)
        dataset = cls.__new__(cls)
        dataset._set_windows(_token_stream(token_ids), max_length, stride, "token_ids")
        return dataset

    def _set_windows(
        self, stream: torch.Tensor | np.ndarray, max_length: int, stride: int, source: str
    ) -> None:
        if len(stream) < max_length + 1:
            raise value_error(source, f"{source} has {len(stream)} tokens, too few for one "
                                      f"window of max_length={max_length}: it needs "
                                      f"max_length + 1 = {max_length + 1}")
        self.token_ids = stream
        self.max_length = max_length
        self.stride = stride
        if isinstance(stream, torch.Tensor):
            # (n - 1,) -> (num_windows, max_length), sharing the stream's storage.
            self.input_ids = stream[:-1].unfold(0, max_length, stride)
            self.target_ids = stream[1:].unfold(0, max_length, stride)
        else:
            view = np.lib.stride_tricks.sliding_window_view
            self.input_ids = view(stream[:-1], max_length)[::stride]
            self.target_ids = view(stream[1:], max_length)[::stride]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.input_ids, torch.Tensor):
            return self.input_ids[index], self.target_ids[index]
        # Numpy windows (e.g. a uint16 memmap) become int64 one window at a time.
        return (
            torch.from_numpy(self.input_ids[index].astype(np.int64)),
            torch.from_numpy(self.target_ids[index].astype(np.int64)),
        )


def create_dataloader_v1(
    txt: str,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    *,
    tokenizer: Any = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A ``DataLoader`` of ``(inputs, targets)`` batches, each ``(batch_size, max_length)``.

    ``tokenizer`` defaults to GPT-2 BPE. Shuffling follows ``seed`` (or ``generator``) when
    given, torch's global random state otherwise. With ``drop_last`` a short final batch is
    dropped, so a text with fewer than ``batch_size`` windows gives no batch at all.
    """
    check_int("batch_size", batch_size, low=1)
    check_bool("shuffle", shuffle)
    check_bool("drop_last", drop_last)
    check_int("num_workers", num_workers, low=0)
    if seed is not None:
        check_int("seed", seed, low=0)
        if generator is not None:
            raise value_error("generator", "seed and generator are alternatives: pass at most "
                                           "one of them")
        generator = torch.Generator().manual_seed(seed)
    if generator is not None:
        check_instance("generator", generator, torch.Generator, "a torch.Generator or None")
    dataset = GPTDatasetV1(
        txt, gpt2_tokenizer() if tokenizer is None else tokenizer, max_length, stride
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=generator,
    )
