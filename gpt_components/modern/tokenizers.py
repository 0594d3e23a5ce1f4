"""Tokenizers of real Llama 3 and Qwen3 weights, with the call shapes the project uses.

Both families use byte-level BPE like GPT-2, with a different pre-tokenization pattern and more
special tokens; they ship it in two file formats:

- Llama 3's ``tokenizer.model`` (Meta's original download, ``original/`` in a Hugging Face repo)
  is tiktoken's format: one ``base64(token bytes) rank`` pair per line, 128,000 ranks. The 256
  special tokens are not in the file: they take the ids after the last rank, in the order
  ``LLAMA3_SPECIAL_TOKENS`` lists. ``llama3_tokenizer(path)`` builds a tiktoken ``Encoding``.
- Qwen3's ``tokenizer.json`` (Hugging Face's ``tokenizers`` format: vocabulary, merges,
  normalizer, pre-tokenizer, added tokens) is read by the ``tokenizers`` library:
  ``HFTokenizer.from_file(path)``.

Both answer like tiktoken (``encode(text, allowed_special=..., disallowed_special=...)``,
``encode_ordinary``, ``decode``, ``n_vocab``, ``eot_token``, ``special_tokens_set``, ``name``),
so training, the corpus cache and generation take them unchanged. ``load_tokenizer(directory)``
picks the right one for a downloaded model directory; each one's ``save(directory)`` writes its
file back (beside finetuned weights, see ``gpt_components.machinery.sources``). Chat formats live in
``modern.chat``.

>>> import regex
>>> regex.findall(LLAMA3_PATTERN, "I'll pay 12345 dollars!\\n")
['I', "'ll", ' pay', ' ', '123', '45', ' dollars', '!\\n']
>>> regex.findall(QWEN2_PATTERN, "12345")
['1', '2', '3', '4', '5']
>>> LLAMA3_SPECIAL_TOKENS[:2], len(LLAMA3_SPECIAL_TOKENS), LLAMA3_SPECIAL_TOKENS.index("<|eot_id|>")
(['<|begin_of_text|>', '<|end_of_text|>'], 256, 9)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import regex

from ..bpe import _without_surrogates
from ..machinery.checks import check_choice, check_instance, check_str, type_error, value_error
from ..tokenizers import GPT2Encoding

__all__ = [
    "LLAMA3_PATTERN",
    "QWEN2_PATTERN",
    "LLAMA3_SPECIAL_TOKENS",
    "Llama3Encoding",
    "HFTokenizer",
    "read_tiktoken_model",
    "llama3_tokenizer",
    "load_tokenizer",
]

# Llama 3's pre-tokenization (Meta's tokenizer.py): contractions in any case, a letter run with at
# most one non-letter before it, digit runs cut into threes, symbol runs with the newlines after
# them, newline runs, then other whitespace (a run before a word leaves its last space to it).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's and Qwen3's: Llama 3's with every digit a pre-token of its own.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3.1 / 3.2's 256 special tokens, ids 128,000 + position. Llama 3.0 names the slots of
# finetune_right_pad_id, eom_id and python_tag (and of reserved 2 and 3) as reserved tokens; the
# ids of the chat tokens (begin/end of text, headers, eot) are the same in every version.
LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of a message that waits for a tool's answer
    "<|eot_id|>",  # end of a turn
    "<|python_tag|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(3, 248)),
]
# The token that separates documents, per family (the corpus puts it between files).
_END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# -- Llama 3: tiktoken's file format -------------------------------------------------------------


def read_tiktoken_model(path: str | os.PathLike[str]) -> dict[bytes, int]:
    """The mergeable ranks of a tiktoken-format file (``base64 rank`` per line).

    The ranks must be ``0 .. n - 1``, each once, and hold all 256 single bytes (so any text
    encodes); a line that is not ``base64 integer`` raises ValueError naming its number.
    """
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    path = Path(path)
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            try:
                token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
                if len(fields) != 2:
                    raise ValueError
            except (IndexError, ValueError, binascii.Error):
                raise value_error("path", f"path: {str(path)!r} is not a tiktoken file: line "
                                          f"{number} must be '<base64 token> <rank>', got "
                                          f"{line[:60]!r}") from None
            if token in ranks:
                raise value_error("path", f"path: {str(path)!r} lists the token {token!r} twice "
                                          f"(line {number})")
            ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise value_error("path", f"path: {str(path)!r} must rank its {len(ranks)} tokens 0 .. "
                                  f"{len(ranks) - 1}, each rank once")
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise value_error("path", f"path: {str(path)!r} must hold all 256 single bytes; missing "
                                  f"{missing[:5]}")
    return ranks


class Llama3Encoding(GPT2Encoding):
    """tiktoken's ``Encoding`` for Llama 3: ``eot_token`` is ``<|end_of_text|>``.

    (tiktoken's own ``eot_token`` looks up ``<|endoftext|>``, which Llama 3 does not have.)
    ``decode`` rejects ids outside the vocabulary with a ValueError, as ``GPT2Encoding`` does.
    """

    @property
    def eot_token(self) -> int:
        return self._special_tokens["<|end_of_text|>"]

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.model`` (the ranks in tiktoken's format, in rank order) into
        ``directory``, which ``load_tokenizer`` reads back as this tokenizer; returns it."""
        check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ranks = sorted(self._mergeable_ranks.items(), key=lambda item: item[1])
        lines = b"".join(base64.b64encode(token) + b" %d\n" % rank for token, rank in ranks)
        (directory / "tokenizer.model").write_bytes(lines)
        return directory


def llama3_tokenizer(path: str | os.PathLike[str]) -> Llama3Encoding:
    """Llama 3's tokenizer from its ``tokenizer.model``: the file's ranks, ``LLAMA3_PATTERN``,
    and ``LLAMA3_SPECIAL_TOKENS`` numbered from the rank count on (128,000 for the real file).

    Its name, ``llama3-<fingerprint of the file>``, identifies the vocabulary for the corpus cache.
    """
    check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
    path = Path(path)
    ranks = read_tiktoken_model(path)
    specials = {name: len(ranks) + i for i, name in enumerate(LLAMA3_SPECIAL_TOKENS)}
    return Llama3Encoding(name=f"llama3-{_digest(path)}", pat_str=LLAMA3_PATTERN,
                          mergeable_ranks=ranks, special_tokens=specials,
                          explicit_n_vocab=len(ranks) + len(specials))


# -- Qwen3 (and any tokenizer.json): the tokenizers library ---------------------------------------


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (``tokenizer.json``) with tiktoken's call shapes.

    Special tokens are the file's added tokens marked ``special`` (Qwen3's ``<|endoftext|>``,
    ``<|im_start|>``, ``<|im_end|>``, ...); the ones not marked special (Qwen3's ``<think>``,
    ``</think>``, ``<tool_call>``) are ordinary vocabulary, matched wherever they occur, as the
    library does. ``encode`` adds nothing (no BOS, no post-processing): only the text's tokens.
    """

    def __init__(self, tokenizer: Any, *, name: str, eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer

        check_instance("tokenizer", tokenizer, Tokenizer, "a tokenizers.Tokenizer")
        check_str("name", name)
        check_str("eos_token", eos_token, optional=True)
        # A copy that reads special-token names as text: encode() cuts the allowed ones out first.
        self._ordinary = Tokenizer.from_str(tokenizer.to_str())
        self._ordinary.encode_special_tokens = True
        self._decoder = tokenizer
        self._config: str | None = None  # the text of the tokenizer_config.json read with it
        self.name = name
        added = tokenizer.get_added_tokens_decoder()
        self._special_tokens = {t.content: i for i, t in added.items() if t.special}
        self._n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        ends = [t for t in _END_OF_TEXT if t in self._special_tokens]
        self._eot = ends[0] if ends else (eos_token if eos_token in self._special_tokens else None)
        self._split = (regex.compile("|".join(regex.escape(t) for t in
                                              sorted(self._special_tokens, key=len, reverse=True)))
                       if self._special_tokens else None)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        """Read ``tokenizer.json``; ``tokenizer_config.json`` beside it, if any, names the EOS
        token (used as ``eot_token`` when there is no ``<|endoftext|>``/``<|end_of_text|>``)."""
        from tokenizers import Tokenizer

        check_instance("path", path, (str, os.PathLike), "a path (str or os.PathLike)")
        path = Path(path)
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises its own Exception subclass
            raise value_error("path", f"path: {str(path)!r} is not a readable tokenizer.json: "
                                      f"{error}") from None
        eos = None
        config = path.with_name("tokenizer_config.json")
        if config.is_file():
            try:
                settings = json.loads(config.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise value_error("path", f"path: {str(config)!r} is not valid JSON: "
                                          f"{error}") from None
            eos = settings.get("eos_token") if isinstance(settings, dict) else None
            eos = eos.get("content") if isinstance(eos, dict) else eos
            eos = eos if isinstance(eos, str) and eos else None
        loaded = cls(tokenizer, name=f"hf-{_digest(path)}", eos_token=eos)
        loaded._config = config.read_text(encoding="utf-8") if config.is_file() else None
        return loaded

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json``, and ``tokenizer_config.json`` (the one read with it, or the
        end-of-text token's name as ``eos_token``), into ``directory``; returns it.
        ``from_file`` reads them back as this tokenizer."""
        check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._decoder.save(str(directory / "tokenizer.json"))
        config_file = directory / "tokenizer_config.json"
        if self._config is not None:
            config_file.write_text(self._config, encoding="utf-8")
        elif self._eot is not None:
            config_file.write_text(json.dumps({"eos_token": self._eot}) + "\n", encoding="utf-8")
        return directory

    # -- what the tokenizer knows ---------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        """Number of token ids, added tokens included (a model's ``vocab_size`` may be larger:
        Qwen3 pads its embedding to 151,936 rows for 151,669 tokens)."""
        return self._n_vocab

    @property
    def eot_token(self) -> int:
        """Id of the end-of-text special (``<|endoftext|>`` for Qwen3); AttributeError if none."""
        if self._eot is None:
            raise AttributeError("this tokenizer has no end-of-text special token")
        return self._special_tokens[self._eot]

    @property
    def special_tokens_set(self) -> set[str]:
        return set(self._special_tokens)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special_tokens)

    def __repr__(self) -> str:
        return (f"HFTokenizer(name={self.name!r}, n_vocab={self.n_vocab}, "
                f"special_tokens={len(self._special_tokens)})")

    # -- encoding -------------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text``, reading special-token names as ordinary text."""
        check_str("text", text, empty=True)
        return self._encode_ordinary(_without_surrogates(text))

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._ordinary.encode(text, add_special_tokens=False).ids if text else []

    def encode(
        self,
        text: str,
        *,
        allowed_special: Literal["all"] | Collection[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of ``text``, with tiktoken's rules for special tokens.

        A special named in ``allowed_special`` becomes its id; one named in
        ``disallowed_special`` (by default every special not allowed) raises ValueError; any
        other is read as ordinary text. Names the tokenizer does not have are ignored, as in
        tiktoken, so callers can allow ``<|endoftext|>`` whatever the family.
        """
        check_str("text", text, empty=True)
        allowed = self._names("allowed_special", allowed_special)
        disallowed = (self.special_tokens_set - allowed if disallowed_special == "all"
                      else self._names("disallowed_special", disallowed_special))
        text = _without_surrogates(text)
        found = list(self._split.finditer(text)) if self._split is not None else []
        for match in found:
            if match.group() in disallowed:
                raise value_error("text", f"text contains the special token {match.group()!r}, "
                                          f"which is disallowed: pass it in allowed_special to "
                                          f"encode it as a special token, or "
                                          f"disallowed_special=() to encode it as ordinary text")
        ids: list[int] = []
        start = 0
        for match in found:
            if match.group() in allowed:
                ids += self._encode_ordinary(text[start:match.start()])
                ids.append(self._special_tokens[match.group()])
                start = match.end()
        return ids + self._encode_ordinary(text[start:])

    def _names(self, name: str, value: object) -> set[str]:
        if isinstance(value, str) and value == "all":
            return self.special_tokens_set
        if isinstance(value, str) or not isinstance(value, Iterable):
            raise type_error(name, f"{name} must be 'all' or a collection of special-token "
                                   f"names, got {value!r}")
        return set(value) & self.special_tokens_set

    # -- decoding -------------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int], errors: str = "replace") -> str:
        """Text of the ids, special tokens included; bytes that are not UTF-8 become U+FFFD."""
        check_choice("errors", errors, ("replace",))  # the tokenizers library's only mode
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
            raise type_error("tokens", f"tokens must be a sequence of int token ids, got "
                                       f"{type(tokens).__name__}")
        tokens = list(tokens)
        for position, token in enumerate(tokens):
            if isinstance(token, bool) or not hasattr(token, "__index__"):
                raise type_error("tokens", f"tokens must hold ints, got {token!r}")
            if not 0 <= token < self._n_vocab:
                raise value_error("tokens", f"tokens[{position}] = {token} is not a token id: "
                                            f"ids must be in [0, {self._n_vocab})")
        return self._decoder.decode([int(t) for t in tokens], skip_special_tokens=False)


# -- which tokenizer a model directory holds -----------------------------------------------------


def _is_tiktoken_file(path: Path) -> bool:
    """True when the first line reads ``base64 integer`` (SentencePiece models are binary)."""
    with open(path, "rb") as f:
        first = f.readline().split()
    try:
        base64.b64decode(first[0], validate=True)
        int(first[1])
    except (IndexError, ValueError, binascii.Error):
        return False
    return len(first) == 2


def load_tokenizer(directory: str | os.PathLike[str]) -> Llama3Encoding | HFTokenizer:
    """The tokenizer of a downloaded model directory (Hugging Face's layout or Meta's).

    Looks for, in order: a tiktoken-format ``tokenizer.model`` (Llama 3), ``tokenizer.json``
    (Qwen3, and Llama 3 as converted by Hugging Face), then ``original/tokenizer.model``.
    A SentencePiece ``tokenizer.model`` (Llama 2, Gemma) is not Llama 3's format and is skipped.
    """
    check_instance("directory", directory, (str, os.PathLike), "a path (str or os.PathLike)")
    directory = Path(directory)
    if not directory.is_dir():
        raise value_error("directory", f"directory must be a model directory, got "
                                       f"{str(directory)!r}")
    model_file, json_file = directory / "tokenizer.model", directory / "tokenizer.json"
    original = directory / "original" / "tokenizer.model"
    if model_file.is_file() and _is_tiktoken_file(model_file):
        return llama3_tokenizer(model_file)
    if json_file.is_file():
        return HFTokenizer.from_file(json_file)
    if original.is_file() and _is_tiktoken_file(original):
        return llama3_tokenizer(original)
    raise value_error("directory", f"directory {str(directory)!r} holds no tokenizer this "
                                   f"project reads: expected a tiktoken-format tokenizer.model "
                                   f"(Llama 3), tokenizer.json (Qwen3) or original/tokenizer.model")
