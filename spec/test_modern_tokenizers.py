"""Spec for gpt_components.modern.tokenizers (and ``BPETokenizer``'s ``pattern``).

Every file is made here: a small BPE is trained, written as a tiktoken ``tokenizer.model`` the
way Meta's files are (base64 token, space, rank) and as a ``tokenizer.json`` built by the
``tokenizers`` library with Qwen3's pipeline. References: ``tiktoken`` (an ``Encoding`` built
from ``tiktoken.load.load_tiktoken_bpe`` of the same file, the published pattern and the
published special tokens, all spelled here) and the ``tokenizers`` library reading the same
``tokenizer.json``.
"""

from __future__ import annotations

import base64
import json
import unicodedata

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from gpt_components.bpe import BPETokenizer
from gpt_components.corpus import prepare_corpus
from gpt_components.generation import text_to_token_ids, token_ids_to_text
from gpt_components.machinery.resources import load_text
from gpt_components.modern.tokenizers import (
    LLAMA3_PATTERN,
    QWEN2_PATTERN,
    HFTokenizer,
    Llama3Encoding,
    llama3_tokenizer,
    load_tokenizer,
    read_tiktoken_model,
)
from gpt_components.tokenizers import gpt2_byte_decoder

pytestmark = pytest.mark.modern

# The published patterns, spelled here independently of the module: Meta's tokenizer.py for
# Llama 3, and the Split pre-tokenizer of Qwen2 / Qwen3's tokenizer.json.
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
          r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
        r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3.1 / 3.2's special tokens in id order, after the last mergeable rank.
LLAMA3_SPECIALS = (
    ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
     "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
     "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]
)
# Qwen3's added tokens (a selection): specials, then ones its file marks as not special.
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                 "<|vision_pad|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<think>", "</think>"]

CORPUS = load_text("the-verdict.txt")[:6000] + " Ünïcödé テキスト 12345 6789 don'T WE'LL\r\n\n  x"

# Characters Python's Unicode tables assign: a code point assigned later (U+323B0, CJK Extension
# J in Unicode 17) is a letter to the `regex` module's newer tables and unassigned to tiktoken's,
# so the two references split it differently (as in test_bpe.py).
fragments = st.one_of(
    st.text(st.characters(exclude_categories=("Cn", "Cs")), max_size=6),
    st.sampled_from([" the", " a", "The", "'s", "'LL", "’s", "12345", "٠١٢", " \n\n", "\r\n",
                     "  ", "\t", "!!\n", " ...", "é", "e\u0301", "😀", "テキスト", "Ünï"]),
    st.text("0123456789", min_size=1, max_size=8),
    st.text(" \n\r\t", min_size=1, max_size=4),
)


def texts_with(specials):
    return st.lists(st.one_of(fragments, st.sampled_from(specials)), max_size=12).map("".join)


plain_texts = st.lists(fragments, max_size=12).map("".join)


def _write_tiktoken(path, ranks):
    lines = [base64.b64encode(token).decode("ascii") + f" {rank}"
             for token, rank in sorted(ranks.items(), key=lambda item: item[1])]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def _qwen_like_tokenizer(bpe, specials=True):
    """A tokenizer.json pipeline as Qwen3's: NFC, the Qwen pattern, byte-level BPE."""
    char_of = {byte: char for char, byte in gpt2_byte_decoder().items()}

    def printable(token):
        return "".join(char_of[b] for b in token)

    vocab = {printable(token): rank for token, rank in bpe.mergeable_ranks.items()}
    merges = [(printable(a), printable(b)) for a, b in bpe.merges]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    # Without specials, names that never occur in text hold their ids, so the ids stay the same.
    names = QWEN_SPECIALS if specials else [f"<never-{i}>" for i in range(len(QWEN_SPECIALS))]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED])
    return tok


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama3")
    bpe = BPETokenizer.train(CORPUS, vocab_size=420, special_tokens=(), pattern=LLAMA3)
    _write_tiktoken(directory / "tokenizer.model", bpe.mergeable_ranks)
    return directory


@pytest.fixture(scope="module")
def llama_reference(llama_dir, monkeypatch_module):
    monkeypatch_module.setenv("TIKTOKEN_CACHE_DIR", "")  # read the file itself, never a cache
    ranks = tiktoken.load.load_tiktoken_bpe(str(llama_dir / "tokenizer.model"))
    return tiktoken.Encoding("reference", pat_str=LLAMA3, mergeable_ranks=ranks,
                             special_tokens={t: len(ranks) + i
                                             for i, t in enumerate(LLAMA3_SPECIALS)})


@pytest.fixture(scope="module")
def qwen_tokenizers(qwen_dir):
    """(ours, the library reading the same file, the library reading it without specials)."""
    return (load_tokenizer(qwen_dir), Tokenizer.from_file(str(qwen_dir / "tokenizer.json")),
            Tokenizer.from_file(str(qwen_dir / "ordinary.json")))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("qwen3")
    bpe = BPETokenizer.train(CORPUS, vocab_size=400, special_tokens=(), pattern=QWEN)
    _qwen_like_tokenizer(bpe).save(str(directory / "tokenizer.json"))
    _qwen_like_tokenizer(bpe, specials=False).save(str(directory / "ordinary.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    return directory


# -- BPETokenizer with any pattern ---------------------------------------------------------------


corpora = st.lists(st.one_of(fragments, st.sampled_from(["the", " cat", "aaaa", "1234567"])),
                   max_size=30).map("".join)


@pytest.mark.bpe
@settings(max_examples=30)
@given(corpus=corpora, extra=st.integers(0, 40), text=plain_texts,
       pattern=st.sampled_from([LLAMA3, QWEN]))
def test_bpe_trained_with_a_pattern_encodes_as_tiktoken_with_its_ranks_and_pattern(
        corpus, extra, text, pattern):
    tok = BPETokenizer.train(corpus, vocab_size=257 + extra, pattern=pattern)
    reference = tiktoken.Encoding("reference", pat_str=pattern,
                                  mergeable_ranks=tok.mergeable_ranks,
                                  special_tokens=tok.special_tokens)
    assert tok.encode(text) == reference.encode(text)
    assert tok.encode(corpus, disallowed_special=()) == reference.encode(
        corpus, disallowed_special=())
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.bpe
def test_a_pattern_survives_save_and_load_and_changes_the_name(tmp_path):
    llama = BPETokenizer.train(CORPUS, vocab_size=300, pattern=LLAMA3)
    gpt2_style = BPETokenizer.train(CORPUS, vocab_size=300)
    assert llama.pattern == LLAMA3 and gpt2_style.pattern != LLAMA3
    loaded = BPETokenizer.load(llama.save(tmp_path / "llama"))
    assert loaded.pattern == LLAMA3 and loaded.name == llama.name
    assert loaded.encode("12345 don'T") == llama.encode("12345 don'T")
    assert BPETokenizer.load(gpt2_style.save(tmp_path / "gpt2")).pattern == gpt2_style.pattern
    assert not (tmp_path / "gpt2" / "pattern.txt").exists()
    same_merges = BPETokenizer(llama.mergeable_ranks, llama.merges, llama.special_tokens)
    assert same_merges.name != llama.name  # same ranks, other pattern: other token ids
    for bad, error in [("(", ValueError), ("x*", ValueError), (3, TypeError)]:
        with pytest.raises(error, match="^pattern must"):
            BPETokenizer.train("abc", vocab_size=300, pattern=bad)


# -- Llama 3: tokenizer.model --------------------------------------------------------------------


def test_the_module_patterns_are_the_published_ones():
    assert (LLAMA3_PATTERN, QWEN2_PATTERN) == (LLAMA3, QWEN)


@pytest.fixture(scope="module")
def llama(llama_dir):
    return load_tokenizer(llama_dir)


@settings(max_examples=50)
@given(text=texts_with(LLAMA3_SPECIALS[:12] + ["<|endoftext|>"]))
def test_llama3_tokenizer_model_encodes_as_tiktoken_reading_the_same_file(
        text, llama, llama_reference):
    tok = llama
    assert isinstance(tok, Llama3Encoding)
    assert tok.encode(text, allowed_special="all") == llama_reference.encode(
        text, allowed_special="all")
    assert tok.encode_ordinary(text) == llama_reference.encode_ordinary(text)
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_llama3_special_tokens_follow_the_128000_ranks_in_the_published_order(
        llama_dir, llama_reference):
    tok = llama3_tokenizer(llama_dir / "tokenizer.model")
    n = len(read_tiktoken_model(llama_dir / "tokenizer.model"))
    assert n == 420 and tok.n_vocab == n + 256 == llama_reference.n_vocab
    for offset, name in [(0, "<|begin_of_text|>"), (1, "<|end_of_text|>"),
                         (6, "<|start_header_id|>"), (7, "<|end_header_id|>"), (8, "<|eom_id|>"),
                         (9, "<|eot_id|>"), (255, "<|reserved_special_token_247|>")]:
        assert tok.encode(name, allowed_special="all") == [n + offset]
    assert tok.eot_token == n + 1  # <|end_of_text|>: what separates documents
    assert tok.special_tokens_set == set(LLAMA3_SPECIALS)
    with pytest.raises(ValueError, match="^text contains the special token '<\\|eot_id\\|>', "
                                         "which is disallowed") as caught:
        tok.encode("hi <|eot_id|>")
    assert caught.value.parameter == "text"
    # The project's callers allow <|endoftext|>, which Llama 3 lacks: it is ordinary text here.
    assert tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == tok.encode_ordinary(
        "<|endoftext|>")
    assert tok.name.startswith("llama3-") and tok.name == llama3_tokenizer(
        llama_dir / "tokenizer.model").name
    with pytest.raises(ValueError, match=r"ids must be in \[0, "):
        tok.decode([tok.n_vocab])


def test_a_malformed_tiktoken_file_is_refused_naming_the_problem(tmp_path):
    path = tmp_path / "tokenizer.model"
    ranks = {bytes([b]): b for b in range(256)}
    _write_tiktoken(path, ranks)
    path.write_text(path.read_text() + "not-base64!! 256\n")
    with pytest.raises(ValueError, match="line 257 must be '<base64 token> <rank>'"):
        read_tiktoken_model(path)
    _write_tiktoken(path, {**ranks, b"ab": 300})
    with pytest.raises(ValueError, match=r"must rank its 257 tokens 0 \.\. 256"):
        read_tiktoken_model(path)
    _write_tiktoken(path, {bytes([b]): b for b in range(1, 256)} | {b"ab": 0})
    with pytest.raises(ValueError, match=r"all 256 single bytes; missing \[0\]"):
        read_tiktoken_model(path)


# -- Qwen3: tokenizer.json -----------------------------------------------------------------------


@settings(max_examples=50)
@given(text=texts_with(QWEN_SPECIALS + QWEN_ADDED))
def test_qwen3_tokenizer_json_encodes_as_the_tokenizers_library_reading_it(
        text, qwen_tokenizers):
    tok, reference, ordinary = qwen_tokenizers
    assert isinstance(tok, HFTokenizer)
    ids = tok.encode(text, allowed_special="all")
    assert ids == reference.encode(text, add_special_tokens=False).ids
    # Read as ordinary text, the specials' names encode as a file without them does.
    assert tok.encode(text, disallowed_special=()) == ordinary.encode(
        text, add_special_tokens=False).ids == tok.encode_ordinary(text)
    assert tok.decode(ids) == reference.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    if any(name in text for name in QWEN_SPECIALS):
        with pytest.raises(ValueError, match="disallowed"):
            tok.encode(text)


def test_qwen3_tokenizer_knows_its_specials_and_plugs_into_the_corpus_and_generation(
        qwen_dir, tmp_path):
    tok = load_tokenizer(qwen_dir)
    reference = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    assert tok.n_vocab == reference.get_vocab_size(with_added_tokens=True) == 400 + 9
    assert tok.special_tokens_set == set(QWEN_SPECIALS)  # <think> & co. are plain vocabulary
    assert tok.eot_token == reference.token_to_id("<|endoftext|>")
    assert tok.encode("<|im_start|>", allowed_special={"<|im_start|>", "<|eot_id|>"}) == [
        reference.token_to_id("<|im_start|>")]
    with pytest.raises(ValueError, match=r"ids must be in \[0, 409\)"):
        tok.decode([409])
    # Two documents become one stream with <|endoftext|> between them.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("The cat <think>sat</think>.\n")
    (tmp_path / "docs" / "b.txt").write_text("12345 don't")
    corpus = prepare_corpus(tmp_path / "docs", tok, tmp_path / "cache")
    expected = (reference.encode("The cat <think>sat</think>.\n").ids + [tok.eot_token]
                + reference.encode("12345 don't").ids)
    assert corpus.tokens.tolist() == expected
    ids = text_to_token_ids("Hello<|endoftext|>", tok)
    assert ids.tolist() == [reference.encode("Hello<|endoftext|>").ids]
    assert token_ids_to_text(ids, tok) == "Hello<|endoftext|>"


def test_load_tokenizer_picks_the_file_a_model_directory_holds(llama_dir, qwen_dir, tmp_path):
    both = tmp_path / "both"
    (both / "original").mkdir(parents=True)
    (both / "original" / "tokenizer.model").write_bytes(
        (llama_dir / "tokenizer.model").read_bytes())
    (both / "tokenizer.json").write_bytes((qwen_dir / "tokenizer.json").read_bytes())
    assert isinstance(load_tokenizer(both), HFTokenizer)  # HF's conversion at the top wins
    (both / "tokenizer.json").unlink()
    assert isinstance(load_tokenizer(both), Llama3Encoding)  # Meta's file under original/
    sentencepiece = tmp_path / "sp"
    sentencepiece.mkdir()
    (sentencepiece / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="holds no tokenizer this project reads"):
        load_tokenizer(sentencepiece)
    (sentencepiece / "tokenizer.json").write_bytes((qwen_dir / "tokenizer.json").read_bytes())
    assert isinstance(load_tokenizer(sentencepiece), HFTokenizer)
    with pytest.raises(ValueError, match="^directory must be a model directory"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable tokenizer.json"):
        load_tokenizer(tmp_path / "bad")


def test_the_command_line_takes_a_model_directory_as_its_tokenizer(llama_dir, qwen_dir, tmp_path,
                                                                    capsys, monkeypatch):
    from gpt_components.cli import main
    from gpt_components.machinery.sources import load_tokenizer_spec  # what --tokenizer reads

    assert isinstance(load_tokenizer_spec(str(llama_dir)), Llama3Encoding)
    assert isinstance(load_tokenizer_spec(str(qwen_dir)), HFTokenizer)
    bpe = BPETokenizer.train("abc abc", vocab_size=260, pattern=LLAMA3)
    assert load_tokenizer_spec(str(bpe.save(tmp_path / "bpe"))).pattern == LLAMA3
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no tokenizer this project reads"):
        load_tokenizer_spec(str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--tokenizer", str(tmp_path / "empty"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error: --tokenizer")
    assert "holds no tokenizer this project reads" in err
    assert not (tmp_path / "runs").exists()  # refused before a run was started


# -- kept beside finetuned weights: save() writes what load_tokenizer reads ------------------------


@pytest.fixture(scope="module")
def saved_again(llama_dir, qwen_dir, tmp_path_factory):
    """(Llama 3's, Qwen3's tokenizer, each read back after its own save(), and where)."""
    root = tmp_path_factory.mktemp("saved")
    return (load_tokenizer(load_tokenizer(llama_dir).save(root / "llama")),
            load_tokenizer(load_tokenizer(qwen_dir).save(root / "qwen")), root)


def test_a_saved_tokenizer_writes_the_files_it_was_read_from(llama_dir, qwen_dir, saved_again):
    llama, qwen, root = saved_again
    assert (root / "llama" / "tokenizer.model").read_bytes() == (
        llama_dir / "tokenizer.model").read_bytes()
    assert json.loads((root / "qwen" / "tokenizer.json").read_text()) == json.loads(
        (qwen_dir / "tokenizer.json").read_text())
    assert (root / "qwen" / "tokenizer_config.json").read_text() == (
        qwen_dir / "tokenizer_config.json").read_text()
    assert llama.name == load_tokenizer(llama_dir).name  # the same file: the same corpus cache
    reference = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    assert qwen.eot_token == reference.token_to_id("<|endoftext|>")
    assert llama.eot_token == len(read_tiktoken_model(llama_dir / "tokenizer.model")) + 1


@settings(max_examples=25)
@given(text=texts_with(LLAMA3_SPECIALS[:12] + QWEN_SPECIALS + QWEN_ADDED))
def test_a_saved_tokenizer_reads_back_encoding_as_the_reference_reading_the_original(
        text, saved_again, llama_reference, qwen_tokenizers):
    llama, qwen, _ = saved_again
    assert llama.encode(text, allowed_special="all") == llama_reference.encode(
        text, allowed_special="all")
    assert qwen.encode(text, allowed_special="all") == qwen_tokenizers[1].encode(
        text, add_special_tokens=False).ids


def test_a_tokenizer_json_without_a_config_saves_its_end_of_text_as_the_eos_token(tmp_path):
    library = Tokenizer(models.BPE({"a": 0, "b": 1}, []))
    library.add_special_tokens([AddedToken("<eos>", special=True, normalized=False)])
    tok = HFTokenizer(library, name="small", eos_token="<eos>")
    again = HFTokenizer.from_file(tok.save(tmp_path) / "tokenizer.json")
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {"eos_token": "<eos>"}
    assert again.eot_token == tok.eot_token == library.token_to_id("<eos>")
