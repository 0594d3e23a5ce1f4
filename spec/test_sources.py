"""Spec for machinery.sources: a model and the tokenizer it comes with, from wherever it is.

References: the tokenizer files themselves (``encoder.json`` read as JSON, the ``tokenizers``
library reading ``tokenizer.json``), ``tiktoken``'s GPT-2 encoding, and the model's own config.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gpt_components.bpe import BPETokenizer
from gpt_components.cli import main
from gpt_components.machinery.pretrained import save_pretrained
from gpt_components.machinery.registry import build_model, preset_config
from gpt_components.machinery.resources import load_text
from gpt_components.machinery.sources import (
    TOKENIZER_FILES,
    load_model_and_tokenizer,
    load_tokenizer_spec,
    save_tokenizer,
    tokenizer_of,
)

pytestmark = pytest.mark.machinery

TEXT = load_text("the-verdict.txt")[:2000]


@pytest.fixture(scope="module")
def learned() -> BPETokenizer:
    return BPETokenizer.train(TEXT, vocab_size=300)


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory):
    """A directory with a tokenizer.json trained by the tokenizers library, end of text at 0."""
    library = Tokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = decoders.ByteLevel()
    library.train_from_iterator([TEXT], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory = tmp_path_factory.mktemp("tokenizer-json")
    library.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def llama_weights(tmp_path_factory, tokenizer_json):
    """A small Llama's weights in Hugging Face's layout, with the tokenizer.json beside them."""
    directory = tmp_path_factory.mktemp("llama")
    save_pretrained(build_model(preset_config("llama3-nano", vocab_size=320, n_layers=1)),
                    directory)
    (directory / "tokenizer.json").write_bytes((tokenizer_json / "tokenizer.json").read_bytes())
    return directory


@settings(max_examples=20, deadline=None)
@given(text=st.text(max_size=40))
def test_a_saved_tokenizer_is_found_again_and_encodes_as_the_files_say(
        text, learned, tokenizer_json, tmp_path_factory):
    directory = tmp_path_factory.mktemp("kept")
    again = tokenizer_of(save_tokenizer(learned, directory))
    assert again.encode(text, disallowed_special=()) == learned.encode(
        text, disallowed_special=())
    end = json.loads((directory / "encoder.json").read_text(encoding="utf-8"))["<|endoftext|>"]
    assert again.eot_token == end
    library = Tokenizer.from_file(str(tokenizer_json / "tokenizer.json"))
    from_json = tokenizer_of(save_tokenizer(tokenizer_of(tokenizer_json), directory))
    assert from_json.encode(text, disallowed_special=()) == library.encode(
        text, add_special_tokens=False).ids
    assert from_json.eot_token == library.token_to_id("<|endoftext|>") == 0
    assert not (directory / "encoder.json").exists()  # the earlier tokenizer's files are gone


def test_gpt2_writes_no_file_and_a_directory_without_one_means_gpt2(learned, tmp_path):
    save_tokenizer(learned, tmp_path)
    gpt2 = tokenizer_of(save_tokenizer(load_tokenizer_spec("gpt2"), tmp_path))
    assert not any((tmp_path / name).exists() for name in TOKENIZER_FILES)
    assert gpt2.encode("Hello, world") == [15496, 11, 995] and gpt2.eot_token == 50256
    with pytest.raises(TypeError, match="^tokenizer must be GPT-2's or have a save"):
        save_tokenizer(object(), tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="holds no tokenizer this project reads"):
        tokenizer_of(tmp_path)  # a SentencePiece file: refused, not read as GPT-2's ids


def test_weights_come_with_the_tokenizer_beside_them_unless_one_is_given(llama_weights):
    library = Tokenizer.from_file(str(llama_weights / "tokenizer.json"))
    model, tokenizer, origin = load_model_and_tokenizer(llama_weights, drop_rate=0.25)
    assert origin == f"weights {llama_weights}" and not model.training
    assert model.cfg.drop_rate == 0.25 and model.cfg.vocab_size == 320
    assert tokenizer.encode("the portrait") == library.encode(
        "the portrait", add_special_tokens=False).ids
    _, gpt2, _ = load_model_and_tokenizer(llama_weights, tokenizer="gpt2")
    assert gpt2.name == "gpt2"
    with pytest.raises(FileNotFoundError, match="^source '/no/such/model' does not exist"):
        load_model_and_tokenizer("/no/such/model")
    with pytest.raises(ValueError, match="^tokenizer must be 'gpt2', a directory"):
        load_model_and_tokenizer(llama_weights, tokenizer="/no/such/tokenizer")


def test_a_run_comes_with_the_tokenizer_it_was_trained_with(tokenizer_json, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--tokenizer", str(tokenizer_json),
                 "--run-dir", str(run), "--preset", "qwen3-nano", "--context-length", "16",
                 "--batch-size", "2", "--steps", "1", "--eval-interval", "1",
                 "--eval-iters", "1", "--sample-tokens", "0", "--no-progress"]) == 0
    library = Tokenizer.from_file(str(tokenizer_json / "tokenizer.json"))
    for source in (run, run / "checkpoints" / "step-00000001"):
        model, tokenizer, origin = load_model_and_tokenizer(source)
        assert origin == f"run {source} (step 1)"
        assert model.cfg.vocab_size == library.get_vocab_size(with_added_tokens=True)
        assert tokenizer.encode("the portrait") == library.encode(
            "the portrait", add_special_tokens=False).ids
