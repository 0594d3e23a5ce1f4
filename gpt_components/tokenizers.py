"""Tokenizers (chapter 2): from a regex word splitter to GPT-2's byte-pair encoding.

``split_words`` is the book's regex split; ``build_vocab`` numbers its sorted unique words (then
any special tokens); ``SimpleTokenizerV1`` maps words to ids and back, and ``SimpleTokenizerV2``
adds ``<|unk|>`` for unknown words and keeps ``<|endoftext|>`` whole between documents.
``gpt2_tokenizer()`` builds tiktoken's ``gpt2`` encoding from the BPE files shipped in the
package, so it works with no network.

>>> split_words("Hello, world. Is this-- a test?")
['Hello', ',', 'world', '.', 'Is', 'this', '--', 'a', 'test', '?']
>>> tok = SimpleTokenizerV2(build_vocab("the cat sat.", special_tokens=[ENDOFTEXT, UNK]))
>>> tok.encode("the dog sat. <|endoftext|> the cat")
[3, 5, 2, 0, 4, 3, 1]
>>> tok.decode([3, 5, 2, 0])
'the <|unk|> sat.'
>>> gpt2 = gpt2_tokenizer()
>>> gpt2.encode("Hello, world")
[15496, 11, 995]
>>> gpt2.decode([15496, 11, 995])
'Hello, world'
"""

from __future__ import annotations

import functools
import json
import operator
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Literal

import tiktoken

from .machinery.checks import ArgumentValueError, check_instance, check_str, type_error, value_error
from .machinery.resources import resource_path

__all__ = [
    "split_words",
    "build_vocab",
    "SimpleTokenizerV1",
    "SimpleTokenizerV2",
    "UnknownWordError",
    "gpt2_tokenizer",
    "GPT2Encoding",
    "gpt2_byte_decoder",
    "GPT2_PATTERN",
    "ENDOFTEXT",
    "UNK",
]

ENDOFTEXT = "<|endoftext|>"
UNK = "<|unk|>"

# The book's split: these punctuation marks and "--" become words of their own; whitespace
# separates words and is then dropped.
_SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
# Decoding joins words with single spaces, then removes the space before these marks: the book's
# V1 keeps it before ":" and ";" ("'way up ; but"), its V2 removes it there too.
_V1_SPACE_BEFORE = re.compile(r'\s+([,.?!"()\'])')
_V2_SPACE_BEFORE = re.compile(r'\s+([,.:;?!"()\'])')

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


@functools.lru_cache(maxsize=16)
def _special_regex(names: frozenset[str]) -> re.Pattern:
    return re.compile("|".join(map(re.escape, sorted(names, key=len, reverse=True))))


class GPT2Encoding(tiktoken.Encoding):
    """tiktoken's ``Encoding`` whose ``encode`` and ``decode`` name a bad argument clearly.

    Plain tiktoken raises a ``KeyError`` or an ``OverflowError`` from deep inside its Rust core.
    """

    def _check_ids(self, tokens: Sequence[int]) -> list[int]:
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
            raise type_error("tokens", f"tokens must be a sequence of int token ids, got "
                                       f"{type(tokens).__name__}")
        ids = []
        for position, token in enumerate(tokens):
            try:
                if isinstance(token, bool):
                    raise TypeError
                ids.append(operator.index(token))  # ints, numpy ints, one-element int tensors
            except TypeError:
                raise type_error("tokens", f"tokens[{position}] must be an int token id, got "
                                           f"{token!r}") from None
            if not 0 <= ids[-1] < self.n_vocab:
                raise value_error("tokens", f"tokens[{position}] = {ids[-1]} is not a token id: "
                                            f"ids must be in [0, {self.n_vocab})")
        return ids

    def encode(self, text: str, *, allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
               disallowed_special: Literal["all"] | Collection[str] = "all") -> list[int]:
        """tiktoken's ``encode``, with ``text`` checked and a disallowed special token named."""
        check_str("text", text, empty=True)
        allowed = self.special_tokens_set if allowed_special == "all" else set(allowed_special)
        disallowed = (self.special_tokens_set - allowed if disallowed_special == "all"
                      else set(disallowed_special))
        found = disallowed and _special_regex(frozenset(disallowed)).search(text)
        if found:
            raise value_error("text", f"text contains the special token {found.group()!r}, which "
                                      f"is disallowed: pass it in allowed_special to encode it "
                                      f"as a special token, or disallowed_special=() to encode "
                                      f"it as ordinary text")
        return super().encode(text, allowed_special=allowed_special,
                              disallowed_special=disallowed_special)

    def encode_ordinary(self, text: str) -> list[int]:
        check_str("text", text, empty=True)
        return super().encode_ordinary(text)

    def decode_bytes(self, tokens: Sequence[int]) -> bytes:
        return super().decode_bytes(self._check_ids(tokens))

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        return super().decode(self._check_ids(tokens), errors=errors)


@functools.cache
def gpt2_tokenizer() -> GPT2Encoding:
    """tiktoken's ``gpt2`` encoding (50,257 tokens, ``<|endoftext|>`` = 50256), built offline."""
    return GPT2Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_gpt2_mergeable_ranks(),
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )


def split_words(text: str) -> list[str]:
    """Split ``text`` into words and punctuation; ``--`` stays whole, whitespace is dropped."""
    check_str("text", text, empty=True)
    return [item for item in _SPLIT.split(text) if item and not item.isspace()]


def build_vocab(text: str, special_tokens: Iterable[str] = ()) -> dict[str, int]:
    """Number the sorted unique words of ``text``, then the ``special_tokens`` not yet present.

    The book's chapter 2 vocabulary is ``build_vocab(text, special_tokens=[ENDOFTEXT, UNK])``.
    """
    if isinstance(special_tokens, str) or not isinstance(special_tokens, Iterable):
        raise type_error("special_tokens", f"special_tokens must be an iterable of str, got "
                                           f"{type(special_tokens).__name__}")
    special_tokens = list(special_tokens)
    for special in special_tokens:
        if not isinstance(special, str):
            raise type_error("special_tokens", f"special_tokens must hold only str, got "
                                               f"{special!r}")
    words = sorted(set(split_words(text)))
    known = set(words)
    for special in special_tokens:
        if special not in known:
            words.append(special)
            known.add(special)
    return {word: index for index, word in enumerate(words)}


class UnknownWordError(ArgumentValueError, KeyError):
    """A word outside ``SimpleTokenizerV1``'s vocabulary.

    A ``ValueError`` naming ``text`` like every bad argument here, and a ``KeyError`` like the
    book's V1 raises (its ``str_to_int[s]`` lookup), so a reader's ``except KeyError`` still
    catches it.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError would quote the message


class SimpleTokenizerV1:
    """Words to ids through a fixed vocabulary; an unknown word is an error.

    ``decode`` joins the words with single spaces, then removes the space before
    ``, . ? ! " ( ) '`` (as the book's V1 does; V2 also before ``:`` and ``;``): so
    ``decode(encode(text))`` is ``text`` with its whitespace normalised that way (``"It's"``
    comes back as ``"It' s"``).
    """

    _space_before = _V1_SPACE_BEFORE

    def __init__(self, vocab: Mapping[str, int]) -> None:
        check_instance("vocab", vocab, Mapping, "a mapping from str to int")
        for word, index in vocab.items():
            if not isinstance(word, str) or not isinstance(index, int) or isinstance(index, bool):
                raise type_error("vocab", f"vocab must map str to int, got the entry {word!r}: "
                                          f"{index!r}")
            if index < 0:
                raise value_error("vocab", f"vocab ids must be >= 0, got {word!r}: {index}")
        self.str_to_int = dict(vocab)
        self.int_to_str = {index: word for word, index in vocab.items()}
        if len(self.int_to_str) != len(self.str_to_int):
            raise value_error("vocab", "vocab must give every word its own id, got repeated ids")

    def _words(self, text: str) -> list[str]:
        return split_words(text)

    def _id_range(self) -> str:
        if not self.int_to_str:
            return "but the vocabulary is empty"
        return f"not an id of the vocabulary (ids {min(self.int_to_str)}..{max(self.int_to_str)})"

    def encode(self, text: str) -> list[int]:
        """The ids of the words of ``text``; an unknown word raises ``UnknownWordError``."""
        ids = []
        for word in self._words(text):
            if word not in self.str_to_int:
                raise UnknownWordError("text", f"text contains the word {word!r}, which is not "
                                               "in the vocabulary")
            ids.append(self.str_to_int[word])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """The words of ``ids`` joined by spaces, without the space before punctuation."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise type_error("ids", f"ids must be an iterable of int ids, got "
                                    f"{type(ids).__name__}")
        words = []
        for token_id in ids:
            try:
                if isinstance(token_id, bool):
                    raise TypeError
                token_id = operator.index(token_id)
            except TypeError:
                raise type_error("ids", f"ids must hold integers, got {token_id!r}") from None
            if token_id not in self.int_to_str:
                raise value_error("ids", f"ids contains {token_id}, {self._id_range()}")
            words.append(self.int_to_str[token_id])
        return self._space_before.sub(r"\1", " ".join(words))


class SimpleTokenizerV2(SimpleTokenizerV1):
    """``SimpleTokenizerV1`` that never fails: unknown words become ``<|unk|>``.

    Special tokens of the vocabulary (``<|...|>`` entries such as ``<|endoftext|>``) are cut out
    of the text before splitting, so documents joined with ``<|endoftext|>`` keep it whole even
    without spaces around it. ``decode`` also removes the space before ``:`` and ``;``.
    """

    _space_before = _V2_SPACE_BEFORE

    def __init__(self, vocab: Mapping[str, int]) -> None:
        super().__init__(vocab)
        if UNK not in self.str_to_int:
            raise value_error("vocab", f"vocab must contain the unknown-word token {UNK!r}")
        # No special can be a prefix of another (each ends at its first "|>"), so order is moot.
        specials = [w for w in self.str_to_int if re.fullmatch(r"<\|[^|]*\|>", w)]
        self._specials = re.compile("(" + "|".join(map(re.escape, specials)) + ")")

    def _words(self, text: str) -> list[str]:
        check_str("text", text, empty=True)
        words = []
        for index, piece in enumerate(self._specials.split(text)):
            # re.split puts the captured special tokens at the odd positions.
            words.extend([piece] if index % 2 else split_words(piece))
        return words

    def encode(self, text: str) -> list[int]:
        """The ids of the words of ``text``, with ``<|unk|>``'s id for every unknown word."""
        unk = self.str_to_int[UNK]
        return [self.str_to_int.get(word, unk) for word in self._words(text)]
