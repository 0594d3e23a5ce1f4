"""GPT-2's tokenizer files (chapter 2's BPE, on disk): ``encoder.json`` and ``vocab.bpe``.

``encoder.json`` maps every token to its id; ``vocab.bpe`` lists the merges in the order they
were learned, one space-separated pair a line after a ``#version`` header. Both spell each byte
as one printable character (``tokenizers.gpt2_byte_decoder``), so a token is a JSON string and a
space in a token never clashes with the separator. ``BPETokenizer.save``/``load`` use these
functions. Exports ``read_gpt2_files``, ``write_gpt2_files`` and ``bundled_gpt2_files``.

>>> ranks, merges, specials = bundled_gpt2_files()
>>> len(ranks), len(merges), specials
(50256, 50000, {'<|endoftext|>': 50256})
>>> merges[0]
(b' ', b't')
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .machinery.checks import check_instance, type_error, value_error
from .machinery.resources import resource_path
from .tokenizers import gpt2_byte_decoder

__all__ = ["read_gpt2_files", "write_gpt2_files", "bundled_gpt2_files"]

_MERGES_HEADER = "#version: 0.2"


def write_gpt2_files(directory: str | os.PathLike[str], ranks: Mapping[bytes, int],
                     merges: Sequence[tuple[bytes, bytes]],
                     special_tokens: Mapping[str, int]) -> Path:
    """Write ``encoder.json`` and ``vocab.bpe`` into ``directory``; returns it."""
    check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
    check_instance("ranks", ranks, Mapping, "a mapping bytes -> int")
    check_instance("special_tokens", special_tokens, Mapping, "a mapping str -> int")
    if isinstance(merges, (str, bytes)) or not isinstance(merges, Sequence):
        raise type_error("merges", f"merges must be a sequence of (bytes, bytes) pairs, got "
                                   f"{type(merges).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    char_of = {byte: char for char, byte in gpt2_byte_decoder().items()}

    def printable(token: bytes) -> str:
        return "".join(char_of[byte] for byte in token)

    encoder = {printable(token): rank for token, rank in ranks.items()}
    clashes = sorted(set(encoder) & set(special_tokens))
    if clashes:
        raise value_error("special_tokens", f"special tokens {clashes} are spelled like ordinary "
                                            f"tokens in GPT-2's printable alphabet, so "
                                            f"encoder.json cannot hold both")
    encoder.update(special_tokens)
    encoder = dict(sorted(encoder.items(), key=lambda item: item[1]))
    with open(directory / "encoder.json", "w", encoding="utf-8") as f:
        json.dump(encoder, f)
    lines = [_MERGES_HEADER, *(f"{printable(a)} {printable(b)}" for a, b in merges)]
    (directory / "vocab.bpe").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


@functools.cache
def bundled_gpt2_files() -> tuple[dict[bytes, int], list[tuple[bytes, bytes]], dict[str, int]]:
    """GPT-2's own vocabulary from the files bundled with the package (parsed once)."""
    return read_gpt2_files(resource_path("gpt2/encoder.json").parent)


def read_gpt2_files(
    directory: str | os.PathLike[str],
) -> tuple[dict[bytes, int], list[tuple[bytes, bytes]], dict[str, int]]:
    """Ranks, merges and specials from ``directory``'s ``encoder.json`` and ``vocab.bpe``.

    An ``encoder.json`` entry is ordinary when it is a single byte or the result of a merge in
    ``vocab.bpe``, and special otherwise.
    """
    check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
    encoder_path = Path(directory) / "encoder.json"
    merges_path = Path(directory) / "vocab.bpe"
    byte_of = gpt2_byte_decoder()
    with open(encoder_path, encoding="utf-8") as f:
        try:
            encoder: dict[str, int] = json.load(f)
        except json.JSONDecodeError as error:
            raise value_error("directory", f"directory: {encoder_path} is not valid JSON: "
                                           f"{error}") from None
    if not isinstance(encoder, dict) or not all(
            isinstance(rank, int) and not isinstance(rank, bool) for rank in encoder.values()):
        raise value_error("directory", f"directory: {encoder_path} must hold a JSON object of "
                                       f"token: id")
    lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    pairs = [tuple(line.split(" ")) for line in lines if line]
    if any(len(pair) != 2 for pair in pairs):
        raise value_error("directory", f"directory: {merges_path} must hold one space-separated "
                                       f"pair per "
                                       f"line")
    ordinary = set(byte_of) | {left + right for left, right in pairs}

    def to_bytes(token: str) -> bytes:
        try:
            return bytes(byte_of[char] for char in token)
        except KeyError as error:
            raise value_error("directory", f"directory: {merges_path} holds {token!r}, which has a "
                                           f"character outside GPT-2's printable byte "
                                           f"alphabet") from error

    ranks = {to_bytes(token): rank for token, rank in encoder.items() if token in ordinary}
    specials = {token: rank for token, rank in encoder.items() if token not in ordinary}
    merges = [(to_bytes(left), to_bytes(right)) for left, right in pairs]
    return ranks, merges, specials
