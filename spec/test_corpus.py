"""Properties of corpora: memory-mapped tokens, windows, splits, reuse and bad input."""

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpt_components.bpe import BPETokenizer
from gpt_components.corpus import TokenCorpus, TokenWindows, prepare_corpus
from gpt_components.machinery.resources import load_text
from gpt_components.tokenizers import gpt2_tokenizer

pytestmark = pytest.mark.ch05

VERDICT = load_text("the-verdict.txt")
TOK = gpt2_tokenizer()  # tiktoken's own encoder: the independent reference
EOT = "<|endoftext|>"

# Text with the features that could break chunked tokenization: newlines next to spaces,
# blank lines, contractions, digits, punctuation, non-ASCII letters and the end-of-text token.
texts = st.lists(
    st.sampled_from(["a", "b", " ", "c", "\n", "\n\n", " \n", "\n ", "'s", "T", "é", "9", ".",
                     "!", "-", "\t", "\r\n", EOT]),
    max_size=120,
).map("".join)


def _reference(text: str) -> list[int]:
    return TOK.encode(text, allowed_special={EOT})


class _CharTokenizer:
    """A tokenizer without tiktoken's keyword or an end-of-text token: one id per code point."""

    def __init__(self, n_vocab: int, name: str | None = None):
        self.n_vocab = n_vocab
        if name is not None:
            self.name = name

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]


class _Spy:
    """GPT-2's tokenizer with tiktoken's keywords but no list of specials, remembering the
    longest text it was asked to encode."""

    def __init__(self):
        self.name, self.n_vocab, self.eot_token = TOK.name, TOK.n_vocab, TOK.eot_token
        self.longest = 0

    def encode(self, text: str, *, allowed_special=frozenset(), disallowed_special="all"):
        self.longest = max(self.longest, len(text))
        return TOK.encode(text, allowed_special=allowed_special,
                          disallowed_special=disallowed_special)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_bytes(text.encode("utf-8"))
    return path


def _joined_reference(docs: dict[str, str]) -> list[int]:
    """tiktoken's ids of a folder's documents in name order, with end-of-text between them."""
    ids = []
    for i, name in enumerate(sorted(docs)):
        ids += ([TOK.eot_token] if i else []) + TOK.encode(docs[name])
    return ids


@given(text=texts, block_bytes=st.integers(1, 40))
@example(text=VERDICT[:3000], block_bytes=100)
def test_memory_mapped_corpus_yields_exactly_the_in_memory_tokens(text, block_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        source = _write(Path(tmp), "c.txt", text)
        corpus = prepare_corpus(source, TOK, Path(tmp) / "cache", block_bytes=block_bytes)
        assert isinstance(corpus.tokens, np.memmap) or len(corpus) == 0
        assert corpus.tokens.dtype == np.uint16
        assert not corpus.tokens.flags.writeable  # a cache is never written through
        assert corpus.tokens.tolist() == _reference(text)
        in_memory = TokenCorpus.from_text(text, TOK)
        assert in_memory.tokens.dtype == np.uint16
        assert in_memory.tokens.tolist() == _reference(text)
        assert in_memory.metadata == {"token_count": len(_reference(text)), "tokenizer": "gpt2"}
        assert corpus.metadata["token_count"] == len(_reference(text))


@given(lines=st.lists(st.text("abcxyz .,", min_size=1, max_size=12).map(lambda w: f"x{w}x"),
                      min_size=1, max_size=40),
       block_bytes=st.integers(1, 64))
def test_memory_is_bounded_by_the_block_size_not_the_file_size(lines, block_bytes):
    # With a safe split point at every line end, no text handed to the tokenizer is longer
    # than one block plus the line it ends in.
    text = "\n".join(lines)
    spy = _Spy()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = prepare_corpus(_write(Path(tmp), "c.txt", text), spy, Path(tmp) / "cache",
                                block_bytes=block_bytes)
        assert corpus.tokens.tolist() == _reference(text)
    assert spy.longest <= block_bytes + max(map(len, lines)) + 1


@given(n_vocab=st.sampled_from([128, 65535, 65536, 65537, 2**17]), data=st.data(),
       named=st.booleans())
def test_ids_are_kept_exactly_in_the_narrowest_dtype_for_any_tokenizer(n_vocab, data, named):
    # uint16 holds ids up to 65535, so a vocabulary of 65536 is the largest that fits in it.
    text = data.draw(st.text(st.characters(max_codepoint=n_vocab - 1, exclude_categories=["Cs"]),
                             max_size=30))
    tok = _CharTokenizer(n_vocab, name=f"chars/{n_vocab} (ü)" if named else None)
    dtype = np.uint16 if n_vocab <= 2**16 else np.uint32
    in_memory = TokenCorpus.from_text(text, tok)
    assert in_memory.tokens.dtype == dtype and in_memory.tokens.tolist() == list(map(ord, text))
    assert in_memory.metadata == {"token_count": len(text),
                                  "tokenizer": f"chars/{n_vocab} (ü)" if named else ""}
    with tempfile.TemporaryDirectory() as tmp:
        source = _write(Path(tmp), "c.txt", text)
        if not named:
            for name in (None, "", 42):
                if name is not None:
                    tok.name = name
                with pytest.raises(TypeError, match="^tokenizer must have a name .* got a "
                                                    "_CharTokenizer$"):
                    prepare_corpus(source, tok, Path(tmp) / "cache")
            return
        corpus = prepare_corpus(source, tok, Path(tmp) / "cache", block_bytes=7)
        assert corpus.tokens.dtype == dtype and corpus.tokens.tolist() == list(map(ord, text))
        assert corpus.metadata["dtype"] == np.dtype(dtype).name


@given(before=st.text("ab \né", max_size=20), bad=st.sampled_from(
           [b"\xff", b"\x80", b"\xc3", b"\xc3A", b"\xe2\x82", b"\xed\xa0\x80", b"\xf0\x9f"]),
       after=st.sampled_from(["", "tail", "\nmore text"]), block_bytes=st.integers(1, 8))
def test_bytes_that_are_not_utf8_are_named_with_their_file_and_offset(before, bad, after,
                                                                      block_bytes):
    data = before.encode("utf-8") + bad + after.encode("utf-8")
    with pytest.raises(UnicodeDecodeError) as reference:
        data.decode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "broken.txt"
        source.write_bytes(data)
        where = reference.value.start
        with pytest.raises(ValueError, match=rf"'{re.escape(str(source))}' is not UTF-8 text: "
                                             rf".* at byte {where}$"):
            prepare_corpus(source, TOK, Path(tmp) / "cache", block_bytes=block_bytes)


@given(docs=st.dictionaries(st.text(alphabet="ab9_-", min_size=1, max_size=5).map(
           lambda stem: f"{stem}.txt"), st.text(alphabet="xy z\n", min_size=1, max_size=30),
           min_size=1, max_size=4), data=st.data())
def test_a_directory_is_its_sorted_documents_joined_by_end_of_text(docs, data):
    # Files are written in a drawn order, so name order and creation order differ.
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for name in data.draw(st.permutations(list(docs))):
            _write(folder, name, docs[name])
        corpus = prepare_corpus(folder, TOK, Path(tmp) / "cache")
        assert corpus.tokens.tolist() == _joined_reference(docs)
        assert corpus.metadata["files"] == len(docs)
        # A tokenizer without an end-of-text token joins the documents with nothing.
        chars = prepare_corpus(folder, _CharTokenizer(128, "chars"), Path(tmp) / "cache")
        assert chars.tokens.tolist() == [ord(c) for name in sorted(docs) for c in docs[name]]


@settings(max_examples=30)
@given(states=st.lists(st.dictionaries(st.sampled_from(["a.txt", "b.txt", "ab.txt"]),
                                       st.text("ab.tx\n", min_size=1, max_size=8), min_size=1),
                       min_size=2, max_size=4))
@example(states=[{"a.txt": "xb.txty"}, {"a.txt": "x", "b.txt": "y"}])
@example(states=[{"a.txt": "ab", "b.txt": "c"}, {"a.txt": "a", "b.txt": "bc"}])
@example(states=[{"a.txt": "ab"}, {"a.txt": "ba"}, {"b.txt": "ba"}, {"a.txt": "b", "b.txt": "a"}])
def test_the_cache_never_serves_the_tokens_of_another_version_of_the_folder(states):
    # The folder is rewritten in place, one version after another, with one cache throughout.
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "docs", Path(tmp) / "cache"
        folder.mkdir()
        for state in states:
            for old in folder.iterdir():
                old.unlink()
            for name, text in state.items():
                _write(folder, name, text)
            assert prepare_corpus(folder, TOK, cache).tokens.tolist() == _joined_reference(state)


def test_other_special_token_names_in_a_corpus_are_read_as_text(tmp_path):
    tok = BPETokenizer.train(VERDICT[:3000], vocab_size=300,
                             special_tokens=(EOT, "<|pad|>"))
    text = f"I had <|pad|> always{EOT} thought Jack"
    corpus = prepare_corpus(_write(tmp_path, "c.txt", text), tok, tmp_path / "cache")
    expected = tok.encode(text, allowed_special={EOT}, disallowed_special=())
    assert corpus.tokens.tolist() == expected
    assert TokenCorpus.from_text(text, tok).tokens.tolist() == expected
    pad = tok.encode("<|pad|>", allowed_special="all")[0]
    assert tok.eot_token in expected and pad not in expected


def test_renaming_a_document_to_reorder_the_corpus_rebuilds_it(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    _write(folder, "a.txt", "first")
    _write(folder, "b.txt", "second")
    cache = tmp_path / "not" / "yet" / "made"
    before = prepare_corpus(folder, TOK, cache)
    assert before.tokens.tolist() == TOK.encode("first") + [TOK.eot_token] + TOK.encode("second")
    (folder / "a.txt").rename(folder / "c.txt")
    after = prepare_corpus(folder, TOK, cache)
    assert after.tokens.tolist() == TOK.encode("second") + [TOK.eot_token] + TOK.encode("first")


def test_a_tokenizer_retrained_in_place_never_reuses_the_old_ids(tmp_path):
    # Same vocabulary size, different merges: the cache is keyed by the tokenizer's
    # fingerprint, not by where it was loaded from.
    source = _write(tmp_path, "c.txt", VERDICT[:2000])
    cache = tmp_path / "cache"
    old = BPETokenizer.train(VERDICT[:3000], vocab_size=300)
    new = BPETokenizer.train(VERDICT[-3000:], vocab_size=300)
    for tok in (old, new):
        tok.save(tmp_path / "tokenizer")
        loaded = BPETokenizer.load(tmp_path / "tokenizer")
        assert prepare_corpus(source, loaded, cache).tokens.tolist() == tok.encode(VERDICT[:2000])
    assert old.encode(VERDICT[:2000]) != new.encode(VERDICT[:2000])
    # Both stay cached side by side: going back to the first does not tokenize again.
    first = Path(prepare_corpus(source, old, cache).tokens.filename)
    stamp = first.stat().st_mtime_ns
    prepare_corpus(source, new, cache)
    assert Path(prepare_corpus(source, old, cache).tokens.filename).stat().st_mtime_ns == stamp


def test_a_prepared_corpus_is_reused_until_its_source_changes(tmp_path):
    source = _write(tmp_path, "c.txt", "one two three\nfour")
    first = prepare_corpus(source, TOK, tmp_path / "cache")
    token_file = Path(first.tokens.filename)
    stamp = token_file.stat().st_mtime_ns
    again = prepare_corpus(source, TOK, tmp_path / "cache")
    assert Path(again.tokens.filename).stat().st_mtime_ns == stamp
    assert again.metadata["source_hash"] == first.metadata["source_hash"]
    _write(tmp_path, "c.txt", "something else entirely")
    changed = prepare_corpus(source, TOK, tmp_path / "cache")
    assert changed.tokens.tolist() == TOK.encode("something else entirely")
    assert changed.metadata["source_hash"] != first.metadata["source_hash"]
    # A token file lost beside its metadata is rebuilt, not trusted.
    Path(changed.tokens.filename).unlink()
    rebuilt = prepare_corpus(source, TOK, tmp_path / "cache")
    assert rebuilt.tokens.tolist() == TOK.encode("something else entirely")
    # The metadata says what the tokens are and where they came from.
    assert rebuilt.metadata["tokenizer"] == "gpt2" and rebuilt.metadata["n_vocab"] == 50257
    assert rebuilt.metadata["token_count"] == len(rebuilt.tokens)
    assert rebuilt.metadata["source"] == str(source.resolve())
    # A cache written by another format version is rebuilt, not trusted.
    meta_path = Path(rebuilt.tokens.filename).with_suffix(".json")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta_path.write_text(json.dumps({**meta, "format": meta["format"] + 1}), encoding="utf-8")
    stamp = Path(rebuilt.tokens.filename).stat().st_mtime_ns
    os.utime(rebuilt.tokens.filename, ns=(stamp - 10**9, stamp - 10**9))
    renewed = prepare_corpus(source, TOK, tmp_path / "cache")
    assert Path(renewed.tokens.filename).stat().st_mtime_ns != stamp - 10**9
    assert renewed.metadata["format"] == meta["format"]
    # So is one whose metadata a kill left half written, or that holds no JSON object.
    for damaged in (meta_path.read_text(encoding="utf-8")[:20], "[1, 2]"):
        meta_path.write_text(damaged, encoding="utf-8")
        assert prepare_corpus(source, TOK, tmp_path / "cache").tokens.tolist() == TOK.encode(
            "something else entirely")
        assert json.loads(meta_path.read_text(encoding="utf-8")) == renewed.metadata


@given(n=st.integers(0, 60), length=st.integers(1, 10), stride=st.integers(1, 12))
def test_windows_are_the_books_sliding_windows(n, length, stride):
    tokens = np.arange(n, dtype=np.uint16) * 7 % 50
    windows = TokenWindows(tokens, length, stride)
    ids = tokens.tolist()
    reference = [(ids[i : i + length], ids[i + 1 : i + length + 1])
                 for i in range(0, len(ids) - length, stride)]  # the book's GPTDatasetV1 loop
    assert len(windows) == len(reference)
    for i, (x, y) in enumerate(reference):
        got_x, got_y = windows[i]
        assert got_x.tolist() == x and got_y.tolist() == y
    if reference:
        batch_x, batch_y = windows.batch([len(reference) - 1, 0])
        assert batch_x.dtype == batch_y.dtype == torch.int64  # what nn.Embedding takes
        assert batch_x.tolist() == [reference[-1][0], reference[0][0]]
        assert batch_y.tolist() == [reference[-1][1], reference[0][1]]
    with pytest.raises(IndexError, match=rf"index must be in \[0, {len(reference)}\)"):
        windows[len(reference)]
    with pytest.raises(IndexError, match="index"):
        windows[-1]
    assert len(TokenWindows(tokens, length)) == len(TokenWindows(tokens, length, stride=length))


@given(n=st.integers(1, 500), fraction=st.floats(0.01, 0.99))
def test_the_split_holds_out_the_last_fraction_and_loses_nothing(n, fraction):
    corpus = TokenCorpus(np.arange(n, dtype=np.uint16), {})
    train, val = corpus.split(fraction)
    assert np.concatenate([train, val]).tolist() == list(range(n))
    assert abs(len(val) - n * fraction) <= 0.5 + 1e-9


def test_bad_sources_and_arguments_name_the_parameter(tmp_path):
    missing, empty = tmp_path / "missing.txt", tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match=rf"^source '{re.escape(str(missing))}' does not "
                                                r"exist$"):
        prepare_corpus(missing, TOK, tmp_path / "cache")
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"^source .* directory '{re.escape(str(empty))}'$"):
        prepare_corpus(empty, TOK, tmp_path / "cache")
    source = _write(tmp_path, "c.txt", "text")
    for block_bytes, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError),
                               (True, TypeError)):
        with pytest.raises(error, match="^block_bytes must be an int >= 1") as caught:
            prepare_corpus(source, TOK, tmp_path / "cache", block_bytes=block_bytes)
        assert caught.value.parameter == "block_bytes"
    with pytest.raises(ValueError, match="context_length"):
        TokenWindows(np.zeros(5, dtype=np.uint16), 0)
    with pytest.raises(ValueError, match="stride"):
        TokenWindows(np.zeros(5, dtype=np.uint16), 2, stride=0)
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="val_fraction"):
            TokenCorpus(np.zeros(5, dtype=np.uint16), {}).split(fraction)
    with pytest.raises(TypeError, match="^text must be a str, got bytes$"):
        TokenCorpus.from_text(b"bytes", TOK)
