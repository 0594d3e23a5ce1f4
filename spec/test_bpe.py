"""Spec for gpt_components.bpe: byte-pair encoding from scratch.

References: tiktoken's ``gpt2`` encoding (for GPT-2's merges), a tiktoken ``Encoding`` built from
a trained tokenizer's ranks (for learned vocabularies), and a naive recount of pair frequencies
over every chunk occurrence (for the training rule).
"""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import example, given
from hypothesis import strategies as st

from gpt_components.bpe import BPETokenizer
from gpt_components.machinery.resources import load_text
from gpt_components.tokenizers import ENDOFTEXT, GPT2_PATTERN, gpt2_tokenizer

pytestmark = [pytest.mark.bpe, pytest.mark.ch02]

GPT2 = BPETokenizer.gpt2()
TIKTOKEN = gpt2_tokenizer()
PAD = "<|pad|>"

# -- strategies ----------------------------------------------------------------------------------

_SCRIPTS = [
    (0x41, 0x7A),  # Latin letters (and a few symbols between the cases)
    (0xC0, 0xFF),  # accented Latin
    (0x391, 0x3C9),  # Greek
    (0x410, 0x44F),  # Cyrillic
    (0x5D0, 0x5EA),  # Hebrew
    (0x627, 0x64A),  # Arabic
    (0x905, 0x939),  # Devanagari
    (0x4E00, 0x4E80),  # CJK ideographs
    (0xAC00, 0xAC40),  # Hangul syllables
]
words = st.one_of(*(
    st.text(st.characters(min_codepoint=lo, max_codepoint=hi), min_size=1, max_size=8)
    for lo, hi in _SCRIPTS
))
# Characters Python's own Unicode tables assign (no lone surrogates). Code points assigned later
# (such as U+323B0, CJK Extension J in Unicode 17) are letters to the `regex` module's newer
# tables and unassigned to tiktoken's: the two references disagree there.
assigned_characters = st.characters(exclude_categories=("Cn", "Cs"))
fragments = st.one_of(
    words,
    st.sampled_from([" ", " the", " a", "The", " of"]),
    st.text("0123456789٠١٢³½", min_size=1, max_size=6),  # ASCII, Arabic-Indic and other numerals
    st.sampled_from(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’s", "'", "''"]),
    st.text(" \t\n\r\u00a0\u2009\u3000", min_size=1, max_size=6),  # runs of whitespace
    st.sampled_from(["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "\u200d", "e\u0301", "\ufeff", "\x00"]),
    st.text(".,;:!?-\"()[]{}<>|/\\@#$%^&*_~`+=", min_size=1, max_size=4),
    st.text(assigned_characters, max_size=4),
    # Runs of one character: the pair to merge first occurs at several places at once.
    st.builds(lambda c, n: c * n, st.sampled_from("0123456789a -=.!*é"), st.integers(2, 12)),
)
texts = st.lists(fragments, max_size=16).map("".join)
texts_with_endoftext = st.lists(st.one_of(fragments, st.just(ENDOFTEXT)), max_size=16).map(
    "".join
)

# Small, repetitive corpora, so that merges happen and some run out of pairs.
corpora = st.lists(
    st.one_of(
        st.sampled_from(["the", " the", " cat", "at", " ", "\n", "aaaa", "'s", "é", "😀", "12",
                         ENDOFTEXT]),
        st.text(assigned_characters, max_size=3),
    ),
    max_size=40,
).map("".join)
special_lists = st.sampled_from([(), (ENDOFTEXT,), (ENDOFTEXT, PAD)])


DEFAULT_MIN_FREQUENCY = st.just(2)


@st.composite
def trained(draw, min_frequencies=DEFAULT_MIN_FREQUENCY):
    """A tokenizer trained on a drawn corpus, with the corpus and the training arguments."""
    corpus = draw(corpora)
    specials = draw(special_lists)
    vocab_size = draw(st.integers(256 + len(specials), 256 + len(specials) + 60))
    min_frequency = draw(min_frequencies)
    tok = BPETokenizer.train(corpus, vocab_size, specials, min_frequency=min_frequency)
    return tok, corpus, specials, vocab_size, min_frequency


def tiktoken_twin(tok: BPETokenizer) -> tiktoken.Encoding:
    """tiktoken's own encoder over the same ranks and specials: the reference for encoding."""
    return tiktoken.Encoding(
        name="twin",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=tok.mergeable_ranks,
        special_tokens=tok.special_tokens,
    )


@functools.cache
def verdict_tokenizer() -> BPETokenizer:
    return BPETokenizer.train(load_text("the-verdict.txt"), 1000)


# -- GPT-2's merges: identical to tiktoken -------------------------------------------------------


@given(texts)
@example("Hello, world").via("GPT-2's first ids")
@example("   \n\n  x  \n").via("whitespace runs")
@example("I'll've it's 123456 abc'S")
@example("11111 0000000000 ----- !!!!!!!").via("ties between equal pairs go to the leftmost")
def test_gpt2_merges_encode_every_text_exactly_like_tiktoken(text):
    assert GPT2.encode(text) == TIKTOKEN.encode(text)
    assert GPT2.encode_ordinary(text) == TIKTOKEN.encode_ordinary(text)


@given(texts_with_endoftext)
@example("Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace.")
def test_gpt2_allowed_endoftext_becomes_its_id_exactly_like_tiktoken(text):
    for allowed in ({ENDOFTEXT}, "all"):
        assert GPT2.encode(text, allowed_special=allowed) == TIKTOKEN.encode(
            text, allowed_special=allowed
        )
    ours = GPT2.encode(text, disallowed_special=())
    assert ours == TIKTOKEN.encode(text, disallowed_special=())
    assert 50256 not in ours


def test_the_books_example_has_its_published_ids():
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
    assert GPT2.encode(text, allowed_special={ENDOFTEXT}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250, 8812, 2114, 286,
        617, 34680, 27271, 13,
    ]
    assert GPT2.n_vocab == 50257 and GPT2.eot_token == 50256


@given(texts)
def test_gpt2_decode_inverts_encode(text):
    assert GPT2.decode(GPT2.encode(text, allowed_special="all")) == text


@given(st.lists(st.integers(0, 50256), max_size=30))
@example([31204, 31204]).via("half a character: 0xE2 0x80 twice")
def test_gpt2_decode_of_any_ids_matches_tiktoken(ids):
    assert GPT2.decode_bytes(ids) == TIKTOKEN.decode_bytes(ids)
    assert GPT2.decode(ids) == TIKTOKEN.decode(ids)


def test_lone_surrogates_are_repaired_as_tiktoken_does():
    text = "a\ud800b \ud83d\ude00"
    assert GPT2.encode(text) == TIKTOKEN.encode(text)


def test_a_cold_chunk_cache_encodes_like_a_warm_one():
    text = load_text("the-verdict.txt")
    cold = BPETokenizer.gpt2()
    assert cold.encode(text) == GPT2.encode(text) == cold.encode(text) == TIKTOKEN.encode(text)


# -- trained vocabularies ------------------------------------------------------------------------


@given(trained(), texts_with_endoftext)
def test_trained_tokenizer_round_trips_any_string_even_with_unseen_bytes(case, text):
    tok = case[0]
    assert tok.decode(tok.encode(text, disallowed_special=())) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


@given(trained(st.integers(1, 3)), texts_with_endoftext)
def test_trained_tokenizer_encodes_exactly_like_tiktoken_with_the_same_ranks(case, text):
    tok, corpus = case[:2]
    twin = tiktoken_twin(tok)
    for sample in (text, corpus):
        assert tok.encode(sample, allowed_special="all") == twin.encode(
            sample, allowed_special="all"
        )
        assert tok.encode_ordinary(sample) == twin.encode_ordinary(sample)


def _naive_chunks(corpus: str, specials) -> list[list[bytes]]:
    pieces = [corpus]
    for name in specials:
        pieces = [part for piece in pieces for part in piece.split(name)]
    return [
        [bytes([b]) for b in chunk.encode("utf-8")]
        for piece in pieces
        for chunk in regex.findall(GPT2_PATTERN, piece)
    ]


def _naive_pair_counts(words: list[list[bytes]]) -> Counter:
    return Counter(pair for word in words for pair in itertools.pairwise(word))


def _naive_merge(word: list[bytes], left: bytes, right: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == (left, right):
            out.append(left + right)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _check_each_merge_was_the_most_frequent_pair(tok, corpus, specials, min_frequency):
    ranks = tok.mergeable_ranks
    words = _naive_chunks(corpus, specials)
    for left, right in tok.merges:
        counts = _naive_pair_counts(words)
        top = max(counts.values())
        assert counts[(left, right)] == top >= min_frequency
        ties = [pair for pair, n in counts.items() if n == top]
        assert min(ties, key=lambda p: (ranks[p[0]], ranks[p[1]])) == (left, right)
        words = [_naive_merge(word, left, right) for word in words]


def _check_vocabulary_is_full_unless_out_of_pairs(tok, corpus, specials, vocab_size,
                                                  min_frequency):
    made = {left + right for left, right in tok.merges}
    assert tok.n_vocab == 256 + len(made) + len(specials)
    assert tok.n_vocab <= vocab_size
    if tok.n_vocab < vocab_size:
        words = _naive_chunks(corpus, specials)
        for left, right in tok.merges:
            words = [_naive_merge(word, left, right) for word in words]
        assert max(_naive_pair_counts(words).values(), default=0) < min_frequency


@given(trained(st.integers(1, 3)))
def test_each_merge_was_the_most_frequent_pair_when_learned(case):
    tok, corpus, specials, _, min_frequency = case
    _check_each_merge_was_the_most_frequent_pair(tok, corpus, specials, min_frequency)


@given(trained(st.integers(1, 3)))
def test_vocabulary_is_exactly_vocab_size_unless_the_corpus_ran_out_of_pairs(case):
    _check_vocabulary_is_full_unless_out_of_pairs(*case)


# Corpora where a pair's count drops after a merge (overlaps such as "aba"), found by searching
# for corpora on which a training loop that forgot such pairs in its heap went wrong.
@pytest.mark.parametrize("corpus, vocab_size", [("ababba", 268), ("ababat abba", 290)])
def test_pairs_whose_count_dropped_are_still_merged_when_they_lead(corpus, vocab_size):
    tok = BPETokenizer.train(corpus, vocab_size, (), min_frequency=1)
    _check_each_merge_was_the_most_frequent_pair(tok, corpus, (), 1)
    _check_vocabulary_is_full_unless_out_of_pairs(tok, corpus, (), vocab_size, 1)


@given(trained(), st.lists(st.one_of(texts, st.sampled_from([ENDOFTEXT, PAD])), max_size=8))
def test_special_tokens_are_never_split_and_never_produced_from_ordinary_text(case, pieces):
    tok, specials = case[0], case[2]
    text = "".join(pieces)
    special_ids = set(tok.special_tokens.values())
    assert special_ids.isdisjoint(tok.encode(text, disallowed_special=()))
    assert special_ids.isdisjoint(tok.encode_ordinary(text))
    ids = tok.encode(text, allowed_special="all")
    for name in specials:
        assert ids.count(tok.special_tokens[name]) == text.count(name)
    if any(name in text for name in specials):
        with pytest.raises(ValueError, match="disallowed"):
            tok.encode(text)


@given(trained(), texts)
def test_training_twice_gives_the_same_tokenizer(case, text):
    tok, corpus, specials, vocab_size, min_frequency = case
    again = BPETokenizer.train(corpus, vocab_size, specials, min_frequency=min_frequency)
    assert again.merges == tok.merges and again.mergeable_ranks == tok.mergeable_ranks
    assert again.encode(text, disallowed_special=()) == tok.encode(text, disallowed_special=())


@given(trained(), texts_with_endoftext)
def test_save_then_load_gives_the_same_tokenizer(case, text):
    tok = case[0]
    with tempfile.TemporaryDirectory() as directory:
        loaded = BPETokenizer.load(tok.save(f"{directory}/not/yet/made"))
    assert loaded.mergeable_ranks == tok.mergeable_ranks
    assert loaded.merges == tok.merges
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.name == tok.name
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


@given(trained(), trained())
def test_two_tokenizers_share_a_name_exactly_when_they_share_a_vocabulary(one, other):
    one, other = one[0], other[0]
    same = (one.mergeable_ranks, one.special_tokens) == (other.mergeable_ranks,
                                                         other.special_tokens)
    assert (one.name == other.name) == same
    assert regex.fullmatch(r"bpe-\d+-[0-9a-f]{12}", one.name)
    assert BPETokenizer.gpt2().name == TIKTOKEN.name == "gpt2" != one.name


def test_special_token_names_in_the_training_text_teach_no_merges():
    # Five end-of-text tokens would give each pair inside the name a count of five.
    tok = BPETokenizer.train(ENDOFTEXT * 5 + "ab", 300)
    assert tok.merges == () and tok.n_vocab == 257


def test_single_tokens_and_the_repr_say_what_the_tokenizer_holds():
    for token in GPT2.encode("Hello, naïve world 😀"):
        assert GPT2.decode_single_token_bytes(token) == TIKTOKEN.decode_single_token_bytes(token)
    assert repr(GPT2) == ("BPETokenizer(name='gpt2', n_vocab=50257, merges=50000, "
                          "special_tokens=['<|endoftext|>'])")


def test_a_pair_seen_only_once_is_not_merged_by_default():
    # "xy" and " xy": the pair (x, y) occurs twice, every other pair once.
    assert BPETokenizer.train("xy xy", 300, ()).merges == ((b"x", b"y"),)
    assert BPETokenizer.train("xy xy", 300, (), min_frequency=3).merges == ()
    assert len(BPETokenizer.train("xy xy", 300, (), min_frequency=1).merges) == 2


def test_saving_gpt2_writes_back_its_bundled_files(tmp_path):
    from gpt_components.machinery.resources import resource_path

    GPT2.save(tmp_path)
    for name in ("encoder.json", "vocab.bpe"):
        written = (tmp_path / name).read_text(encoding="utf-8")
        assert written == resource_path(f"gpt2/{name}").read_text(encoding="utf-8")


def test_the_verdict_trains_to_exactly_1000_tokens_and_round_trips():
    tok = verdict_tokenizer()
    text = load_text("the-verdict.txt")
    assert tok.n_vocab == 1000 and tok.eot_token == 999
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == tiktoken_twin(tok).encode(text)


@pytest.mark.parametrize("text", ["abcd", " abcd", "abcdabcd", "abc", "bcd"])
def test_a_pre_token_that_is_itself_a_token_is_one_id_as_in_tiktoken(text):
    # Merging a, b, c, d by rank gets stuck at a + bc + d, yet abcd is a token: tiktoken looks the
    # whole pre-token up first.
    ranks = {bytes([b]): b for b in range(256)}
    merges = [(b"b", b"c"), (b"a", b"b"), (b"c", b"d"), (b"ab", b"cd")]
    ranks.update({left + right: 256 + i for i, (left, right) in enumerate(merges)})
    tok = BPETokenizer(ranks, merges)
    assert tok.encode(text) == tiktoken_twin(tok).encode(text)
    assert tok.encode("abcd") == [259]


# -- bad input -----------------------------------------------------------------------------------


@given(st.integers(max_value=256))
@example(256).via("one short of the bytes plus the special")
def test_vocab_size_below_the_bytes_plus_specials_is_refused(vocab_size):
    with pytest.raises(ValueError, match=r"^vocab_size must be an int >= 257, got ") as caught:
        BPETokenizer.train("abc", vocab_size, (ENDOFTEXT,))
    assert caught.value.parameter == "vocab_size"
    assert BPETokenizer.train("abc", 257, (ENDOFTEXT,)).n_vocab == 257


@pytest.mark.parametrize("min_frequency, error", [(0, ValueError), (-1, ValueError),
                                                  (1.5, TypeError), (True, TypeError)])
def test_min_frequency_below_one_or_not_an_int_is_refused(min_frequency, error):
    with pytest.raises(error, match=r"^min_frequency must be"):
        BPETokenizer.train("abc", 300, min_frequency=min_frequency)


@pytest.mark.parametrize("vocab_size", [300.0, "300", True, None])
def test_vocab_size_that_is_not_an_int_is_refused(vocab_size):
    with pytest.raises(TypeError, match="^vocab_size must be"):
        BPETokenizer.train("abc", vocab_size)


@pytest.mark.parametrize("text", [b"abc", None, 3, ["abc"]])
def test_text_that_is_not_a_string_is_refused(text):
    tok = verdict_tokenizer()
    for call in (lambda: tok.encode(text), lambda: tok.encode_ordinary(text),
                 lambda: BPETokenizer.train(text, 300)):
        with pytest.raises(TypeError, match=f"^text must be a str, got {type(text).__name__}$"):
            call()


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=1000)), st.integers(0, 5))
def test_decoding_an_id_out_of_range_names_it(bad, position):
    ids = [0, 1, 2, 3, 999]  # the first and the last valid ids
    ids.insert(position, bad)
    with pytest.raises(ValueError, match=rf"^ids must lie in \[0, 1000\), got id {bad}$"):
        verdict_tokenizer().decode(ids)


@pytest.mark.parametrize("ids, message", [
    (5, "ids must be an iterable of ints, got int"),
    ("abc", "ids must be an iterable of ints, got str"),
    ([2, 1.5], "ids must hold ints, got 1.5"), ([3, None], "ids must hold ints, got None"),
    ([2, "a"], "ids must hold ints, got 'a'"),
])
def test_decoding_something_other_than_ints_is_refused(ids, message):
    with pytest.raises(TypeError, match=f"^{regex.escape(message)}$"):
        verdict_tokenizer().decode(ids)


def test_unknown_special_names_are_refused():
    tok = verdict_tokenizer()
    with pytest.raises(ValueError, match="^allowed_special names unknown special tokens "
                                         "'<\\|pad\\|>'; this tokenizer's are"):
        tok.encode("x", allowed_special={PAD})
    with pytest.raises(ValueError, match="^disallowed_special names unknown"):
        tok.encode("x", disallowed_special={PAD})
    with pytest.raises(TypeError, match="^allowed_special must be 'all' or a collection"):
        tok.encode("x", allowed_special=ENDOFTEXT)


@pytest.mark.parametrize("specials, error", [
    (ENDOFTEXT, TypeError), (3, TypeError), ((ENDOFTEXT, ENDOFTEXT), ValueError),
    (("",), ValueError), ((3,), TypeError),
])
def test_malformed_special_token_lists_are_refused(specials, error):
    with pytest.raises(error, match="^special_tokens must") as caught:
        BPETokenizer.train("abc", 300, specials)
    assert caught.value.parameter == "special_tokens"


def test_a_tokenizer_without_endoftext_has_no_eot_token():
    tok = BPETokenizer.train("abc", 260, ())
    with pytest.raises(AttributeError, match="endoftext"):
        _ = tok.eot_token


def test_inconsistent_vocabularies_are_refused():
    ranks = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="256 single bytes"):
        BPETokenizer({**{k: v for k, v in ranks.items() if v != 7}, b"ab": 7}, [(b"a", b"b")])
    with pytest.raises(ValueError, match=r"^mergeable_ranks and special_tokens must use each id "
                                         r"in 0 \.\. 256 exactly once$"):
        BPETokenizer(ranks, [], {ENDOFTEXT: 300})
    with pytest.raises(ValueError, match="^merges must produce every multi-byte token"):
        BPETokenizer({**ranks, b"ab": 256}, [])
    # A merge whose left part, right part or result is missing: each alone is refused.
    for extra, merge in [({b"xyz": 256}, (b"xy", b"z")), ({b"xyz": 256}, (b"x", b"yz")),
                         ({b"xy": 256}, (b"x", b"z"))]:
        left, right = (regex.escape(repr(part)) for part in merge)
        with pytest.raises(ValueError, match=rf"^merges holds \({left}, {right}\), whose parts or "
                                             "result are not in mergeable_ranks$"):
            BPETokenizer({**ranks, **extra}, [merge])


def test_gpt2_files_that_cannot_be_read_or_written_say_why(tmp_path):
    # A special token spelled like an ordinary one could not be told apart in encoder.json.
    with pytest.raises(ValueError, match=r"^special tokens \['a'\] are spelled like ordinary "
                                         r"tokens in GPT-2's printable alphabet, so encoder\.json "
                                         r"cannot hold both$"):
        BPETokenizer.train("abc", 260, ("a",)).save(tmp_path / "clash")
    tok = BPETokenizer.train("abc abc", 260)
    tok.save(tmp_path / "ok")
    merges = tmp_path / "ok" / "vocab.bpe"
    for bad in ("a b c", "ab", "a  b"):
        merges.write_text(f"#version: 0.2\n{bad}\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"^directory: {regex.escape(str(merges))} must hold "
                                             "one space-separated pair per line$"):
            BPETokenizer.load(tmp_path / "ok")
    merges.write_text("#version: 0.2\na \x01\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"^directory: {regex.escape(str(merges))} holds '\\x01', "
                                         "which "
                                         "has a character outside GPT-2's printable"):
        BPETokenizer.load(tmp_path / "ok")
    # No merges at all (not even the version line): a byte-level vocabulary plus its specials.
    bytes_only = BPETokenizer.train("abc", 257)
    bytes_only.save(tmp_path / "bytes")
    (tmp_path / "bytes" / "vocab.bpe").write_text("", encoding="utf-8")
    loaded = BPETokenizer.load(tmp_path / "bytes")
    assert loaded.merges == () and loaded.special_tokens == {ENDOFTEXT: 256}



def test_training_on_lone_surrogates_learns_what_encode_sees():
    text = "ab\ud800ab\ud800ab cd\udfffcd"
    repaired = text.replace("\ud800", "\ufffd").replace("\udfff", "\ufffd")
    tok = BPETokenizer.train(text, 260, min_frequency=1)
    assert tok.merges == BPETokenizer.train(repaired, 260, min_frequency=1).merges
    assert tok.decode(tok.encode(text)) == repaired
