"""Byte-pair encoding from scratch (chapter 2's BPE, opened up): ``BPETokenizer``.

A byte-level BPE tokenizer that learns its own merges from a corpus, or loads GPT-2's, in which
case it encodes every text exactly as ``tiktoken``'s ``gpt2`` encoding does. It has tiktoken's
call shapes (``encode(text, allowed_special=...)``, ``decode(ids)``, ``n_vocab``, ``eot_token``),
so it plugs in wherever the project takes a tokenizer.

- ``BPETokenizer.train(text, vocab_size)``: 256 byte tokens, GPT-2's pre-tokenization (or any
  ``pattern``: Llama 3's, Qwen's), then the most frequent adjacent pair is merged into a new token
  until the vocabulary is full.
- ``BPETokenizer.gpt2()``: GPT-2's 50,257 tokens from the bundled ``encoder.json``/``vocab.bpe``.
- ``save(directory)`` / ``BPETokenizer.load(directory)``: GPT-2's own two-file format (plus
  ``pattern.txt`` when the pre-tokenization pattern is not GPT-2's).

>>> from gpt_components.machinery.resources import load_text
>>> tok = BPETokenizer.train(load_text("the-verdict.txt"), vocab_size=300)
>>> tok.n_vocab, tok.eot_token
(300, 299)
>>> tok.decode(tok.encode("Jack Gisburn's <|endoftext|>", allowed_special="all"))
"Jack Gisburn's <|endoftext|>"
>>> BPETokenizer.gpt2().encode("Hello, world")
[15496, 11, 995]
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import regex

from .bpe_files import bundled_gpt2_files, read_gpt2_files, write_gpt2_files
from .bpe_merges import learn_merges
from .machinery.checks import check_instance, check_int, check_str, type_error, value_error
from .tokenizers import ENDOFTEXT, GPT2_PATTERN

__all__ = ["BPETokenizer"]

# GPT-2's two files have no place for the pattern; another pattern is saved beside them.
_PATTERN_FILE = "pattern.txt"


class _ChunkCache(dict):
    """Pre-token string -> token ids; a miss runs the merge loop once and remembers the answer."""

    def __init__(self, encode_chunk: Callable[[bytes], list[int]]):
        super().__init__()
        self._encode_chunk = encode_chunk

    def __missing__(self, chunk: str) -> list[int]:
        ids = self[chunk] = self._encode_chunk(chunk.encode("utf-8"))
        return ids


class BPETokenizer:
    """Byte-level BPE with a regex pre-tokenization (GPT-2's by default) and tiktoken's rule.

    ``mergeable_ranks`` maps every ordinary token's bytes to its id, which is also its merge
    priority (lower merges first); it holds all 256 single bytes. ``merges`` lists the learned
    pairs in order and must make every multi-byte token (GPT-2's files tell ordinary tokens from
    specials that way; encoding itself needs only the ranks). ``special_tokens`` maps names such
    as ``"<|endoftext|>"`` to ids. Together the ids must be exactly ``0 .. n_vocab - 1``.
    ``pattern`` is the pre-tokenization regex (``regex`` module syntax, as tiktoken's ``pat_str``):
    text is cut into its matches and no token crosses a cut; like tiktoken, characters that no
    match covers are dropped, so a pattern must cover every text (GPT-2's, Llama 3's, Qwen's do).

    Each tokenizer remembers the ids of every pre-token it has encoded (a dict that grows with
    the number of distinct words seen), so text made of known words costs no Python per character.
    """

    def __init__(
        self,
        mergeable_ranks: Mapping[bytes, int],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
        *,
        name: str | None = None,
        pattern: str = GPT2_PATTERN,
    ) -> None:
        check_instance("mergeable_ranks", mergeable_ranks, Mapping, "a mapping bytes -> int")
        for token, rank in mergeable_ranks.items():
            if not isinstance(token, bytes) or isinstance(rank, bool) or not isinstance(rank, int):
                raise type_error("mergeable_ranks", f"mergeable_ranks must map bytes to int ids, "
                                                    f"got the entry {token!r}: {rank!r}")
        if isinstance(merges, (str, bytes)) or not isinstance(merges, Iterable):
            raise type_error("merges", f"merges must be a sequence of (bytes, bytes) pairs, got "
                                       f"{type(merges).__name__}")
        merges = tuple(merges)
        for pair in merges:
            if not (isinstance(pair, tuple) and len(pair) == 2
                    and all(isinstance(part, bytes) for part in pair)):
                raise type_error("merges", f"merges must hold (bytes, bytes) pairs, got {pair!r}")
        if special_tokens is not None:
            check_instance("special_tokens", special_tokens, Mapping, "a mapping str -> int")
            for token, rank in special_tokens.items():
                if not isinstance(token, str) or isinstance(rank, bool) \
                        or not isinstance(rank, int):
                    raise type_error("special_tokens", f"special_tokens must map str names to "
                                                       f"int ids, got {token!r}: {rank!r}")
        check_str("name", name, optional=True)
        special_tokens = dict(special_tokens or {})
        self._name = name
        self._pattern = pattern
        self._pretokenizer = _compile_pattern(pattern)
        self._ranks = dict(mergeable_ranks)
        self._merges = merges
        self._special_tokens = special_tokens
        _check_vocabulary(self._ranks, self._merges, special_tokens)
        self._decoder: list[bytes] = [b""] * (len(self._ranks) + len(special_tokens))
        for token, rank in self._ranks.items():
            self._decoder[rank] = token
        for name, rank in special_tokens.items():
            self._decoder[rank] = name.encode("utf-8")
        self._cache = _ChunkCache(self._encode_chunk)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        *,
        min_frequency: int = 2,
        pattern: str = GPT2_PATTERN,
    ) -> BPETokenizer:
        """Learn merges from ``text`` until the vocabulary has ``vocab_size`` entries.

        Ids 0-255 are the bytes, each learned merge takes the next id and the special tokens take
        the last ids. Each step merges the pair of adjacent tokens that occurs most often inside
        pre-tokens (overlapping occurrences such as ``aaa`` count twice); ties go to the smallest
        pair of ids ``(left, right)``. Training stops early, with fewer than ``vocab_size``
        entries, once no pair occurs ``min_frequency`` times. Special tokens found in ``text``
        are cut out of it: no merge spans or enters them. Merges never cross the pre-tokens
        that ``pattern`` cuts (GPT-2's by default; ``modern.tokenizers.LLAMA3_PATTERN`` for
        Llama 3's).
        """
        check_str("text", text, empty=True)
        specials = _check_special_names(special_tokens)
        check_int("min_frequency", min_frequency, low=1)
        check_int("vocab_size", vocab_size, low=256 + len(specials))
        pretokenizer = _compile_pattern(pattern)
        # Learn from the text as encode will see it: lone surrogates become U+FFFD.
        pieces = _split_on_specials(_without_surrogates(text), specials)
        chunk_counts = Counter(itertools.chain.from_iterable(map(pretokenizer.findall, pieces)))
        vocab, merges = learn_merges(chunk_counts, vocab_size - len(specials), min_frequency)
        ranks = {token: rank for rank, token in enumerate(vocab)}
        special_ids = {name: len(vocab) + i for i, name in enumerate(specials)}
        return cls(ranks, [(vocab[a], vocab[b]) for a, b in merges], special_ids,
                   pattern=pattern)

    @classmethod
    def gpt2(cls) -> BPETokenizer:
        """GPT-2's tokenizer (50,257 tokens, ``<|endoftext|>`` = 50256) from the bundled files.

        Each call returns a new tokenizer with an empty chunk cache; the parsed files are shared.
        """
        return cls(*bundled_gpt2_files(), name="gpt2")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BPETokenizer:
        """Read ``encoder.json`` and ``vocab.bpe`` (GPT-2's format) from ``directory``, and the
        pre-tokenization pattern from ``pattern.txt`` if there is one (else GPT-2's)."""
        check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
        directory = Path(directory)
        pattern_path = directory / _PATTERN_FILE
        pattern = (pattern_path.read_text(encoding="utf-8") if pattern_path.is_file()
                   else GPT2_PATTERN)
        return cls(*read_gpt2_files(directory), pattern=pattern)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``encoder.json`` and ``vocab.bpe`` in GPT-2's format; returns the directory.

        See ``bpe_files`` for the format. A pattern other than GPT-2's goes to ``pattern.txt``.
        """
        directory = write_gpt2_files(directory, self._ranks, self._merges, self._special_tokens)
        pattern_path = directory / _PATTERN_FILE
        if self._pattern != GPT2_PATTERN:
            pattern_path.write_text(self._pattern, encoding="utf-8")
        else:
            pattern_path.unlink(missing_ok=True)
        return directory

    # -- what the tokenizer knows ---------------------------------------------------------------

    @property
    def name(self) -> str:
        """``"gpt2"`` for ``gpt2()``, else ``bpe-<n_vocab>-<fingerprint>``: equal names, equal
        vocabularies and patterns, so caches of token ids can be keyed by it."""
        if self._name is None:
            fields = (sorted(self._ranks.items(), key=lambda item: item[1]),
                      sorted(self._special_tokens.items()))
            if self._pattern != GPT2_PATTERN:  # GPT-2-pattern names stay what they were
                fields += (self._pattern,)
            content = repr(fields)
            digest = hashlib.sha256(content.encode("utf-8")).hexdigest()[:12]
            self._name = f"bpe-{self.n_vocab}-{digest}"
        return self._name

    @property
    def n_vocab(self) -> int:
        """Number of token ids, ordinary and special."""
        return len(self._decoder)

    @property
    def max_token_value(self) -> int:
        return len(self._decoder) - 1

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>``; an AttributeError when the tokenizer has no such special."""
        if ENDOFTEXT not in self._special_tokens:
            raise AttributeError(f"this tokenizer has no {ENDOFTEXT} special token")
        return self._special_tokens[ENDOFTEXT]

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._special_tokens)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Every ordinary token's bytes and its id (= merge priority), as tiktoken takes them."""
        return dict(self._ranks)

    @property
    def merges(self) -> tuple[tuple[bytes, bytes], ...]:
        """The learned pairs, in the order they were merged."""
        return self._merges

    @property
    def pattern(self) -> str:
        """The pre-tokenization regex (tiktoken's ``pat_str``)."""
        return self._pattern

    def __repr__(self) -> str:
        return (f"BPETokenizer(name={self.name!r}, n_vocab={self.n_vocab}, "
                f"merges={len(self._merges)}, "
                f"special_tokens={sorted(self._special_tokens)})")

    # -- encoding -------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, reading special-token names as ordinary text."""
        check_str("text", text, empty=True)
        return self._encode_ordinary(_without_surrogates(text))

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of ``text``, with tiktoken's rules for special tokens.

        A special token named in ``allowed_special`` becomes its own id and is never split; one
        named in ``disallowed_special`` (by default every special not allowed) raises ValueError;
        any other is encoded as ordinary text.
        """
        check_str("text", text, empty=True)
        allowed = self._special_subset("allowed_special", allowed_special)
        if disallowed_special == "all":
            disallowed = self.special_tokens_set - allowed
        else:
            disallowed = self._special_subset("disallowed_special", disallowed_special)
        text = _without_surrogates(text)
        if disallowed and (found := _special_regex(frozenset(disallowed)).search(text)):
            raise value_error("text", f"text contains the special token {found.group()!r}, which "
                                      f"is disallowed: pass it in allowed_special to encode it as "
                                      f"a special token, or disallowed_special=() to encode it "
                                      f"as ordinary text")
        if not allowed:
            return self._encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for found in _special_regex(frozenset(allowed)).finditer(text):
            ids += self._encode_ordinary(text[start:found.start()])
            ids.append(self._special_tokens[found.group()])
            start = found.end()
        ids += self._encode_ordinary(text[start:])
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        # Cache hits (nearly every chunk of real text) stay inside C: findall, dict lookups, chain.
        chunks = self._pretokenizer.findall(text)
        return list(itertools.chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def _encode_chunk(self, piece: bytes) -> list[int]:
        """tiktoken's merge rule: join the adjacent pair whose joined bytes have the lowest rank
        (the leftmost one on a tie) until no joined pair is a token."""
        ranks = self._ranks
        whole = ranks.get(piece)
        if whole is not None:
            return [whole]
        parts = [piece[i:i + 1] for i in range(len(piece))]
        # pair_ranks[i]: rank of parts[i] + parts[i + 1], or None when that is not a token.
        pair_ranks = [ranks.get(piece[i:i + 2]) for i in range(len(piece) - 1)]
        while True:
            best, best_rank = -1, None
            for i, rank in enumerate(pair_ranks):
                if rank is not None and (best_rank is None or rank < best_rank):
                    best, best_rank = i, rank
            if best < 0:
                return [ranks[part] for part in parts]
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
            del pair_ranks[best]
            if best > 0:
                pair_ranks[best - 1] = ranks.get(parts[best - 1] + parts[best])
            if best < len(parts) - 1:
                pair_ranks[best] = ranks.get(parts[best] + parts[best + 1])

    def _special_subset(self, name: str, value: object) -> set[str]:
        if isinstance(value, str) and value == "all":
            return self.special_tokens_set
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise type_error(name, f"{name} must be 'all' or a collection of special-token "
                                   f"names, got {value!r}")
        chosen = set(value)
        unknown = sorted(map(repr, chosen - self.special_tokens_set))
        if unknown:
            raise value_error(name, f"{name} names unknown special tokens {', '.join(unknown)}; "
                                    f"this tokenizer's are {sorted(self._special_tokens)}")
        return chosen

    # -- decoding -------------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids stand for, joined."""
        ids = self._check_ids(ids)
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except TypeError:
            bad = next(t for t in ids if not hasattr(t, "__index__"))
            raise type_error("ids", f"ids must hold ints, got {bad!r}") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """Text of the ids; byte sequences that are not UTF-8 become U+FFFD, as in tiktoken."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    def decode_single_token_bytes(self, token: int) -> bytes:
        return self.decode_bytes([token])

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise type_error("ids", f"ids must be an iterable of ints, got {type(ids).__name__}")
        ids = list(ids)
        try:
            in_range = not ids or (min(ids) >= 0 and max(ids) < self.n_vocab)
        except TypeError:
            in_range = False
        if not in_range:
            for token in ids:
                if isinstance(token, bool) or not hasattr(token, "__index__"):
                    raise type_error("ids", f"ids must hold ints, got {token!r}")
                if not 0 <= token < self.n_vocab:
                    raise value_error("ids", f"ids must lie in [0, {self.n_vocab}), got id "
                                             f"{int(token)}")
        return ids


# -- helpers -------------------------------------------------------------------------------------


def _compile_pattern(pattern: object) -> regex.Pattern:
    if not isinstance(pattern, str):
        raise type_error("pattern", f"pattern must be a regex string, got "
                                    f"{type(pattern).__name__}")
    return _compile_str(pattern)


@functools.lru_cache(maxsize=16)
def _compile_str(pattern: str) -> regex.Pattern:
    try:
        compiled = regex.compile(pattern)
    except regex.error as error:
        raise value_error("pattern", f"pattern must be a valid regex, got {pattern!r}: "
                                     f"{error}") from None
    if compiled.fullmatch("") is not None:
        raise value_error("pattern", f"pattern must not match the empty string, got "
                                     f"{pattern!r}")
    return compiled


@functools.lru_cache(maxsize=64)
def _special_regex(names: frozenset[str]) -> regex.Pattern:
    # Longest first, so a name that extends another wins where both match.
    return regex.compile("|".join(regex.escape(n) for n in sorted(names, key=(lambda n: -len(n)))))


def _split_on_specials(text: str, specials: Sequence[str]) -> list[str]:
    return _special_regex(frozenset(specials)).split(text) if specials else [text]


def _without_surrogates(text: str) -> str:
    """tiktoken's repair for strings that UTF-8 cannot encode: lone surrogates become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _check_special_names(special_tokens: object) -> list[str]:
    if isinstance(special_tokens, str) or not isinstance(special_tokens, Iterable):
        raise type_error("special_tokens", f"special_tokens must be a sequence of strings, got "
                                           f"{special_tokens!r}")
    names = list(special_tokens)
    for name in names:
        if not isinstance(name, str):
            raise type_error("special_tokens", f"special_tokens must hold non-empty strings, "
                                               f"got {name!r}")
        if not name:
            raise value_error("special_tokens", "special_tokens must hold non-empty strings, "
                                                "got ''")
    if len(set(names)) != len(names):
        raise value_error("special_tokens", f"special_tokens must not repeat a name, got {names}")
    return names


def _check_vocabulary(ranks, merges, special_tokens) -> None:
    ids = sorted(itertools.chain(ranks.values(), special_tokens.values()))
    if ids != list(range(len(ids))):
        raise value_error("mergeable_ranks", f"mergeable_ranks and special_tokens must use "
                                             f"each id in 0 .. {len(ids) - 1} exactly once")
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise value_error("mergeable_ranks", f"mergeable_ranks must hold all 256 single bytes; "
                                             f"missing {missing[:5]}")
    for left, right in merges:
        if left not in ranks or right not in ranks or left + right not in ranks:
            raise value_error("merges", f"merges holds ({left!r}, {right!r}), whose parts or "
                                        f"result are not in mergeable_ranks")
    # GPT-2's files tell ordinary tokens from specials by the merges, so every one needs its merge.
    unmade = {token for token in ranks if len(token) > 1} - {a + b for a, b in merges}
    if unmade:
        raise value_error("merges", f"merges must produce every multi-byte token of "
                                    f"mergeable_ranks; none makes {sorted(unmade)[:3]}")
