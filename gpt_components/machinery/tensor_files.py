"""Tensor files a user hands us (chapter 5): read safetensors safely, check weights before use.

Weights reach the project from files it did not write itself: a run's checkpoint, a Hugging Face
directory, a LoRA adapter file, a finetuned classifier. ``read_safetensors`` reads one and, for
anything that is not a safetensors file (a pickle or a ``torch.save`` archive renamed
``model.safetensors``, a truncated download, an empty file), raises ``TensorFileError`` naming the
file and what it is instead; it never unpickles. ``check_state_dict`` compares a file's tensors
with what a model expects and names the first tensor that is missing, extra, of another shape or
of a dtype that cannot hold weights; floating-point tensors of another precision are converted to
the model's, with a warning that says so. ``safetensors_header`` reads only a file's table of
contents (each tensor's dtype and shape: enough to check a checkpoint against a model before a
byte of weights is read) and ``stream_safetensors`` then yields its tensors one at a time, each
read straight into its own memory (a model too big to hold twice loads in one copy). This module
is the project's one safetensors reader.

Exports: ``read_safetensors``, ``safetensors_header``, ``stream_safetensors``, ``TensorEntry``,
``check_state_dict``, ``TensorFileError``.

>>> import tempfile, torch
>>> from safetensors.torch import save_file
>>> path = tempfile.mkdtemp() + "/model.safetensors"
>>> save_file({"weight": torch.ones(2, 2)}, path)
>>> sorted(read_safetensors(path))
['weight']
>>> safetensors_header(path)["weight"].shape
(2, 2)
>>> _ = open(path, "wb").write(b"\\x80\\x02}q\\x00.")  # a pickle under a safetensors name
>>> try:
...     read_safetensors(path)
... except TensorFileError as error:
...     print(str(error).split(": ", 1)[1])
it is a Python pickle, which this project never loads; give the model.safetensors that \
save_pretrained, transformers or `hf download` wrote
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open

from .checks import check_instance

__all__ = ["read_safetensors", "safetensors_header", "stream_safetensors", "TensorEntry",
           "check_state_dict", "TensorFileError"]


class TensorFileError(ValueError):
    """A weights file that is not what its name claims, or that does not fit the model."""


def _looks_like(head: bytes) -> str:
    """What a file that is not safetensors seems to be, from its first bytes."""
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive (torch.save's format), which this project never unpickles"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]"):
        return "it is a Python pickle, which this project never loads"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it is JSON text"
    return "its first bytes are not a safetensors header"


def _header_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a safetensors file (8-byte length, then a JSON header), or None."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size < 8:
        return _looks_like(head)
    (length,) = struct.unpack("<Q", head[:8])
    if length > size - 8 or head[8:9] != b"{":
        return _looks_like(head)
    return None


def _checked_file(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` to a file that starts like a safetensors file, else the reason."""
    check_instance("path", path, (str, os.PathLike), "a str or PathLike")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r} does not exist" if not path.exists()
                                else f"path {str(path)!r} is not a file")
    problem = _header_problem(path)
    if problem is not None:
        raise TensorFileError(f"{str(path)!r} is not a safetensors file: {problem}; give the "
                              "model.safetensors that save_pretrained, transformers or "
                              "`hf download` wrote")
    return path


_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


class TensorEntry(NamedTuple):
    """One tensor in a safetensors file's header: its dtype, shape and bytes in the data."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # offset of its first byte, counted from the start of the file
    end: int


def safetensors_header(path: str | os.PathLike) -> dict[str, TensorEntry]:
    """Each tensor's ``TensorEntry``, from the header alone; every entry is checked against the
    file's size, so a truncated download is named here, before any weight is read."""
    path = _checked_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            header = None
    if not isinstance(header, dict):
        raise TensorFileError(f"{str(path)!r} is not a safetensors file (its header is not a "
                              "JSON object): download or write it again")
    header.pop("__metadata__", None)
    entries = {}
    for name, info in header.items():
        try:
            dtype, shape = _DTYPES.get(info["dtype"]), tuple(int(n) for n in info["shape"])
            begin, end = (8 + length + int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise TensorFileError(f"{str(path)!r}: tensor {name!r} has an unreadable header "
                                  "entry: download or write it again") from None
        if dtype is None:
            raise TensorFileError(f"{str(path)!r}: tensor {name!r} has dtype {info['dtype']}, "
                                  "which this reader does not know")
        if end - begin != math.prod(shape) * dtype.itemsize or end > size:
            raise TensorFileError(f"{str(path)!r} is truncated or corrupted (tensor {name!r} "
                                  f"does not fit its {end - begin} bytes): download or write "
                                  "it again")
        entries[name] = TensorEntry(dtype, shape, begin, end)
    return entries


def stream_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for each tensor of a safetensors file, in file order, each read with
    plain reads into its own memory: no memory map, whose touched pages would count as a
    second copy of the weights while the file is open."""
    entries = safetensors_header(path)
    with open(path, "rb") as f:
        for name, entry in sorted(entries.items(), key=lambda item: item[1].begin):
            raw = torch.empty(entry.end - entry.begin, dtype=torch.uint8)  # its own memory
            f.seek(entry.begin)
            if raw.numel() and f.readinto(raw.numpy()) != raw.numel():
                raise TensorFileError(f"{str(path)!r} is truncated or corrupted (tensor "
                                      f"{name!r} is incomplete): download or write it again")
            yield name, raw.view(entry.dtype).reshape(entry.shape)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU; ``TensorFileError`` if it is not one."""
    path = _checked_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, json.JSONDecodeError, OSError) as error:
        raise TensorFileError(f"{str(path)!r} is truncated or corrupted ({error}): download or "
                              "write it again") from None


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor],
                     source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``found`` checked against a model's ``expected`` state dict, in the model's dtypes.

    Raises ``TensorFileError`` naming ``source`` and the first tensor that is missing, extra,
    shaped differently, or not floating point where the model holds floating-point weights.
    Tensors of another floating-point dtype (float16, bfloat16, float64) are converted to the
    model's dtype with one ``UserWarning`` per file: never silently.
    """
    missing = [name for name in expected if name not in found]
    if missing:
        raise TensorFileError(f"{str(source)!r} has no tensor {missing[0]!r}, which the model "
                              f"needs ({len(missing)} missing): the file is not for this model")
    extra = [name for name in found if name not in expected]
    if extra:
        raise TensorFileError(f"{str(source)!r} holds tensor {extra[0]!r}, which the model has "
                              f"no place for ({len(extra)} extra): the file is not for this model")
    converted, out = set(), {}
    for name, want in expected.items():
        tensor = found[name]
        if tuple(tensor.shape) != tuple(want.shape):
            raise TensorFileError(f"{str(source)!r}: tensor {name!r} has shape "
                                  f"{tuple(tensor.shape)}, the model expects {tuple(want.shape)}")
        if tensor.dtype != want.dtype:
            if want.is_floating_point() and not tensor.is_floating_point():
                raise TensorFileError(f"{str(source)!r}: tensor {name!r} has dtype "
                                      f"{tensor.dtype}, the model expects floating-point "
                                      f"weights ({want.dtype})")
            converted.add(f"{tensor.dtype} to {want.dtype}")
            tensor = tensor.to(want.dtype)
        out[name] = tensor
    if converted:
        warnings.warn(f"{str(source)!r}: converted weights from {', '.join(sorted(converted))}",
                      UserWarning, stacklevel=2)
    return out
