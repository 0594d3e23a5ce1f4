"""Tokenizers (chapter 2): from a regex word splitter to GPT-2's byte-pair encoding.

``gpt2_tokenizer()`` builds tiktoken's ``gpt2`` encoding from the BPE files shipped in the
package, so it works with no network.

>>> tok = gpt2_tokenizer()
>>> tok.encode("Hello, world")
[15496, 11, 995]
>>> tok.decode([15496, 11, 995])
'Hello, world'
"""

from __future__ import annotations

import functools
import json

import tiktoken

from .resources import resource_path

__all__ = ["gpt2_tokenizer", "gpt2_byte_decoder", "GPT2_PATTERN", "ENDOFTEXT"]

ENDOFTEXT = "<|endoftext|>"

# GPT-2's pre-tokenization, in tiktoken's spelling: contractions, letter runs, digit runs, other
# symbol runs, each optionally after one space; then whitespace (a run before a word leaves its
# last space to that word).
GPT2_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)


@functools.cache
def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable stand-in characters of ``encoder.json`` back to bytes.

    GPT-2 stores every byte as a visible character: printable Latin-1 bytes stand for
    themselves, the other 68 bytes are shifted to code points 256 and up, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {}
    shifted = 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + shifted)] = byte
            shifted += 1
    return chars


@functools.cache
def _gpt2_mergeable_ranks() -> dict[bytes, int]:
    byte_of = gpt2_byte_decoder()
    with open(resource_path("gpt2/encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    return {
        bytes(byte_of[ch] for ch in token): rank
        for token, rank in encoder.items()
        if token != ENDOFTEXT
    }


@functools.cache
def gpt2_tokenizer() -> tiktoken.Encoding:
    """tiktoken's ``gpt2`` encoding (50,257 tokens, ``<|endoftext|>`` = 50256), built offline."""
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_gpt2_mergeable_ranks(),
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )
