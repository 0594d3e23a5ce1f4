"""Properties of the chapter 2 tokenizers: regex splitting, simple vocabularies, GPT-2 BPE."""

import functools
import hashlib
import json
import string

import pytest
import regex
import tiktoken
from hypothesis import example, given
from hypothesis import strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from gpt_components.machinery.resources import load_text, resource_path
from gpt_components.tokenizers import (
    ENDOFTEXT,
    GPT2_PATTERN,
    UNK,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    UnknownWordError,
    build_vocab,
    gpt2_byte_decoder,
    gpt2_tokenizer,
    split_words,
)

pytestmark = pytest.mark.ch02

PUNCTUATION = ',.:;?_!"()\''
SPLIT_ALONE = {*PUNCTUATION, "--"}
# The documented rule: no space before these after decode (the book's V1 keeps it before : ;).
V1_GLUED = set(',.?!"()\'')
V2_GLUED = set(',.:;?!"()\'')

BOOK_SENTENCE = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
BOOK_SENTENCE_IDS = [15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250,
                     8812, 2114, 286, 617, 34680, 27271, 13]


def reference_split(text: str) -> list[str]:
    """The book's split, re-derived as a scanner: punctuation and '--' alone, whitespace dropped."""
    words, current = [], []
    i = 0
    while i < len(text):
        token = "--" if text.startswith("--", i) else text[i]
        if token == "--" or token in PUNCTUATION or token.isspace():
            if current:
                words.append("".join(current))
                current = []
            if not token.isspace():
                words.append(token)
        else:
            current.append(token)
        i += len(token)
    if current:
        words.append("".join(current))
    return words


def reference_join(words: list[str], glued: set[str] = V1_GLUED) -> str:
    """The documented decode rule: single spaces, except none before the ``glued`` marks."""
    out = ""
    for index, word in enumerate(words):
        if index and word not in glued:
            out += " "
        out += word
    return out


@functools.cache
def verdict() -> str:
    return load_text("the-verdict.txt")


# ---------------------------------------------------------------- split_words and build_vocab

tricky_text = st.lists(
    st.sampled_from([*"ab-_ .,:;?!\"()'\n\t\u00a0\u2003\x1cé", "--", "<|unk|>"])
).map("".join)


@example("Hello, world. Is this-- a test?")
@example("a---b -- --")
@given(st.one_of(st.text(), tricky_text))
def test_split_words_matches_a_character_scanner(text):
    assert split_words(text) == reference_split(text)


def test_split_words_reproduces_the_books_figures():
    assert split_words("Hello, world. Is this-- a test?") == [
        "Hello", ",", "world", ".", "Is", "this", "--", "a", "test", "?"]
    words = split_words(verdict())
    assert len(words) == 4690
    assert words[:10] == ["I", "HAD", "always", "thought", "Jack", "Gisburn", "rather", "a",
                          "cheap", "genius"]


def test_split_words_rejects_non_strings_naming_text():
    with pytest.raises(TypeError, match=r"\btext\b.*\bbytes\b"):
        split_words(b"bytes")


@given(st.one_of(st.text(), tricky_text), st.lists(st.sampled_from([ENDOFTEXT, UNK, "<|x|>"])))
def test_build_vocab_is_sorted_unique_words_then_the_specials(text, specials):
    vocab = build_vocab(text, special_tokens=specials)
    words = sorted(set(reference_split(text)))
    extra = list(dict.fromkeys(s for s in specials if s not in words))
    assert list(vocab) == words + extra
    assert list(vocab.values()) == list(range(len(words) + len(extra)))


def test_build_vocab_reproduces_the_books_sizes_and_ids():
    assert len(build_vocab(verdict())) == 1130
    vocab = build_vocab(verdict(), special_tokens=(ENDOFTEXT, UNK))
    assert len(vocab) == 1132
    assert (vocab[ENDOFTEXT], vocab[UNK]) == (1130, 1131)
    assert list(vocab.items())[:3] == [("!", 0), ('"', 1), ("'", 2)]
    assert list(vocab)[-5:] == ["younger", "your", "yourself", ENDOFTEXT, UNK]


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((3,), TypeError, r"text\b.*\bint"),
        (("a b", "<|unk|>"), TypeError, r"special_tokens\b.*\bstr"),
        (("a b", 7), TypeError, r"special_tokens\b.*\bint"),
        (("a b", [1]), TypeError, r"special_tokens\b.*\b1"),
    ],
)
def test_build_vocab_rejects_bad_arguments_naming_them(args, error, name):
    with pytest.raises(error, match=rf"\b{name}"):
        build_vocab(*args)


# ---------------------------------------------------------------- SimpleTokenizerV1

word = st.text(alphabet=string.ascii_letters + "é-", min_size=1, max_size=6).filter(
    lambda w: "--" not in w and not w.endswith("-") and not w.startswith("-"))
token = st.one_of(word, st.sampled_from([*PUNCTUATION, "--"]))
separator = st.sampled_from([" ", "  ", "\n", "\t", " \n "])


@st.composite
def texts_of_words(draw):
    """A text and its words: words joined by whitespace (optional next to punctuation)."""
    words = draw(st.lists(token, max_size=20))
    text = ""
    for index, w in enumerate(words):
        if index:
            glued = w in SPLIT_ALONE or words[index - 1] in SPLIT_ALONE
            text += draw(st.sampled_from(["", " "])) if glued else draw(separator)
        text += w
    return draw(separator) + text + draw(st.sampled_from(["", " "])), words


@given(texts_of_words())
def test_v1_decode_of_encode_is_the_text_up_to_the_whitespace_rule(case):
    text, words = case
    tokenizer = SimpleTokenizerV1(build_vocab(text))
    ids = tokenizer.encode(text)
    assert [tokenizer.int_to_str[i] for i in ids] == words
    assert tokenizer.decode(ids) == reference_join(words)


def test_v1_round_trips_the_verdict_up_to_the_whitespace_rule():
    tokenizer = SimpleTokenizerV1(build_vocab(verdict()))
    assert tokenizer.decode(tokenizer.encode(verdict())) == reference_join(split_words(verdict()))


def test_v1_reproduces_the_books_example():
    tokenizer = SimpleTokenizerV1(build_vocab(verdict()))
    text = """"It's the last he painted, you know," Mrs. Gisburn said with pardonable pride."""
    ids = tokenizer.encode(text)
    assert ids == [1, 56, 2, 850, 988, 602, 533, 746, 5, 1126, 596, 5, 1, 67, 7, 38, 851, 1108,
                   754, 793, 7]
    assert tokenizer.decode(ids) == (
        '" It\' s the last he painted, you know," Mrs. Gisburn said with pardonable pride.')


@given(texts_of_words())
def test_v2_decode_of_encode_also_glues_colons_and_semicolons(case):
    text, words = case
    tokenizer = SimpleTokenizerV2(build_vocab(text, special_tokens=[UNK]))
    assert tokenizer.decode(tokenizer.encode(text)) == reference_join(words, V2_GLUED)


def test_v1_and_v2_decode_the_verdicts_semicolon_as_the_book_does():
    text = "the value of my picture 'way up; but I don't think"
    v1 = SimpleTokenizerV1(build_vocab(verdict()))
    v2 = SimpleTokenizerV2(build_vocab(verdict(), special_tokens=[ENDOFTEXT, UNK]))
    assert v1.decode(v1.encode(text)) == "the value of my picture' way up ; but I don' t think"
    assert v2.decode(v2.encode(text)) == "the value of my picture' way up; but I don' t think"


def test_v1_names_the_unknown_word_and_is_caught_as_the_books_key_error():
    tokenizer = SimpleTokenizerV1(build_vocab(verdict()))
    for error in (ValueError, KeyError, UnknownWordError):
        with pytest.raises(error) as info:
            tokenizer.encode("Hello, do you like tea?")
        assert str(info.value) == "text contains the word 'Hello', which is not in the vocabulary"


@pytest.mark.parametrize("tokenizer_class", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_decode_rejects_ids_outside_the_vocabulary_naming_ids(tokenizer_class):
    tokenizer = tokenizer_class({"a": 0, "b": 1, UNK: 2})
    assert tokenizer.decode([2, 0, 1]) == f"{UNK} a b"
    for bad, value in (([3], "3"), ([0, -1], "-1"), ([0, 7], "7")):
        with pytest.raises(ValueError, match=rf"\bids\b contains {value}\b.*\b0\.\.2\b"):
            tokenizer.decode(bad)
    with pytest.raises(TypeError, match=r"\bids\b.*0\.0"):
        tokenizer.decode([0.0])


def test_decode_with_an_empty_vocabulary_says_so():
    tokenizer = SimpleTokenizerV1({})
    assert tokenizer.encode(" \n") == [] and tokenizer.decode([]) == ""
    with pytest.raises(ValueError, match=r"^ids contains 0, but the vocabulary is empty$"):
        tokenizer.decode([0])


@pytest.mark.parametrize("tokenizer_class", [SimpleTokenizerV1, SimpleTokenizerV2])
def test_encode_rejects_non_strings_naming_text(tokenizer_class):
    tokenizer = tokenizer_class({"a": 0, UNK: 1})
    with pytest.raises(TypeError, match=r"\btext\b.*\blist\b"):
        tokenizer.encode(["a"])


@pytest.mark.parametrize(
    ("vocab", "error", "detail"),
    [(["a"], TypeError, "list"), ({"a": "0"}, TypeError, "'0'"), ({1: 0}, TypeError, "1: 0"),
     ({"a": 0, "b": 0}, ValueError, "repeated"), ({"a": -1}, ValueError, "'a': -1")],
)
def test_tokenizers_reject_malformed_vocabularies_naming_vocab(vocab, error, detail):
    for tokenizer_class in (SimpleTokenizerV1, SimpleTokenizerV2):
        with pytest.raises(error, match=rf"\bvocab\b.*{detail}"):
            tokenizer_class(vocab)


def test_v2_requires_the_unknown_token_in_its_vocabulary():
    with pytest.raises(ValueError, match=r"\bvocab\b.*<\|unk\|>"):
        SimpleTokenizerV2({"a": 0})


# ---------------------------------------------------------------- SimpleTokenizerV2

@functools.cache
def verdict_v2() -> SimpleTokenizerV2:
    return SimpleTokenizerV2(build_vocab(verdict(), special_tokens=(ENDOFTEXT, UNK)))


@given(st.text())
def test_v2_never_raises_on_arbitrary_text(text):
    ids = verdict_v2().encode(text)
    assert all(0 <= i < 1132 for i in ids)
    assert isinstance(verdict_v2().decode(ids), str)


mixed_words = st.lists(st.one_of(
    st.sampled_from(["the", "Jack", "Gisburn", "pride", ",", ".", "--", "?", "Hello", "palace",
                     "tea", "someunknownPlace", "\u00e9t\u00e9", "Gisburns"]),
    st.text(alphabet=string.ascii_letters, min_size=1, max_size=5),
), max_size=15)


@given(mixed_words)
def test_v2_maps_exactly_the_out_of_vocabulary_words_to_unk(words):
    tokenizer = verdict_v2()
    vocab = build_vocab(verdict(), special_tokens=(ENDOFTEXT, UNK))
    ids = tokenizer.encode(" ".join(words))
    assert ids == [vocab.get(w, vocab[UNK]) for w in words]
    assert len(ids) == len(words)


@st.composite
def shuffled_vocabularies(draw):
    """A vocabulary whose words and special tokens (``<|unk|>`` too) sit in any order, any ids."""
    words = draw(st.lists(st.text(alphabet="abc", min_size=1, max_size=3), unique=True,
                          max_size=8))
    specials = draw(st.lists(st.sampled_from([ENDOFTEXT, "<|x|>"]), unique=True))
    entries = draw(st.permutations([*words, *specials, UNK]))
    first = draw(st.integers(0, 5))  # ids need not start at 0 or follow insertion order
    ids = draw(st.permutations(range(first, first + len(entries))))
    return dict(zip(entries, ids, strict=True))


@example(vocab={UNK: 0, "a": 1}, data=None)  # <|unk|> first: an encoder that took the last id
@given(vocab=shuffled_vocabularies(), data=st.data())
def test_v2_gives_unknown_words_unk_id_wherever_unk_sits_in_the_vocabulary(vocab, data):
    known = [w for w in vocab if not w.startswith("<|")] or ["a"]
    words = ["zz", "a", "q"] if data is None else data.draw(st.lists(
        st.sampled_from(known) | st.text(alphabet="abcz", min_size=1, max_size=3), max_size=10))
    ids = SimpleTokenizerV2(vocab).encode(" ".join(words))
    assert ids == [vocab.get(w, vocab[UNK]) for w in words]


@example(["tea?", "In"], "")
@example(["x", "Hello"], "")
@given(st.lists(st.text(max_size=30), min_size=1, max_size=4), st.sampled_from(["", " ", "\n"]))
def test_v2_isolates_endoftext_between_documents(documents, pad):
    tokenizer = verdict_v2()
    joined = tokenizer.encode((pad + ENDOFTEXT + pad).join(documents))
    expected = []
    for index, document in enumerate(documents):
        if index:
            expected.append(1130)
        expected.extend(tokenizer.encode(document))
    assert joined == expected


@given(st.text(alphabet="ab .,-", max_size=12), st.text(alphabet="ab .,-", max_size=12))
def test_v2_keeps_any_special_token_whole_even_with_spaces_or_punctuation_inside(left, right):
    vocab = build_vocab("a b", special_tokens=["<|new doc|>", "<|a.b|>", UNK])
    tokenizer = SimpleTokenizerV2(vocab)
    for special in ("<|new doc|>", "<|a.b|>"):
        ids = tokenizer.encode(left + special + right)
        assert ids == tokenizer.encode(left) + [vocab[special]] + tokenizer.encode(right)


def test_v2_reproduces_the_books_example():
    text = " <|endoftext|> ".join(
        ("Hello, do you like tea?", "In the sunlit terraces of the palace."))
    ids = verdict_v2().encode(text)
    assert ids == [1131, 5, 355, 1126, 628, 975, 10, 1130, 55, 988, 956, 984, 722, 988, 1131, 7]
    assert verdict_v2().decode(ids) == (
        "<|unk|>, do you like tea? <|endoftext|> In the sunlit terraces of the <|unk|>.")


# ---------------------------------------------------------------- GPT-2 byte-pair encoding

# The hashes tiktoken checks for OpenAI's published GPT-2 files (tiktoken_ext.openai_public).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
ORIGINAL_GPT2_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)


def test_the_bundled_bpe_files_are_openais_published_ones():
    for name, expected in (("gpt2/vocab.bpe", VOCAB_BPE_SHA256),
                           ("gpt2/encoder.json", ENCODER_JSON_SHA256)):
        assert hashlib.sha256(resource_path(name).read_bytes()).hexdigest() == expected


def test_the_pattern_is_tiktokens_gpt2_pattern():
    import tiktoken_ext.openai_public as openai_public

    assert GPT2_PATTERN == openai_public.r50k_pat_str


@functools.cache
def reference_ranks() -> dict[bytes, int]:
    """tiktoken's own GPT-2 loader, fed the bundled files (it builds ranks from the merges)."""
    return data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(resource_path("gpt2/vocab.bpe")),
        encoder_json_file=str(resource_path("gpt2/encoder.json")),
    )


def test_gpt2_tokenizer_is_tiktokens_gpt2_encoding(monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, write no cache
    tokenizer = gpt2_tokenizer()
    assert isinstance(tokenizer, tiktoken.Encoding)
    assert tokenizer.name == "gpt2"
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_token == 50256
    assert tokenizer.special_tokens_set == {ENDOFTEXT}
    assert tokenizer._mergeable_ranks == reference_ranks()


def test_the_byte_decoder_is_a_bijection_onto_bytes_keeping_printable_latin1():
    decoder = gpt2_byte_decoder()
    assert sorted(decoder.values()) == list(range(256))
    for char, byte in decoder.items():
        printable = chr(byte).isprintable() and chr(byte) != " "
        assert (char == chr(byte)) == printable
    assert decoder["Ġ"] == ord(" ") and decoder["Ċ"] == ord("\n")


@functools.cache
def plain_bpe_tables() -> tuple[dict[tuple[str, str], int], dict[str, int], dict[int, str]]:
    """Merge ranks, the encoder, and GPT-2's byte-to-character table, from the files directly."""
    lines = resource_path("gpt2/vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges = {tuple(line.split()): rank for rank, line in enumerate(lines[1:]) if line}
    encoder = json.loads(resource_path("gpt2/encoder.json").read_text(encoding="utf-8"))
    # GPT-2's table: bytes that print (except space) stand for themselves; the others move to
    # 256, 257, ... in byte order.
    visible = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    hidden = [b for b in range(256) if b not in visible]
    byte_char = {b: chr(b) for b in visible} | {b: chr(256 + i) for i, b in enumerate(hidden)}
    return merges, encoder, byte_char


def plain_gpt2_encode(text: str) -> list[int]:
    """GPT-2's original encoder.py algorithm in plain Python: split, map bytes, merge by rank."""
    merges, encoder, byte_char = plain_bpe_tables()
    ids = []
    for piece in regex.findall(ORIGINAL_GPT2_PATTERN, text):
        symbols = [byte_char[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:], strict=False)
            pair = min(pairs, key=lambda p: merges.get(p, float("inf")))
            if pair not in merges:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids.extend(encoder[s] for s in symbols)
    return ids


english = st.lists(
    st.sampled_from(["Hello", ",", " world", " the", " sunlit", " terraces", "'s", "'ll", " 42",
                     "\n\n", "  ", " ", "someunknownPlace", ".", " don't", " naïve", " 日本",
                     " 🤖", "!!!", " Ġ", "\t"]),
).map("".join)


@example(BOOK_SENTENCE.replace(ENDOFTEXT, "eot"))
@example("trailing spaces   ")
@given(st.one_of(st.text(), english))
def test_gpt2_encode_matches_gpt2s_original_algorithm(text):
    assert gpt2_tokenizer().encode(text) == plain_gpt2_encode(text)


@given(st.one_of(st.text(), english))
def test_gpt2_decode_of_encode_is_the_identity_on_any_unicode_string(text):
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(text)
    assert all(0 <= i < 50256 for i in ids)
    assert tokenizer.decode(ids) == text


def test_gpt2_encodes_the_books_sentence_to_the_books_ids():
    tokenizer = gpt2_tokenizer()
    ids = tokenizer.encode(BOOK_SENTENCE, allowed_special={ENDOFTEXT})
    assert ids == BOOK_SENTENCE_IDS
    assert tokenizer.decode(ids) == BOOK_SENTENCE


@given(st.text(max_size=20), st.text(max_size=20))
def test_gpt2_endoftext_raises_unless_allowed(before, after):
    tokenizer = gpt2_tokenizer()
    text = before + ENDOFTEXT + after
    with pytest.raises(ValueError, match="endoftext"):
        tokenizer.encode(text)
    ids = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    assert 50256 in ids
    assert tokenizer.decode(ids) == text


def test_the_verdict_is_5145_gpt2_tokens():
    assert len(gpt2_tokenizer().encode(verdict())) == 5145


@given(
    st.lists(st.integers(0, 50256), max_size=8),
    st.one_of(st.integers(max_value=-1), st.integers(min_value=50257)),
    st.data(),
)
def test_gpt2_decode_rejects_ids_outside_the_vocabulary_naming_tokens(ids, bad, data):
    position = data.draw(st.integers(0, len(ids)))
    tokens = [*ids[:position], bad, *ids[position:]]
    for decode in (gpt2_tokenizer().decode, gpt2_tokenizer().decode_bytes):
        with pytest.raises(ValueError, match=rf"tokens\[{position}\] = {bad} .*\[0, 50257\)"):
            decode(tokens)


@given(st.lists(st.integers(0, 50256), max_size=16))
@example([31373, 94])  # "hello" then a lone continuation byte 0xa1: not UTF-8
def test_gpt2_decode_of_valid_ids_is_plain_tiktokens(ids):
    plain = tiktoken.Encoding(
        name="plain-gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=reference_ranks(),
        special_tokens={ENDOFTEXT: 50256},
        explicit_n_vocab=50257,
    )
    assert gpt2_tokenizer().decode_bytes(ids) == plain.decode_bytes(ids)
    assert gpt2_tokenizer().decode(ids) == plain.decode(ids)
    # Ids that split a multi-byte character: every ``errors`` mode behaves as tiktoken's.
    for errors in ("replace", "ignore", "backslashreplace", "strict"):
        try:
            expected = plain.decode(ids, errors=errors)
        except UnicodeDecodeError:
            with pytest.raises(UnicodeDecodeError):
                gpt2_tokenizer().decode(ids, errors=errors)
        else:
            assert gpt2_tokenizer().decode(ids, errors=errors) == expected
