"""Training corpora (chapter 5): text of any size as a flat array of token ids.

A corpus is a ``.txt`` file or a directory of them (read in sorted order, documents joined by
the tokenizer's end-of-text token). ``prepare_corpus`` tokenizes it once, chunk by chunk, into a
memory-mapped token file (``uint16`` when the vocabulary fits, else ``uint32``) plus a small JSON
file (tokenizer, token count, source hash); later runs with the same source and tokenizer reuse
it. ``TokenWindows`` reads the book's input/target windows straight from that array, so a corpus
larger than RAM trains with flat memory.

Exports: ``TokenCorpus``, ``TokenWindows``, ``prepare_corpus``, ``encode_text``.

>>> from gpt_components.tokenizers import gpt2_tokenizer
>>> corpus = TokenCorpus.from_text("Every effort moves you forward.", gpt2_tokenizer())
>>> len(corpus), corpus.tokens[:3].tolist()
(6, [6109, 3626, 6100])
>>> windows = TokenWindows(corpus.tokens, context_length=4, stride=1)
>>> x, y = windows[0]
>>> x.tolist(), y.tolist()
([6109, 3626, 6100, 345], [3626, 6100, 345, 2651])
"""

from __future__ import annotations

import codecs
import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .machinery.checks import (
    check_float,
    check_instance,
    check_int,
    check_str,
    type_error,
    value_error,
)

__all__ = ["TokenCorpus", "TokenWindows", "prepare_corpus", "encode_text"]

FORMAT_VERSION = 1
# A chunk boundary is safe where GPT-2's pre-tokenizer always splits: right after a lone "\n"
# that sits between two non-space characters. Tokenizing at such points changes nothing.
_SAFE_SPLIT = re.compile(r"(?<=\S\n)(?=\S)")


def encode_text(text: str, tokenizer: Any) -> list[int]:
    """Token ids of ``text``; ``<|endoftext|>`` becomes its special id if the tokenizer has one.

    Tokenizers with tiktoken's keywords (tiktoken, ``BPETokenizer``) read every other special
    token's name as ordinary text, as it is in a corpus; others (the book's ``SimpleTokenizerV2``)
    get the text alone and handle it themselves.
    """
    check_str("text", text, empty=True)
    _check_tokenizer(tokenizer)
    try:
        parameters = inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):  # a compiled method without a signature
        parameters = {}
    if "allowed_special" in parameters and "disallowed_special" in parameters:
        allowed = {"<|endoftext|>"} & set(getattr(tokenizer, "special_tokens_set", ()))
        return list(tokenizer.encode(text, allowed_special=allowed, disallowed_special=()))
    return list(tokenizer.encode(text))


def _check_tokenizer(tokenizer: Any) -> None:
    if not callable(getattr(tokenizer, "encode", None)):
        raise type_error("tokenizer", f"tokenizer must have an encode(text) method, got "
                                      f"{type(tokenizer).__name__}")


def _pieces(path: Path, block_bytes: int) -> Iterator[str]:
    """The file's text, read ``block_bytes`` bytes at a time and cut only at safe split points.

    Memory stays bounded by the block size (plus any stretch with no safe point in it). Bytes
    that are not UTF-8 raise ValueError naming the file and the offset of the first bad byte.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending, consumed = "", 0

    def decode(block: bytes, final: bool = False) -> str:
        buffered = len(decoder.getstate()[0])  # an incomplete character left by the last block
        try:
            return decoder.decode(block, final=final)
        except UnicodeDecodeError as error:
            offset = consumed - buffered + error.start
            raise value_error("source", f"source file {str(path)!r} is not UTF-8 text: "
                                        f"{error.reason} at byte {offset}") from None

    with open(path, "rb") as f:
        for block in iter(lambda: f.read(block_bytes), b""):
            pending += decode(block)
            consumed += len(block)
            cut = 0
            for cut_match in _SAFE_SPLIT.finditer(pending):
                cut = cut_match.start()
            if cut:
                yield pending[:cut]
                pending = pending[cut:]
    yield pending + decode(b"", final=True)


def _source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.txt") if p.is_file())
        if files:
            return files
        raise value_error("source", f"source must contain .txt files, got the empty directory "
                                    f"{str(source)!r}")
    if not source.exists():
        raise FileNotFoundError(f"source {str(source)!r} does not exist")
    raise FileNotFoundError(f"source must be a .txt file or a directory, got {str(source)!r}")


def _source_hash(files: list[Path]) -> str:
    """SHA-256 over each file's size and bytes, in reading order: exactly what decides the
    tokens (the size marks where one document ends and the end-of-text token goes)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _dtype_for(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


@dataclass
class TokenCorpus:
    """A corpus as one 1-D array of token ids (in memory, or a read-only memory map)."""

    tokens: np.ndarray
    metadata: dict

    @classmethod
    def from_text(cls, text: str, tokenizer: Any) -> TokenCorpus:
        """Tokenize ``text`` in memory: the reference path the memory map must reproduce."""
        check_str("text", text, empty=True)
        _check_tokenizer(tokenizer)
        check_int("tokenizer.n_vocab", getattr(tokenizer, "n_vocab", None), low=1)
        ids = np.asarray(encode_text(text, tokenizer), dtype=_dtype_for(tokenizer.n_vocab))
        return cls(ids, {"token_count": len(ids), "tokenizer": getattr(tokenizer, "name", "")})

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) token arrays: the last ``val_fraction`` of tokens is held out."""
        check_float("val_fraction", val_fraction, low=0, high=1, low_open=True, high_open=True)
        cut = int(round(len(self.tokens) * (1.0 - val_fraction)))
        return self.tokens[:cut], self.tokens[cut:]


def prepare_corpus(
    source: str | os.PathLike,
    tokenizer: Any,
    cache_dir: str | os.PathLike,
    *,
    block_bytes: int = 1 << 22,
) -> TokenCorpus:
    """Tokenize ``source`` into ``cache_dir`` once (reused while source and tokenizer match).

    The tokenizer is known by its ``name``, which must identify its vocabulary: tiktoken's
    encodings and ``BPETokenizer`` (``bpe-<n_vocab>-<fingerprint>``) qualify, so a tokenizer
    retrained in the same directory never reuses ids cut by the old one.

    Memory stays flat: each file is read in blocks of ``block_bytes`` bytes and encoded in
    pieces cut only where the pre-tokenizer splits anyway, so the ids equal ``encode_text`` of
    the whole text. The token file is written under a temporary name and renamed when complete.
    """
    check_instance("source", source, (str, os.PathLike), "a path (str or os.PathLike)")
    check_instance("cache_dir", cache_dir, (str, os.PathLike), "a path (str or os.PathLike)")
    check_int("block_bytes", block_bytes, low=1)
    _check_tokenizer(tokenizer)
    tokenizer_name = getattr(tokenizer, "name", None)
    if not isinstance(tokenizer_name, str) or not tokenizer_name:
        raise type_error("tokenizer", f"tokenizer must have a name that identifies its vocabulary "
                                      f"(as tiktoken encodings and BPETokenizer do), got a "
                                      f"{type(tokenizer).__name__}")
    check_int("tokenizer.n_vocab", getattr(tokenizer, "n_vocab", None), low=1)
    source = Path(source)
    files = _source_files(source)
    source_hash = _source_hash(files)
    dtype = _dtype_for(tokenizer.n_vocab)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", tokenizer_name)[-40:]
    stem = f"{source.stem}-{source_hash[:16]}-{safe_name}"
    token_path, meta_path = cache / f"{stem}.tok", cache / f"{stem}.json"
    expected = {"format": FORMAT_VERSION, "tokenizer": tokenizer_name, "source_hash": source_hash,
                "dtype": dtype.name, "n_vocab": tokenizer.n_vocab}
    if token_path.exists() and (metadata := _read_metadata(meta_path)) is not None:
        if all(metadata.get(k) == v for k, v in expected.items()):
            return _open(token_path, metadata)
    eot = getattr(tokenizer, "eot_token", None)
    count = 0
    partial = token_path.with_suffix(".tok.partial")
    with open(partial, "wb") as out:
        for index, path in enumerate(files):
            if index and eot is not None:
                out.write(np.asarray([eot], dtype=dtype).tobytes())
                count += 1
            for piece in _pieces(path, block_bytes):
                ids = np.asarray(encode_text(piece, tokenizer), dtype=dtype)
                out.write(ids.tobytes())
                count += len(ids)
    os.replace(partial, token_path)
    metadata = {**expected, "token_count": count, "source": str(source.resolve()),
                "files": len(files)}
    partial_meta = meta_path.with_suffix(".json.partial")
    partial_meta.write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    os.replace(partial_meta, meta_path)
    return _open(token_path, metadata)


def _read_metadata(meta_path: Path) -> dict | None:
    """The cache's metadata, or None if it is missing or unreadable (then it is rebuilt)."""
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    return metadata if isinstance(metadata, dict) else None


def _open(token_path: Path, metadata: dict) -> TokenCorpus:
    count = metadata["token_count"]
    if count == 0:  # numpy cannot map an empty file
        empty = np.zeros(0, dtype=metadata["dtype"])
        empty.flags.writeable = False
        return TokenCorpus(empty, metadata)
    tokens = np.memmap(token_path, dtype=metadata["dtype"], mode="r", shape=(count,))
    return TokenCorpus(tokens, metadata)


def _describe(value: Any) -> str:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return f"a {type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return type(value).__name__


class TokenWindows(torch.utils.data.Dataset):
    """The book's sliding windows over a token array: input ``[t, t+L)``, target shifted by one.

    Window ``i`` starts at ``i * stride``; as in ``GPTDatasetV1`` there are
    ``ceil((n - L) / stride)`` of them. Windows are copied out of the array on demand.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int | None = None):
        if not isinstance(tokens, (np.ndarray, torch.Tensor)) or tokens.ndim != 1 or not (
                np.issubdtype(tokens.dtype, np.integer) if isinstance(tokens, np.ndarray)
                else not (tokens.is_floating_point() or tokens.is_complex()
                          or tokens.dtype == torch.bool)):
            raise type_error("tokens", f"tokens must be a 1-D integer numpy array or tensor, got "
                                       f"{_describe(tokens)}")
        check_int("context_length", context_length, low=1)
        check_int("stride", stride, low=1, optional=True)
        stride = context_length if stride is None else stride
        self.tokens, self.context_length, self.stride = tokens, context_length, stride

    def __len__(self) -> int:
        span = len(self.tokens) - self.context_length
        return max(0, -(-span // self.stride))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index must be in [0, {len(self)}), got {index}")
        start = index * self.stride
        chunk = np.asarray(self.tokens[start : start + self.context_length + 1], dtype=np.int64)
        chunk = torch.from_numpy(chunk)
        return chunk[:-1], chunk[1:]  # (L,), (L,)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the windows at ``indices``: inputs and targets, each (len(indices), L)."""
        pairs = [self[i] for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
