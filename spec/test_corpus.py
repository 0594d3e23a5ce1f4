"""Properties of corpora: memory-mapped tokens, windows, splits, reuse and bad input."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from gpt_components.corpus import TokenCorpus, TokenWindows, prepare_corpus
from gpt_components.resources import load_text
from gpt_components.tokenizers import gpt2_tokenizer

pytestmark = pytest.mark.ch05

VERDICT = load_text("the-verdict.txt")
TOK = gpt2_tokenizer()  # tiktoken's own encoder: the independent reference

# Text with the features that could break chunked tokenization: newlines next to spaces,
# blank lines, contractions, digits, punctuation and non-ASCII letters.
texts = st.lists(
    st.sampled_from(["a", "b", " ", "c", "\n", "\n\n", " \n", "\n ", "'s", "T", "é", "9", ".",
                     "!", "-", "\t", "\r\n"]),
    max_size=120,
).map("".join)


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_bytes(text.encode("utf-8"))
    return path


@given(text=texts, block_bytes=st.integers(1, 40))
@example(text=VERDICT[:3000], block_bytes=100)
def test_memory_mapped_corpus_yields_exactly_the_in_memory_tokens(text, block_bytes):
    with tempfile.TemporaryDirectory() as tmp:
        source = _write(Path(tmp), "c.txt", text)
        corpus = prepare_corpus(source, TOK, Path(tmp) / "cache", block_bytes=block_bytes)
        assert isinstance(corpus.tokens, np.memmap) or len(corpus) == 0
        assert corpus.tokens.dtype == np.uint16
        assert corpus.tokens.tolist() == TOK.encode(text)
        assert TokenCorpus.from_text(text, TOK).tokens.tolist() == TOK.encode(text)
        assert corpus.metadata["token_count"] == len(TOK.encode(text))


@given(docs=st.lists(st.text(alphabet="xy z\n", min_size=1, max_size=30), min_size=1, max_size=4))
def test_a_directory_is_its_sorted_documents_joined_by_end_of_text(docs):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        folder.mkdir()
        for i, doc in enumerate(docs):
            _write(folder, f"{i:02d}.txt", doc)
        corpus = prepare_corpus(folder, TOK, Path(tmp) / "cache")
        expected = []
        for i, doc in enumerate(docs):
            expected += ([TOK.eot_token] if i else []) + TOK.encode(doc)
        assert corpus.tokens.tolist() == expected
        assert corpus.metadata["files"] == len(docs)


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
        batch_x, batch_y = windows.batch([0, len(reference) - 1])
        assert batch_x.shape == (2, length) and batch_x.dtype.is_floating_point is False


@given(n=st.integers(1, 500), fraction=st.floats(0.01, 0.99))
def test_the_split_holds_out_the_last_fraction_and_loses_nothing(n, fraction):
    corpus = TokenCorpus(np.arange(n, dtype=np.uint16), {})
    train, val = corpus.split(fraction)
    assert np.concatenate([train, val]).tolist() == list(range(n))
    assert abs(len(val) - n * fraction) <= 0.5 + 1e-9


def test_bad_sources_and_arguments_name_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match="source"):
        prepare_corpus(tmp_path / "missing.txt", TOK, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="source"):
        prepare_corpus(tmp_path / "empty", TOK, tmp_path / "cache")
    with pytest.raises(ValueError, match="context_length"):
        TokenWindows(np.zeros(5, dtype=np.uint16), 0)
    with pytest.raises(ValueError, match="stride"):
        TokenWindows(np.zeros(5, dtype=np.uint16), 2, stride=0)
    with pytest.raises(ValueError, match="val_fraction"):
        TokenCorpus(np.zeros(5, dtype=np.uint16), {}).split(1.0)
    with pytest.raises(TypeError, match="text"):
        TokenCorpus.from_text(b"bytes", TOK)
