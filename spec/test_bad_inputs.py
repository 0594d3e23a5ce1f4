"""Spec: every bad argument to the book's chapters, the modern components, fine-tuning and
``inspect`` is refused clearly, before any work is done.

A sweep of wrong calls (wrong types, bools for ints, NaN and infinite floats, negative sizes,
empty inputs, wrong shapes and dtypes, unknown choices, mismatched models) over the public
functions and classes of ``fundamentals``, ``tokenizers``, ``bpe*``, ``data``, ``corpus``,
``embeddings``, ``modern`` (norms, rope, feed-forwards, MoE, components, chat formats,
tokenizers), ``finetune`` (classification, instructions, LoRA, DPO, spam data) and ``inspect``.
Each must raise a ``ValueError`` or ``TypeError`` whose ``parameter`` names the argument at
fault (a wrong type a ``TypeError``, a wrong value a ``ValueError``): never an ``IndexError``
or a bare ``RuntimeError`` from inside torch, never a silent result. The reference for "names
the argument" is the call itself: the parameter each case passes the bad value in.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from gpt_components.bpe import BPETokenizer
from gpt_components.bpe_files import read_gpt2_files, write_gpt2_files
from gpt_components.bpe_merges import learn_merges, merge_word
from gpt_components.corpus import TokenCorpus, TokenWindows, encode_text, prepare_corpus
from gpt_components.data import GPTDatasetV1, create_dataloader_v1
from gpt_components.embeddings import GPTEmbedding
from gpt_components.finetune import classification as clf
from gpt_components.finetune import dpo, instructions, lora, spam_data
from gpt_components.fundamentals import (
    NeuralNetwork,
    ToyDataset,
    compute_accuracy,
    logistic_loss,
    logistic_loss_grad,
    train_classifier,
)
from gpt_components.inspect.inspection import inspect_prompt, logit_lens, token_pieces
from gpt_components.inspect.inspection_report import (
    render_html,
    report_data,
    write_pngs,
    write_report,
)
from gpt_components.inspect.trace import ModelTrace
from gpt_components.machinery.registry import build_model, preset_config
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.modern import tokenizers as mtok
from gpt_components.modern.chat import Gemma3ChatFormat, Llama3ChatFormat, Qwen3ChatFormat
from gpt_components.modern.components import make_norm
from gpt_components.modern.feedforward import SwiGLU
from gpt_components.modern.moe import MoEFeedForward, Router, load_balancing_loss
from gpt_components.modern.norms import RMSNorm
from gpt_components.modern.rope import (
    Llama3RopeScaling,
    RotaryEmbedding,
    apply_rope,
    rope_inverse_frequencies,
)
from gpt_components.tokenizers import (
    UNK,
    SimpleTokenizerV1,
    SimpleTokenizerV2,
    build_vocab,
    gpt2_tokenizer,
    split_words,
)

pytestmark = pytest.mark.machinery

NAN, INF = math.nan, math.inf
LONG = torch.long

# -- what the cases share, built once on first use ---------------------------------------------


@functools.cache
def _dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="bad-inputs-"))


@pytest.fixture(scope="module", autouse=True)
def _remove_the_files_written():
    yield
    if _dir.cache_info().currsize:
        shutil.rmtree(_dir(), ignore_errors=True)
        _dir.cache_clear()


def _file(name: str, content: str | bytes) -> Path:
    path = _dir() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _empty_dir(name: str) -> Path:
    path = _dir() / name
    path.mkdir(exist_ok=True)
    return path


@functools.cache
def _gpt(vocab_size: int = 64) -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=vocab_size, context_length=16, emb_dim=8, n_heads=2,
                              n_layers=1, drop_rate=0.0))


@functools.cache
def _gpt2_vocab_model() -> GPTModel:
    return _gpt(50257)


@functools.cache
def _llama() -> nn.Module:
    torch.manual_seed(0)
    return build_model(preset_config("llama3-nano", vocab_size=64))


@functools.cache
def _classifier() -> GPTModel:
    return clf.make_classifier(copy.deepcopy(_gpt2_vocab_model()), 2)


@functools.cache
def _inspection():
    return inspect_prompt(_gpt2_vocab_model(), gpt2_tokenizer(), "Hello there", top_k=2)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@functools.cache
def _lora_file() -> Path:
    path = _dir() / "adapters.safetensors"
    lora.save_lora(lora.replace_linear_with_lora(_mlp(), 2, 4.0), path)
    return path


@functools.cache
def _pairs_batch() -> dict:
    items = [{"prompt": [1, 2], "chosen": [1, 2, 3, 4], "rejected": [1, 2, 5]},
             {"prompt": [7], "chosen": [7, 8], "rejected": [7, 9, 10]}]
    return dpo.preference_collate(items, pad_token_id=0)  # ids within the models' 64


def _pair_item() -> dict:
    return {"prompt": [1], "chosen": [1, 2], "rejected": [1, 3]}


PAIR = {"instruction": "Say hi.", "input": "", "chosen": "Hello!", "rejected": "No."}
RECORD = {"instruction": "Say hi.", "input": "", "output": "Hello!"}


@functools.cache
def _hf_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from gpt_components.tokenizers import gpt2_byte_decoder

    library = Tokenizer(models.BPE(dict(gpt2_byte_decoder()), []))
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    library.decoder = decoders.ByteLevel()
    library.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    path = _empty_dir("hf") / "tokenizer.json"
    library.save(str(path))
    return mtok.HFTokenizer.from_file(path)


def _bad_config_dir() -> Path:
    directory = _empty_dir("hf-bad-config")
    (directory / "tokenizer.json").write_text(
        (_dir() / "hf" / "tokenizer.json").read_text(encoding="utf-8"), encoding="utf-8")
    (directory / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    return directory


def _hf_with_bad_config():
    _hf_tokenizer()  # writes hf/tokenizer.json
    return mtok.HFTokenizer.from_file(_bad_config_dir() / "tokenizer.json")


@functools.cache
def _bpe() -> BPETokenizer:
    return BPETokenizer.train("the cat sat on the mat " * 4, 270)


def _bpe_parts():
    tok = _bpe()
    return tok.mergeable_ranks, list(tok.merges), tok.special_tokens


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1)


def _toy_loader():
    return [(torch.zeros(2, 3), torch.tensor([0, 1]))]


def _messages(*roles: str) -> list[dict]:
    return [{"role": role, "content": f"{role} text"} for role in roles]


CHATS = {"llama3": Llama3ChatFormat, "qwen3": Qwen3ChatFormat, "gemma3": Gemma3ChatFormat}

# -- the cases: (id, the argument at fault, the call) -------------------------------------------

f32 = torch.zeros
CASES: list[tuple[str, str, object]] = [
    # fundamentals (appendix A)
    ("logistic_loss int x", "x", lambda: logistic_loss(torch.zeros(2, dtype=LONG), f32(2),
                                                       f32(1), f32(2))),
    ("logistic_loss str w", "w", lambda: logistic_loss(f32(2), "w", f32(1), f32(2))),
    ("logistic_loss None b", "b", lambda: logistic_loss(f32(2), f32(2), None, f32(2))),
    ("logistic_loss y shape", "y", lambda: logistic_loss(f32(2), f32(2), f32(1), f32(3))),
    ("logistic_loss y NaN", "y", lambda: logistic_loss(f32(2), f32(2), f32(1),
                                                       torch.tensor([0.0, NAN]))),
    ("logistic_loss y > 1", "y", lambda: logistic_loss(f32(2), f32(2), f32(1),
                                                       torch.tensor([0.0, 2.0]))),
    ("logistic_loss_grad w shape", "w", lambda: logistic_loss_grad(f32(2), f32(3), f32(1),
                                                                   f32(2))),
    ("ToyDataset list X", "X", lambda: ToyDataset([[1.0]], f32(1))),
    ("ToyDataset 0-d y", "y", lambda: ToyDataset(f32(2, 2), torch.tensor(1))),
    ("ToyDataset lengths", "y", lambda: ToyDataset(f32(2, 2), f32(3))),
    ("NeuralNetwork bool inputs", "num_inputs", lambda: NeuralNetwork(True, 2)),
    ("NeuralNetwork float inputs", "num_inputs", lambda: NeuralNetwork(2.0, 2)),
    ("NeuralNetwork zero outputs", "num_outputs", lambda: NeuralNetwork(2, 0)),
    ("NeuralNetwork generator", "generator", lambda: NeuralNetwork(2, 2, generator=5)),
    ("NeuralNetwork int x", "x", lambda: NeuralNetwork(3, 2)(torch.zeros(2, 3, dtype=LONG))),
    ("NeuralNetwork x width", "x", lambda: NeuralNetwork(3, 2)(f32(2, 4))),
    ("train_classifier epochs 0", "epochs",
     lambda: train_classifier(NeuralNetwork(3, 2), _toy_loader(), 0, 0.1)),
    ("train_classifier lr NaN", "lr",
     lambda: train_classifier(NeuralNetwork(3, 2), _toy_loader(), 1, NAN)),
    ("train_classifier lr inf", "lr",
     lambda: train_classifier(NeuralNetwork(3, 2), _toy_loader(), 1, INF)),
    ("train_classifier lr bool", "lr",
     lambda: train_classifier(NeuralNetwork(3, 2), _toy_loader(), 1, True)),
    ("train_classifier lr negative", "lr",
     lambda: train_classifier(NeuralNetwork(3, 2), _toy_loader(), 1, -0.1)),
    ("train_classifier model None", "model", lambda: train_classifier(None, _toy_loader(), 1, 0.1)),
    ("train_classifier loss_fn", "loss_fn",
     lambda: train_classifier(NeuralNetwork(3, 2), _toy_loader(), 1, 0.1, loss_fn="ce")),
    ("train_classifier empty loader", "loader",
     lambda: train_classifier(NeuralNetwork(3, 2), [], 1, 0.1)),
    ("compute_accuracy model None", "model", lambda: compute_accuracy(None, _toy_loader())),
    ("compute_accuracy empty loader", "loader", lambda: compute_accuracy(NeuralNetwork(3, 2), [])),
    # tokenizers (chapter 2)
    ("split_words None", "text", lambda: split_words(None)),
    ("build_vocab int text", "text", lambda: build_vocab(5)),
    ("build_vocab str specials", "special_tokens", lambda: build_vocab("a", "<|x|>")),
    ("build_vocab int special", "special_tokens", lambda: build_vocab("a", [1])),
    ("SimpleTokenizerV1 list vocab", "vocab", lambda: SimpleTokenizerV1([("a", 0)])),
    ("SimpleTokenizerV1 negative id", "vocab", lambda: SimpleTokenizerV1({"a": -1})),
    ("SimpleTokenizerV1 repeated id", "vocab", lambda: SimpleTokenizerV1({"a": 0, "b": 0})),
    ("SimpleTokenizerV1 bool id", "vocab", lambda: SimpleTokenizerV1({"a": True})),
    ("V1.encode unknown word", "text", lambda: SimpleTokenizerV1({"a": 0}).encode("zzz")),
    ("V1.encode None", "text", lambda: SimpleTokenizerV1({"a": 0}).encode(None)),
    ("V1.decode unknown id", "ids", lambda: SimpleTokenizerV1({"a": 0}).decode([9])),
    ("V1.decode float id", "ids", lambda: SimpleTokenizerV1({"a": 0}).decode([0.0])),
    ("V1.decode bool id", "ids", lambda: SimpleTokenizerV1({"a": 0}).decode([False])),
    ("V1.decode int", "ids", lambda: SimpleTokenizerV1({"a": 0}).decode(5)),
    ("SimpleTokenizerV2 without unk", "vocab", lambda: SimpleTokenizerV2({"a": 0})),
    ("V2.encode int", "text", lambda: SimpleTokenizerV2({"a": 0, UNK: 1}).encode(3)),
    ("gpt2 encode int", "text", lambda: gpt2_tokenizer().encode(5)),
    ("gpt2 encode disallowed special", "text", lambda: gpt2_tokenizer().encode("<|endoftext|>")),
    ("gpt2 encode_ordinary None", "text", lambda: gpt2_tokenizer().encode_ordinary(None)),
    ("gpt2 decode negative", "tokens", lambda: gpt2_tokenizer().decode([-1])),
    ("gpt2 decode past vocab", "tokens", lambda: gpt2_tokenizer().decode([50257])),
    ("gpt2 decode str id", "tokens", lambda: gpt2_tokenizer().decode(["a"])),
    ("gpt2 decode float id", "tokens", lambda: gpt2_tokenizer().decode([1.5])),
    ("gpt2 decode_bytes None", "tokens", lambda: gpt2_tokenizer().decode_bytes(None)),
    # bpe, bpe_merges, bpe_files
    ("BPE.train None text", "text", lambda: BPETokenizer.train(None, 300)),
    ("BPE.train small vocab", "vocab_size", lambda: BPETokenizer.train("abc", 100)),
    ("BPE.train float vocab", "vocab_size", lambda: BPETokenizer.train("abc", 300.0)),
    ("BPE.train min_frequency 0", "min_frequency",
     lambda: BPETokenizer.train("abc", 300, min_frequency=0)),
    ("BPE.train str specials", "special_tokens", lambda: BPETokenizer.train("abc", 300, "x")),
    ("BPE.train int pattern", "pattern", lambda: BPETokenizer.train("abc", 300, pattern=5)),
    ("BPE.train bad regex", "pattern", lambda: BPETokenizer.train("abc", 300, pattern="(")),
    ("BPE.train empty-matching regex", "pattern",
     lambda: BPETokenizer.train("abc", 300, pattern="a*")),
    ("BPETokenizer str ranks", "mergeable_ranks", lambda: BPETokenizer("x", [])),
    ("BPETokenizer empty ranks", "mergeable_ranks", lambda: BPETokenizer({}, [])),
    ("BPETokenizer str-keyed ranks", "mergeable_ranks", lambda: BPETokenizer({"a": 0}, [])),
    ("BPETokenizer str merges", "merges", lambda: BPETokenizer(_bpe_parts()[0], "ab")),
    ("BPETokenizer str pair", "merges", lambda: BPETokenizer(_bpe_parts()[0], [("a", "b")])),
    ("BPETokenizer list specials", "special_tokens",
     lambda: BPETokenizer(*_bpe_parts()[:2], special_tokens=["<|endoftext|>"])),
    ("BPETokenizer int name", "name", lambda: BPETokenizer(*_bpe_parts(), name=5)),
    ("BPE.encode disallowed special", "text", lambda: _bpe().encode("<|endoftext|>")),
    ("BPE.encode int", "text", lambda: _bpe().encode(5)),
    ("BPE.encode_ordinary bytes", "text", lambda: _bpe().encode_ordinary(b"a")),
    ("BPE.encode str allowed", "allowed_special", lambda: _bpe().encode("a", allowed_special="x")),
    ("BPE.encode unknown allowed", "allowed_special",
     lambda: _bpe().encode("a", allowed_special={"<|zz|>"})),
    ("BPE.encode int disallowed", "disallowed_special",
     lambda: _bpe().encode("a", disallowed_special=5)),
    ("BPE.decode past vocab", "ids", lambda: _bpe().decode([10**6])),
    ("BPE.decode None", "ids", lambda: _bpe().decode(None)),
    ("BPE.decode str id", "ids", lambda: _bpe().decode(["a"])),
    ("BPE.load None", "directory", lambda: BPETokenizer.load(None)),
    ("BPE.save int", "directory", lambda: _bpe().save(5)),
    ("learn_merges list", "chunk_counts", lambda: learn_merges([], 300, 2)),
    ("learn_merges float count", "chunk_counts", lambda: learn_merges({"a": 1.5}, 300, 2)),
    ("learn_merges small n_ordinary", "n_ordinary", lambda: learn_merges({"ab": 2}, 100, 2)),
    ("learn_merges bool n_ordinary", "n_ordinary", lambda: learn_merges({"ab": 2}, True, 2)),
    ("learn_merges min_frequency 0", "min_frequency", lambda: learn_merges({"ab": 2}, 300, 0)),
    ("merge_word str word", "word", lambda: merge_word("abc", (1, 2), 3)),
    ("merge_word short pair", "pair", lambda: merge_word([1, 2], (1,), 3)),
    ("merge_word negative id", "new_id", lambda: merge_word([1, 2], (1, 2), -1)),
    ("merge_word None id", "new_id", lambda: merge_word([1, 2], (1, 2), None)),
    ("read_gpt2_files None", "directory", lambda: read_gpt2_files(None)),
    ("read_gpt2_files bad JSON", "directory", lambda: read_gpt2_files(
        _file("badjson/encoder.json", "{oops").parent)),
    ("read_gpt2_files JSON list", "directory", lambda: read_gpt2_files(
        _file("jsonlist/encoder.json", "[1, 2]").parent)),
    ("write_gpt2_files None", "directory", lambda: write_gpt2_files(None, {}, [], {})),
    ("write_gpt2_files list ranks", "ranks", lambda: write_gpt2_files(_dir() / "w", [], [], {})),
    ("write_gpt2_files int merges", "merges", lambda: write_gpt2_files(_dir() / "w", {}, 5, {})),
    ("write_gpt2_files list specials", "special_tokens",
     lambda: write_gpt2_files(_dir() / "w", {}, [], [])),
    # data (chapter 2)
    ("GPTDatasetV1 int txt", "txt", lambda: GPTDatasetV1(5, gpt2_tokenizer(), 4, 1)),
    ("GPTDatasetV1 max_length 0", "max_length",
     lambda: GPTDatasetV1("a b c d e f", gpt2_tokenizer(), 0, 1)),
    ("GPTDatasetV1 float max_length", "max_length",
     lambda: GPTDatasetV1("a b c d e f", gpt2_tokenizer(), 2.0, 1)),
    ("GPTDatasetV1 stride 0", "stride",
     lambda: GPTDatasetV1("a b c d e f", gpt2_tokenizer(), 2, 0)),
    ("GPTDatasetV1 no tokenizer", "tokenizer", lambda: GPTDatasetV1("a b c", 5, 2, 1)),
    ("GPTDatasetV1 too short", "txt", lambda: GPTDatasetV1("a", gpt2_tokenizer(), 4, 1)),
    ("from_token_ids ragged", "token_ids",
     lambda: GPTDatasetV1.from_token_ids([[1, 2], [3]], 1, 1)),
    ("from_token_ids floats", "token_ids", lambda: GPTDatasetV1.from_token_ids([1.5, 2.0], 1, 1)),
    ("from_token_ids str", "token_ids", lambda: GPTDatasetV1.from_token_ids("abc", 1, 1)),
    ("from_token_ids 2-D", "token_ids",
     lambda: GPTDatasetV1.from_token_ids(np.zeros((2, 2), dtype=np.int64), 1, 1)),
    ("from_token_ids bool max_length", "max_length",
     lambda: GPTDatasetV1.from_token_ids([1, 2, 3], True, 1)),
    ("create_dataloader batch_size 0", "batch_size",
     lambda: create_dataloader_v1("a b c d e f", batch_size=0, max_length=2, stride=1)),
    ("create_dataloader shuffle 1", "shuffle",
     lambda: create_dataloader_v1("a b c d e f", shuffle=1, max_length=2, stride=1)),
    ("create_dataloader drop_last str", "drop_last",
     lambda: create_dataloader_v1("a b c d e f", drop_last="no", max_length=2, stride=1)),
    ("create_dataloader num_workers -1", "num_workers",
     lambda: create_dataloader_v1("a b c d e f", num_workers=-1, max_length=2, stride=1)),
    ("create_dataloader seed -1", "seed",
     lambda: create_dataloader_v1("a b c d e f", seed=-1, max_length=2, stride=1)),
    ("create_dataloader seed and generator", "generator",
     lambda: create_dataloader_v1("a b c d e f", seed=1, generator=torch.Generator(),
                                  max_length=2, stride=1)),
    ("create_dataloader int generator", "generator",
     lambda: create_dataloader_v1("a b c d e f", generator=5, max_length=2, stride=1)),
    ("create_dataloader None max_length", "max_length",
     lambda: create_dataloader_v1("a b c d e f", max_length=None, stride=1)),
    # corpus
    ("encode_text int", "text", lambda: encode_text(5, gpt2_tokenizer())),
    ("encode_text no tokenizer", "tokenizer", lambda: encode_text("a", None)),
    ("TokenCorpus.from_text bytes", "text", lambda: TokenCorpus.from_text(b"x", gpt2_tokenizer())),
    ("TokenCorpus.from_text no tokenizer", "tokenizer", lambda: TokenCorpus.from_text("x", None)),
    ("TokenCorpus.split NaN", "val_fraction",
     lambda: TokenCorpus(np.zeros(5, np.uint16), {}).split(NAN)),
    ("TokenCorpus.split str", "val_fraction",
     lambda: TokenCorpus(np.zeros(5, np.uint16), {}).split("0.1")),
    ("TokenCorpus.split 1", "val_fraction",
     lambda: TokenCorpus(np.zeros(5, np.uint16), {}).split(1)),
    ("TokenWindows list", "tokens", lambda: TokenWindows([1, 2, 3], 2)),
    ("TokenWindows float array", "tokens", lambda: TokenWindows(np.zeros(5), 2)),
    ("TokenWindows 2-D array", "tokens", lambda: TokenWindows(np.zeros((2, 2), np.int64), 1)),
    ("TokenWindows context 0", "context_length", lambda: TokenWindows(np.zeros(5, np.int64), 0)),
    ("TokenWindows float context", "context_length",
     lambda: TokenWindows(np.zeros(5, np.int64), 2.0)),
    ("TokenWindows stride 0", "stride", lambda: TokenWindows(np.zeros(5, np.int64), 2, stride=0)),
    ("prepare_corpus None source", "source",
     lambda: prepare_corpus(None, gpt2_tokenizer(), _dir() / "cache")),
    ("prepare_corpus None cache_dir", "cache_dir",
     lambda: prepare_corpus(_file("c.txt", "text"), gpt2_tokenizer(), None)),
    ("prepare_corpus block_bytes 0", "block_bytes",
     lambda: prepare_corpus(_file("c.txt", "text"), gpt2_tokenizer(), _dir() / "cache",
                            block_bytes=0)),
    ("prepare_corpus block_bytes float", "block_bytes",
     lambda: prepare_corpus(_file("c.txt", "text"), gpt2_tokenizer(), _dir() / "cache",
                            block_bytes=1.5)),
    ("prepare_corpus nameless tokenizer", "tokenizer",
     lambda: prepare_corpus(_file("c.txt", "text"), SimpleTokenizerV2({"a": 0, UNK: 1}),
                            _dir() / "cache")),
    ("prepare_corpus empty directory", "source",
     lambda: prepare_corpus(_empty_dir("nothing"), gpt2_tokenizer(), _dir() / "cache")),
    ("prepare_corpus not UTF-8", "source",
     lambda: prepare_corpus(_file("latin.txt", b"caf\xe9"), gpt2_tokenizer(), _dir() / "cache")),
    # embeddings (chapter 2)
    ("GPTEmbedding vocab 0", "vocab_size", lambda: GPTEmbedding(0, 4, 4)),
    ("GPTEmbedding float emb_dim", "emb_dim", lambda: GPTEmbedding(10, 4.0, 4)),
    ("GPTEmbedding bool context", "context_length", lambda: GPTEmbedding(10, 4, True)),
    ("GPTEmbedding drop_rate 1.5", "drop_rate", lambda: GPTEmbedding(10, 4, 4, 1.5)),
    ("GPTEmbedding drop_rate NaN", "drop_rate", lambda: GPTEmbedding(10, 4, 4, NAN)),
    ("GPTEmbedding drop_rate str", "drop_rate", lambda: GPTEmbedding(10, 4, 4, "0.1")),
    ("GPTEmbedding generator", "generator", lambda: GPTEmbedding(10, 4, 4, generator=1)),
    ("GPTEmbedding float ids", "in_idx", lambda: GPTEmbedding(10, 4, 4)(f32(1, 2))),
    ("GPTEmbedding 1-D ids", "in_idx", lambda: GPTEmbedding(10, 4, 4)(torch.zeros(2, dtype=LONG))),
    ("GPTEmbedding too long", "in_idx", lambda: GPTEmbedding(10, 4, 4)(torch.zeros(1, 5,
                                                                                    dtype=LONG))),
    ("GPTEmbedding id past vocab", "in_idx", lambda: GPTEmbedding(10, 4, 4)(torch.tensor([[10]]))),
    ("GPTEmbedding negative id", "in_idx", lambda: GPTEmbedding(10, 4, 4)(torch.tensor([[-1]]))),
    ("GPTEmbedding list ids", "in_idx", lambda: GPTEmbedding(10, 4, 4)([[1]])),
    # modern: norms
    ("RMSNorm dim 0", "dim", lambda: RMSNorm(0)),
    ("RMSNorm bool dim", "dim", lambda: RMSNorm(True)),
    ("RMSNorm eps inf", "eps", lambda: RMSNorm(4, eps=INF)),
    ("RMSNorm eps NaN", "eps", lambda: RMSNorm(4, eps=NAN)),
    ("RMSNorm eps 0", "eps", lambda: RMSNorm(4, eps=0)),
    ("RMSNorm eps str", "eps", lambda: RMSNorm(4, eps="1e-6")),
    ("RMSNorm offset NaN", "offset", lambda: RMSNorm(4, offset=NAN)),
    ("RMSNorm int x", "x", lambda: RMSNorm(4)(torch.ones(2, 4, dtype=LONG))),
    ("RMSNorm x width", "x", lambda: RMSNorm(4)(f32(2, 3))),
    ("RMSNorm str x", "x", lambda: RMSNorm(4)("x")),
    # modern: feed-forward
    ("SwiGLU emb_dim 0", "emb_dim", lambda: SwiGLU(0, 4)),
    ("SwiGLU float hidden", "hidden_dim", lambda: SwiGLU(4, 4.0)),
    ("SwiGLU unknown activation", "activation", lambda: SwiGLU(4, 8, activation="gelu")),
    ("SwiGLU None activation", "activation", lambda: SwiGLU(4, 8, activation=None)),
    ("SwiGLU int x", "x", lambda: SwiGLU(4, 8)(torch.ones(2, 4, dtype=LONG))),
    ("SwiGLU x width", "x", lambda: SwiGLU(4, 8)(f32(2, 3))),
    # modern: mixture of experts
    ("Router top_k 0", "top_k", lambda: Router(4, 4, 0)),
    ("Router top_k past experts", "top_k", lambda: Router(4, 2, 3)),
    ("Router emb_dim 0", "emb_dim", lambda: Router(0, 4, 2)),
    ("Router unknown scoring", "scoring", lambda: Router(4, 4, 1, scoring="relu")),
    ("Router norm_topk_prob str", "norm_topk_prob", lambda: Router(4, 4, 1, norm_topk_prob="y")),
    ("Router scaling NaN", "routed_scaling_factor",
     lambda: Router(4, 4, 1, routed_scaling_factor=NAN)),
    ("Router scaling inf", "routed_scaling_factor",
     lambda: Router(4, 4, 1, routed_scaling_factor=INF)),
    ("Router scaling 0", "routed_scaling_factor", lambda: Router(4, 4, 1, routed_scaling_factor=0)),
    ("Router n_group not dividing", "n_group", lambda: Router(4, 4, 1, n_group=3)),
    ("Router topk_group past groups", "topk_group",
     lambda: Router(4, 4, 1, n_group=2, topk_group=3)),
    ("Router int x", "x", lambda: Router(4, 4, 2)(torch.ones(3, 4, dtype=LONG))),
    ("Router x width", "x", lambda: Router(4, 4, 2)(f32(3, 5))),
    ("Router 3-D x", "x", lambda: Router(4, 4, 2)(f32(1, 3, 4))),
    ("MoE hidden 0", "hidden_dim", lambda: MoEFeedForward(4, 0, 4, 2)),
    ("MoE shared -1", "n_shared_experts", lambda: MoEFeedForward(4, 8, 4, 2, n_shared_experts=-1)),
    ("MoE expert not callable", "expert", lambda: MoEFeedForward(4, 8, 4, 2, expert=5)),
    ("MoE scaling NaN", "routed_scaling_factor",
     lambda: MoEFeedForward(4, 8, 4, 2, routed_scaling_factor=NAN)),
    ("MoE float experts", "n_experts", lambda: MoEFeedForward(4, 8, 4.0, 2)),
    ("MoE int x", "x", lambda: MoEFeedForward(4, 8, 4, 2)(torch.ones(1, 3, 4, dtype=LONG))),
    ("MoE x width", "x", lambda: MoEFeedForward(4, 8, 4, 2)(f32(1, 3, 5))),
    ("load_balancing empty", "router_logits", lambda: load_balancing_loss([], 4, 2)),
    ("load_balancing a tensor", "router_logits", lambda: load_balancing_loss(f32(3, 4), 4, 2)),
    ("load_balancing width", "router_logits", lambda: load_balancing_loss([f32(3, 5)], 4, 2)),
    ("load_balancing int logits", "router_logits",
     lambda: load_balancing_loss([torch.zeros(3, 4, dtype=LONG)], 4, 2)),
    ("load_balancing 1-D", "router_logits", lambda: load_balancing_loss([f32(4)], 4, 2)),
    ("load_balancing top_k past experts", "top_k", lambda: load_balancing_loss([f32(3, 4)], 4, 5)),
    ("load_balancing experts 0", "n_experts", lambda: load_balancing_loss([f32(3, 4)], 0, 1)),
    # modern: RoPE
    ("Llama3RopeScaling factor NaN", "factor", lambda: Llama3RopeScaling(factor=NAN)),
    ("Llama3RopeScaling factor 0", "factor", lambda: Llama3RopeScaling(factor=0)),
    ("Llama3RopeScaling low inf", "low_freq_factor",
     lambda: Llama3RopeScaling(low_freq_factor=INF)),
    ("Llama3RopeScaling high below low", "high_freq_factor",
     lambda: Llama3RopeScaling(high_freq_factor=0.5)),
    ("Llama3RopeScaling context 0", "original_context_length",
     lambda: Llama3RopeScaling(original_context_length=0)),
    ("Llama3RopeScaling float context", "original_context_length",
     lambda: Llama3RopeScaling(original_context_length=8192.0)),
    ("rope head_dim odd", "head_dim", lambda: rope_inverse_frequencies(3, 1e4)),
    ("rope head_dim bool", "head_dim", lambda: rope_inverse_frequencies(True, 1e4)),
    ("rope theta NaN", "theta", lambda: rope_inverse_frequencies(4, NAN)),
    ("rope theta inf", "theta", lambda: rope_inverse_frequencies(4, INF)),
    ("rope theta 1", "theta", lambda: rope_inverse_frequencies(4, 1.0)),
    ("rope scaling str", "scaling", lambda: rope_inverse_frequencies(4, 1e4, scaling="llama3")),
    ("RotaryEmbedding 2-D positions", "positions", lambda: RotaryEmbedding(4)(torch.zeros(2, 2))),
    ("RotaryEmbedding list positions", "positions", lambda: RotaryEmbedding(4)([0, 1])),
    ("RotaryEmbedding str dtype", "dtype",
     lambda: RotaryEmbedding(4)(torch.arange(2), dtype="float32")),
    ("apply_rope int x", "x", lambda: apply_rope(torch.ones(2, 4, dtype=LONG), f32(2, 4),
                                                 f32(2, 4))),
    ("apply_rope odd head_dim", "x", lambda: apply_rope(f32(2, 3), f32(2, 3), f32(2, 3))),
    ("apply_rope cos shape", "cos", lambda: apply_rope(f32(1, 3, 4), f32(2, 4), f32(3, 4))),
    ("apply_rope int sin", "sin", lambda: apply_rope(f32(3, 4), f32(3, 4),
                                                     torch.zeros(3, 4, dtype=LONG))),
    # modern: components
    ("make_norm unknown norm", "norm", lambda: make_norm(SimpleNamespace(norm="layernorm"), 4)),
    ("make_norm no config", "norm", lambda: make_norm(object(), 4)),
    # modern: tokenizers
    ("read_tiktoken_model None", "path", lambda: mtok.read_tiktoken_model(None)),
    ("read_tiktoken_model not tiktoken", "path",
     lambda: mtok.read_tiktoken_model(_file("t.model", "not a tiktoken file\n"))),
    ("llama3_tokenizer None", "path", lambda: mtok.llama3_tokenizer(None)),
    ("HFTokenizer str tokenizer", "tokenizer", lambda: mtok.HFTokenizer("x", name="a")),
    ("HFTokenizer int name", "name", lambda: mtok.HFTokenizer(_hf_tokenizer()._decoder, name=5)),
    ("HFTokenizer.from_file not JSON", "path",
     lambda: mtok.HFTokenizer.from_file(_file("bad/tokenizer.json", "{oops"))),
    ("HFTokenizer.from_file bad config", "path", _hf_with_bad_config),
    ("load_tokenizer None", "directory", lambda: mtok.load_tokenizer(None)),
    ("load_tokenizer a file", "directory", lambda: mtok.load_tokenizer(_file("f.txt", "x"))),
    ("load_tokenizer empty directory", "directory",
     lambda: mtok.load_tokenizer(_empty_dir("no-tokenizer"))),
    ("HFTokenizer.encode int", "text", lambda: _hf_tokenizer().encode(5)),
    ("HFTokenizer.encode disallowed", "text", lambda: _hf_tokenizer().encode("<|im_end|>")),
    ("HFTokenizer.encode int allowed", "allowed_special",
     lambda: _hf_tokenizer().encode("a", allowed_special=5)),
    ("HFTokenizer.decode negative", "tokens", lambda: _hf_tokenizer().decode([-1])),
    ("HFTokenizer.decode None", "tokens", lambda: _hf_tokenizer().decode(None)),
    ("HFTokenizer.decode bool", "tokens", lambda: _hf_tokenizer().decode([True])),
    ("HFTokenizer.decode strict", "errors", lambda: _hf_tokenizer().decode([1], errors="strict")),
    # finetune: DPO
    ("load_preference_data int", "path", lambda: dpo.load_preference_data(5)),
    ("load_preference_data no chosen", "path", lambda: dpo.load_preference_data(
        _file("pairs.json", json.dumps([{"instruction": "a", "rejected": "c"}])))),
    ("load_preference_data not JSON", "path",
     lambda: dpo.load_preference_data(_file("pairs-bad.json", "{oops"))),
    ("preference_splits str", "data", lambda: dpo.preference_splits("abc")),
    ("preference_splits empty", "data", lambda: dpo.preference_splits([])),
    ("preference_splits no chosen", "data", lambda: dpo.preference_splits([{"instruction": "a"}])),
    ("PreferenceDataset no rejected", "data",
     lambda: dpo.PreferenceDataset([{"instruction": "a", "chosen": "b"}])),
    ("PreferenceDataset str data", "data", lambda: dpo.PreferenceDataset("abc")),
    ("PreferenceDataset int tokenizer", "tokenizer", lambda: dpo.PreferenceDataset([PAIR], 5)),
    ("preference_collate empty", "batch", lambda: dpo.preference_collate([])),
    ("preference_collate str", "batch", lambda: dpo.preference_collate("abc")),
    ("preference_collate list item", "batch", lambda: dpo.preference_collate([[1, 2]])),
    ("preference_collate str id", "batch", lambda: dpo.preference_collate(
        [{"prompt": [1], "chosen": [1, "a"], "rejected": [1]}])),
    ("preference_collate prompt mismatch", "batch", lambda: dpo.preference_collate(
        [{"prompt": [1, 2], "chosen": [1], "rejected": [1, 2, 3]}])),
    ("preference_collate max length 0", "allowed_max_length",
     lambda: dpo.preference_collate([_pair_item()], allowed_max_length=0)),
    ("preference_collate pad -1", "pad_token_id",
     lambda: dpo.preference_collate([_pair_item()], pad_token_id=-1)),
    ("preference_collate float pad", "pad_token_id",
     lambda: dpo.preference_collate([_pair_item()], pad_token_id=1.5)),
    ("preference_collate mask str", "mask_prompt_tokens",
     lambda: dpo.preference_collate([_pair_item()], mask_prompt_tokens="no")),
    ("compute_logprobs int logits", "logits",
     lambda: dpo.compute_logprobs(torch.zeros(1, 3, 5, dtype=LONG), torch.zeros(1, 3, dtype=LONG))),
    ("compute_logprobs 2-D logits", "logits",
     lambda: dpo.compute_logprobs(f32(3, 5), torch.zeros(3, dtype=LONG))),
    ("compute_logprobs float labels", "labels", lambda: dpo.compute_logprobs(f32(1, 3, 5),
                                                                             f32(1, 3))),
    ("compute_logprobs labels shape", "labels",
     lambda: dpo.compute_logprobs(f32(1, 3, 5), torch.zeros(1, 4, dtype=LONG))),
    ("compute_logprobs label past vocab", "labels",
     lambda: dpo.compute_logprobs(f32(1, 3, 5), torch.tensor([[0, 5, 1]]))),
    ("compute_logprobs negative label", "labels",
     lambda: dpo.compute_logprobs(f32(1, 3, 5), torch.tensor([[0, -1, 1]]))),
    ("compute_logprobs float mask", "selection_mask",
     lambda: dpo.compute_logprobs(f32(1, 3, 5), torch.zeros(1, 3, dtype=LONG), f32(1, 3))),
    ("compute_logprobs mask shape", "selection_mask",
     lambda: dpo.compute_logprobs(f32(1, 3, 5), torch.zeros(1, 3, dtype=LONG),
                                  torch.ones(1, 2, dtype=torch.bool))),
    *[(f"compute_dpo_loss beta {beta!r}", "beta",
       (lambda beta=beta: dpo.compute_dpo_loss(f32(2), f32(2), f32(2), f32(2), beta=beta)))
      for beta in (0.0, -0.1, NAN, INF, "0.1", True)],
    ("compute_dpo_loss shape", "reference_rejected_logprobs",
     lambda: dpo.compute_dpo_loss(f32(2), f32(2), f32(2), f32(3))),
    ("compute_dpo_loss int logprobs", "model_chosen_logprobs",
     lambda: dpo.compute_dpo_loss(torch.zeros(2, dtype=LONG), f32(2), f32(2), f32(2))),
    ("compute_dpo_loss list logprobs", "model_rejected_logprobs",
     lambda: dpo.compute_dpo_loss(f32(2), [0.0, 0.0], f32(2), f32(2))),
    ("compute_dpo_loss_batch other vocabulary", "reference_model",
     lambda: dpo.compute_dpo_loss_batch(_pairs_batch(), _gpt(), _gpt(96))),
    ("compute_dpo_loss_batch other family", "reference_model",
     lambda: dpo.compute_dpo_loss_batch(_pairs_batch(), _gpt(), _llama())),
    ("compute_dpo_loss_batch str policy", "policy_model",
     lambda: dpo.compute_dpo_loss_batch(_pairs_batch(), "policy", _gpt())),
    ("compute_dpo_loss_batch empty batch", "batch",
     lambda: dpo.compute_dpo_loss_batch({}, _gpt(), _gpt())),
    ("compute_dpo_loss_batch list batch", "batch",
     lambda: dpo.compute_dpo_loss_batch([1, 2], _gpt(), _gpt())),
    ("compute_dpo_loss_batch float ids", "batch", lambda: dpo.compute_dpo_loss_batch(
        {**_pairs_batch(), "chosen": _pairs_batch()["chosen"].float()}, _gpt(), _gpt())),
    ("compute_dpo_loss_batch beta NaN", "beta",
     lambda: dpo.compute_dpo_loss_batch(_pairs_batch(), _gpt(), _gpt(), beta=NAN)),
    ("compute_dpo_loss_loader empty", "data_loader",
     lambda: dpo.compute_dpo_loss_loader([], _gpt(), _gpt())),
    ("compute_dpo_loss_loader num_batches 0", "num_batches",
     lambda: dpo.compute_dpo_loss_loader([_pairs_batch()], _gpt(), _gpt(), num_batches=0)),
    ("compute_dpo_loss_loader float num_batches", "num_batches",
     lambda: dpo.compute_dpo_loss_loader([_pairs_batch()], _gpt(), _gpt(), num_batches=1.5)),
    ("compute_dpo_loss_loader beta inf", "beta",
     lambda: dpo.compute_dpo_loss_loader([_pairs_batch()], _gpt(), _gpt(), beta=INF)),
    ("compute_dpo_loss_loader other family", "reference_model",
     lambda: dpo.compute_dpo_loss_loader([_pairs_batch()], _gpt(), _llama())),
    ("evaluate_dpo eval_iter 0", "eval_iter", lambda: dpo.evaluate_dpo_loss_loader(
        _gpt(), _gpt(), [_pairs_batch()], [_pairs_batch()], 0.1, 0)),
    ("evaluate_dpo beta NaN", "beta", lambda: dpo.evaluate_dpo_loss_loader(
        _gpt(), _gpt(), [_pairs_batch()], [_pairs_batch()], NAN, 1)),
    *[(f"train_model_dpo_simple {name}={value!r}", name,
       (lambda name=name, value=value: dpo.train_model_dpo_simple(
           _gpt(), copy.deepcopy(_gpt()), [_pairs_batch()], [_pairs_batch()],
           _optimizer(_gpt()), **{name: value})))
      for name, value in (("grad_clip", NAN), ("grad_clip", 0.0), ("grad_clip", -1.0),
                          ("grad_clip", "1"), ("beta", NAN), ("beta", 0), ("eval_iter", 0),
                          ("num_epochs", 0), ("eval_freq", 0), ("seed", -1))],
    ("train_model_dpo_simple reference is policy", "reference_model",
     lambda: dpo.train_model_dpo_simple(_gpt(), _gpt(), [_pairs_batch()], [_pairs_batch()],
                                        _optimizer(_gpt()))),
    ("train_model_dpo_simple other vocabulary", "reference_model",
     lambda: dpo.train_model_dpo_simple(_gpt(), _gpt(96), [_pairs_batch()], [_pairs_batch()],
                                        _optimizer(_gpt()))),
    ("plot_dpo None path", "path", lambda: dpo.plot_dpo([{"step": 1, "loss": 0.7}], None)),
    ("plot_dpo no records", "records", lambda: dpo.plot_dpo([], _dir() / "dpo.png")),
    ("plot_dpo records without loss", "records",
     lambda: dpo.plot_dpo([{"step": 1}], _dir() / "dpo.png")),
    ("plot_dpo a dict", "records", lambda: dpo.plot_dpo({"step": 1}, _dir() / "dpo.png")),
    # finetune: classification
    ("make_classifier a Linear", "model", lambda: clf.make_classifier(nn.Linear(2, 2))),
    ("make_classifier classes 0", "num_classes",
     lambda: clf.make_classifier(copy.deepcopy(_gpt()), 0)),
    ("make_classifier float classes", "num_classes",
     lambda: clf.make_classifier(copy.deepcopy(_gpt()), 2.0)),
    ("make_classifier blocks past the model", "trainable_blocks",
     lambda: clf.make_classifier(copy.deepcopy(_gpt()), 2, trainable_blocks=5)),
    ("make_classifier negative blocks", "trainable_blocks",
     lambda: clf.make_classifier(copy.deepcopy(_gpt()), 2, trainable_blocks=-1)),
    ("make_classifier generator", "generator",
     lambda: clf.make_classifier(copy.deepcopy(_gpt()), 2, generator=5)),
    ("classifier_logits float ids", "input_ids", lambda: clf.classifier_logits(_classifier(),
                                                                               f32(1, 2))),
    ("classifier_logits 1-D ids", "input_ids",
     lambda: clf.classifier_logits(_classifier(), torch.tensor([1, 2]))),
    ("classifier_logits lengths past width", "lengths",
     lambda: clf.classifier_logits(_classifier(), torch.tensor([[1, 2]]), torch.tensor([3]))),
    ("classifier_logits float lengths", "lengths",
     lambda: clf.classifier_logits(_classifier(), torch.tensor([[1, 2]]), torch.tensor([1.0]))),
    ("classifier_logits str model", "model",
     lambda: clf.classifier_logits("model", torch.tensor([[1, 2]]))),
    ("classification_loss float labels", "labels",
     lambda: clf.classification_loss(_classifier(), torch.tensor([[1, 2]]), torch.tensor([1.0]))),
    ("classification_loss label past classes", "labels",
     lambda: clf.classification_loss(_classifier(), torch.tensor([[1, 2]]), torch.tensor([2]))),
    ("classification_loss label count", "labels",
     lambda: clf.classification_loss(_classifier(), torch.tensor([[1, 2]]),
                                     torch.tensor([0, 1]))),
    ("classification_loss 2-D labels", "labels",
     lambda: clf.classification_loss(_classifier(), torch.tensor([[1, 2]]), torch.tensor([[0]]))),
    ("classification_loss_loader num_batches 0", "num_batches",
     lambda: clf.classification_loss_loader([], _classifier(), num_batches=0)),
    ("classification_accuracy bool num_batches", "num_batches",
     lambda: clf.classification_accuracy([], _classifier(), num_batches=True)),
    ("train_classifier_simple eval_iter 0", "eval_iter",
     lambda: clf.train_classifier_simple(_classifier(), [], [], _optimizer(_classifier()),
                                         eval_iter=0)),
    ("train_classifier_simple grad_clip NaN", "grad_clip",
     lambda: clf.train_classifier_simple(_classifier(), [], [], _optimizer(_classifier()),
                                         grad_clip=NAN)),
    ("classify empty text", "text", lambda: clf.classify("", _classifier())),
    ("classify int text", "text", lambda: clf.classify(5, _classifier())),
    ("classify one label", "labels", lambda: clf.classify("hi", _classifier(), labels=("a",))),
    ("classify str labels", "labels", lambda: clf.classify("hi", _classifier(), labels="ab")),
    ("classify max_length 0", "max_length", lambda: clf.classify("hi", _classifier(),
                                                                 max_length=0)),
    ("classify int tokenizer", "tokenizer", lambda: clf.classify("hi", _classifier(), 5)),
    ("save_classifier None directory", "directory", lambda: clf.save_classifier(_classifier(),
                                                                                None)),
    ("save_classifier a Linear", "model", lambda: clf.save_classifier(nn.Linear(2, 2),
                                                                      _dir() / "c")),
    ("save_classifier one label", "labels",
     lambda: clf.save_classifier(_classifier(), _dir() / "c", labels=("a",))),
    ("save_classifier max_length 0", "max_length",
     lambda: clf.save_classifier(_classifier(), _dir() / "c", max_length=0)),
    ("load_classifier None", "directory", lambda: clf.load_classifier(None)),
    ("load_classifier broken json", "directory", lambda: clf.load_classifier(
        (_file("broken/classifier.json", "{oops"), _file("broken/model.safetensors", b""))[0]
        .parent)),
    # finetune: instructions
    ("load_instruction_data int", "path", lambda: instructions.load_instruction_data(5)),
    ("load_instruction_data not JSON", "path",
     lambda: instructions.load_instruction_data(_file("i-bad.json", "{oops"))),
    ("load_instruction_data a dict", "path",
     lambda: instructions.load_instruction_data(_file("i-dict.json", "{}"))),
    ("load_instruction_data empty", "path",
     lambda: instructions.load_instruction_data(_file("i-empty.json", "[]"))),
    ("load_instruction_data no output", "path", lambda: instructions.load_instruction_data(
        _file("i-nooutput.json", json.dumps([{"instruction": "a"}])))),
    ("format_input int instruction", "entry",
     lambda: instructions.format_input({"instruction": 5, "output": ""})),
    ("format_input str", "entry", lambda: instructions.format_input("x")),
    ("format_input empty", "entry", lambda: instructions.format_input({})),
    ("format_response no output", "entry",
     lambda: instructions.format_response({"instruction": "a"})),
    ("instruction_splits empty", "data", lambda: instructions.instruction_splits([])),
    ("instruction_splits str", "data", lambda: instructions.instruction_splits("x")),
    ("instruction_splits no output", "data",
     lambda: instructions.instruction_splits([{"instruction": "a"}])),
    ("instruction_splits seed -1", "seed", lambda: instructions.instruction_splits([RECORD], -1)),
    ("InstructionDataset bad record", "data", lambda: instructions.InstructionDataset([{"x": 1}])),
    ("InstructionDataset int tokenizer", "tokenizer",
     lambda: instructions.InstructionDataset([RECORD], 5)),
    ("instruction_collate empty", "batch", lambda: instructions.instruction_collate([])),
    ("instruction_collate str", "batch", lambda: instructions.instruction_collate("abc")),
    ("instruction_collate empty item", "batch", lambda: instructions.instruction_collate([[]])),
    ("instruction_collate str id", "batch", lambda: instructions.instruction_collate([["a"]])),
    ("instruction_collate lists with mask_prompt", "batch",
     lambda: instructions.instruction_collate([[1, 2]], mask_prompt=True)),
    ("instruction_collate prompt past ids", "prompt_length",
     lambda: instructions.instruction_collate([instructions.InstructionExample([1, 2], 5)])),
    ("instruction_collate pad -1", "pad_token_id",
     lambda: instructions.instruction_collate([[1, 2]], pad_token_id=-1)),
    ("instruction_collate float ignore", "ignore_index",
     lambda: instructions.instruction_collate([[1, 2]], ignore_index=1.5)),
    ("instruction_collate mask_prompt 1", "mask_prompt",
     lambda: instructions.instruction_collate([[1, 2]], mask_prompt=1)),
    ("instruction_collate max length 0", "allowed_max_length",
     lambda: instructions.instruction_collate([[1, 2]], allowed_max_length=0)),
    ("instruction_loss float inputs", "inputs",
     lambda: instructions.instruction_loss(_gpt(), f32(1, 2), torch.zeros(1, 2, dtype=LONG))),
    ("instruction_loss targets shape", "targets",
     lambda: instructions.instruction_loss(_gpt(), torch.zeros(1, 2, dtype=LONG),
                                           torch.zeros(1, 3, dtype=LONG))),
    ("instruction_loss str model", "model",
     lambda: instructions.instruction_loss("m", torch.zeros(1, 2, dtype=LONG),
                                           torch.zeros(1, 2, dtype=LONG))),
    ("instruction_loss str ignore", "ignore_index",
     lambda: instructions.instruction_loss(_gpt(), torch.zeros(1, 2, dtype=LONG),
                                           torch.zeros(1, 2, dtype=LONG), "x")),
    ("extract_response None", "generated_text", lambda: instructions.extract_response(None)),
    ("extract_response int prompt", "prompt", lambda: instructions.extract_response("a", 5)),
    ("train_instructions eval_iter 0", "eval_iter",
     lambda: instructions.train_instructions(_gpt(), [], [], _optimizer(_gpt()), eval_iter=0)),
    ("train_instructions grad_clip NaN", "grad_clip",
     lambda: instructions.train_instructions(_gpt(), [], [], _optimizer(_gpt()), grad_clip=NAN)),
    ("generate_responses bad record", "data",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD, {"x": 1}])),
    ("generate_responses max_new_tokens 0", "max_new_tokens",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD], max_new_tokens=0)),
    ("generate_responses temperature -1", "temperature",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD], temperature=-1.0)),
    ("generate_responses temperature NaN", "temperature",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD], temperature=NAN)),
    ("generate_responses generator", "generator",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD], generator=5)),
    ("generate_responses progress", "progress",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD], progress=5)),
    ("generate_responses str model", "model",
     lambda: instructions.generate_responses("model", [RECORD])),
    ("generate_responses int tokenizer", "tokenizer",
     lambda: instructions.generate_responses(_gpt2_vocab_model(), [RECORD], 5)),
    ("write_responses None path", "path", lambda: instructions.write_responses(None, [])),
    ("write_responses str records", "records",
     lambda: instructions.write_responses(_dir() / "r.json", "abc")),
    ("write_responses int record", "records",
     lambda: instructions.write_responses(_dir() / "r.json", [5])),
    # finetune: LoRA
    ("LoRALayer rank 0", "rank", lambda: lora.LoRALayer(4, 4, 0, 1.0)),
    ("LoRALayer float rank", "rank", lambda: lora.LoRALayer(4, 4, 2.0, 1.0)),
    ("LoRALayer alpha NaN", "alpha", lambda: lora.LoRALayer(4, 4, 2, NAN)),
    ("LoRALayer alpha inf", "alpha", lambda: lora.LoRALayer(4, 4, 2, INF)),
    ("LoRALayer str alpha", "alpha", lambda: lora.LoRALayer(4, 4, 2, "1")),
    ("LoRALayer in_dim 0", "in_dim", lambda: lora.LoRALayer(0, 4, 2, 1.0)),
    ("LoRALayer bool out_dim", "out_dim", lambda: lora.LoRALayer(4, True, 2, 1.0)),
    ("LoRALayer generator", "generator", lambda: lora.LoRALayer(4, 4, 2, 1.0, generator=5)),
    ("LoRALayer int x", "x", lambda: lora.LoRALayer(4, 4, 2, 1.0)(torch.ones(2, 4, dtype=LONG))),
    ("LoRALayer x width", "x", lambda: lora.LoRALayer(4, 4, 2, 1.0)(f32(2, 3))),
    ("LinearWithLoRA str linear", "linear", lambda: lora.LinearWithLoRA("x", 2, 1.0)),
    ("LinearWithLoRA alpha NaN", "alpha", lambda: lora.LinearWithLoRA(nn.Linear(2, 2), 2, NAN)),
    ("replace_linear None", "model", lambda: lora.replace_linear_with_lora(None, 2, 1.0)),
    ("replace_linear a Linear", "model",
     lambda: lora.replace_linear_with_lora(nn.Linear(2, 2), 2, 1.0)),
    ("replace_linear freeze_base 1", "freeze_base",
     lambda: lora.replace_linear_with_lora(_mlp(), 2, 1.0, freeze_base=1)),
    ("replace_linear rank 0", "rank", lambda: lora.replace_linear_with_lora(_mlp(), 0, 1.0)),
    ("replace_linear alpha NaN", "alpha", lambda: lora.replace_linear_with_lora(_mlp(), 2, NAN)),
    ("merge_lora None", "model", lambda: lora.merge_lora(None)),
    ("lora_state_dict no adapters", "model", lambda: lora.lora_state_dict(_mlp())),
    ("lora_state_dict None", "model", lambda: lora.lora_state_dict(None)),
    ("save_lora None path", "path",
     lambda: lora.save_lora(lora.replace_linear_with_lora(_mlp(), 2, 1.0), None)),
    ("load_lora None path", "path", lambda: lora.load_lora(_mlp(), None)),
    ("load_lora None model", "model", lambda: lora.load_lora(None, _lora_file())),
    ("load_lora other shapes", "path", lambda: lora.load_lora(
        nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3)), _lora_file())),
    ("count_trainable_parameters None", "model", lambda: lora.count_trainable_parameters(None)),
    # finetune: spam data
    ("load_sms_spam int", "path", lambda: spam_data.load_sms_spam(5)),
    ("load_sms_spam no TAB", "path", lambda: spam_data.load_sms_spam(_file("s1.tsv", "ham hi\n"))),
    ("load_sms_spam unknown label", "path",
     lambda: spam_data.load_sms_spam(_file("s2.tsv", "eggs\thi\n"))),
    ("load_sms_spam str labels", "labels", lambda: spam_data.load_sms_spam(labels="ham")),
    ("load_sms_spam int labels", "labels", lambda: spam_data.load_sms_spam(labels=[1, 2])),
    ("balance_classes empty", "records", lambda: spam_data.balance_classes([])),
    ("balance_classes str", "records", lambda: spam_data.balance_classes("abc")),
    ("balance_classes plain tuples", "records", lambda: spam_data.balance_classes([("a", 0)])),
    ("balance_classes seed -1", "seed",
     lambda: spam_data.balance_classes([spam_data.LabeledText("a", 0)], seed=-1)),
    ("balance_classes float seed", "seed",
     lambda: spam_data.balance_classes([spam_data.LabeledText("a", 0)], seed=1.5)),
    ("split_records two fractions", "fractions",
     lambda: spam_data.split_records([1, 2, 3], fractions=(0.5, 0.5))),
    ("split_records NaN fraction", "fractions",
     lambda: spam_data.split_records([1, 2, 3], fractions=(0.5, 0.5, NAN))),
    ("split_records sum past 1", "fractions",
     lambda: spam_data.split_records([1, 2, 3], fractions=(0.7, 0.2, 0.2))),
    ("split_records str fractions", "fractions",
     lambda: spam_data.split_records([1, 2, 3], fractions="abc")),
    ("split_records int records", "records", lambda: spam_data.split_records(5)),
    ("split_records bool seed", "seed", lambda: spam_data.split_records([1, 2, 3], seed=True)),
    ("spam_splits seed -1", "seed", lambda: spam_data.spam_splits(seed=-1)),
    ("spam_splits balance str", "balance", lambda: spam_data.spam_splits(balance="yes")),
    ("SpamDataset empty", "records", lambda: spam_data.SpamDataset([])),
    ("SpamDataset label past classes", "records", lambda: spam_data.SpamDataset([("hi", 2)])),
    ("SpamDataset float label", "records", lambda: spam_data.SpamDataset([("hi", 1.0)])),
    ("SpamDataset empty text", "records", lambda: spam_data.SpamDataset([("", 0)])),
    ("SpamDataset int text", "records", lambda: spam_data.SpamDataset([(5, 0)])),
    ("SpamDataset one-field record", "records", lambda: spam_data.SpamDataset([("hi",)])),
    ("SpamDataset max_length 0", "max_length",
     lambda: spam_data.SpamDataset([("hi", 0)], max_length=0)),
    ("SpamDataset pad past vocab", "pad_token_id",
     lambda: spam_data.SpamDataset([("hi", 0)], pad_token_id=50257)),
    ("SpamDataset classes 0", "num_classes", lambda: spam_data.SpamDataset([("hi", 0)],
                                                                           num_classes=0)),
    ("SpamDataset int tokenizer", "tokenizer", lambda: spam_data.SpamDataset([("hi", 0)], 5)),
    # inspect
    ("ModelTrace int logits", "logits",
     lambda: ModelTrace([f32(1, 3, 4)], [], torch.zeros(1, 3, 10, dtype=LONG))),
    ("ModelTrace 2-D logits", "logits", lambda: ModelTrace([f32(1, 3, 4)], [], f32(3, 10))),
    ("ModelTrace tensor residuals", "residuals",
     lambda: ModelTrace(f32(1, 3, 4), [], f32(1, 3, 9))),
    ("ModelTrace int residual", "residuals",
     lambda: ModelTrace([torch.zeros(1, 3, 4, dtype=LONG)], [], f32(1, 3, 9))),
    ("ModelTrace residual count", "residuals", lambda: ModelTrace([f32(1, 3, 4)],
                                                                  [f32(1, 2, 3, 3)],
                                                                  f32(1, 3, 9))),
    ("ModelTrace attention shape", "attentions",
     lambda: ModelTrace([f32(1, 3, 4)] * 2, [f32(1, 2, 3, 2)], f32(1, 3, 9))),
    ("inspect_prompt empty text", "text",
     lambda: inspect_prompt(_gpt2_vocab_model(), gpt2_tokenizer(), "")),
    ("inspect_prompt past the context", "text",
     lambda: inspect_prompt(_gpt2_vocab_model(), gpt2_tokenizer(), "a" + " a" * 16)),
    ("inspect_prompt bytes text", "text",
     lambda: inspect_prompt(_gpt2_vocab_model(), gpt2_tokenizer(), b"a")),
    *[(f"inspect_prompt top_k {top_k!r}", "top_k",
       (lambda top_k=top_k: inspect_prompt(_gpt2_vocab_model(), gpt2_tokenizer(), "a",
                                           top_k=top_k)))
      for top_k in (0, -1, True, "5", 1.5, None)],
    ("inspect_prompt model without trace", "model",
     lambda: inspect_prompt(nn.Linear(2, 2), gpt2_tokenizer(), "a")),
    ("inspect_prompt None model", "model", lambda: inspect_prompt(None, gpt2_tokenizer(), "a")),
    ("inspect_prompt None tokenizer", "tokenizer",
     lambda: inspect_prompt(_gpt2_vocab_model(), None, "a")),
    ("logit_lens int residual", "residuals",
     lambda: logit_lens(_gpt(), [torch.zeros(1, 2, 8, dtype=LONG)])),
    ("logit_lens a tensor", "residuals", lambda: logit_lens(_gpt(), f32(1, 2, 8))),
    ("logit_lens 2-D residual", "residuals", lambda: logit_lens(_gpt(), [f32(2, 8)])),
    ("logit_lens a Linear", "model", lambda: logit_lens(nn.Linear(2, 2), [])),
    ("token_pieces str ids", "ids", lambda: token_pieces(gpt2_tokenizer(), "abc")),
    ("token_pieces float id", "ids", lambda: token_pieces(gpt2_tokenizer(), [1.5])),
    ("token_pieces None tokenizer", "tokenizer", lambda: token_pieces(None, [1])),
    ("report_data None", "inspection", lambda: report_data(None)),
    ("render_html int title", "title", lambda: render_html(_inspection(), title=5)),
    ("write_report None path", "path", lambda: write_report(_inspection(), None)),
    ("write_report None inspection", "inspection", lambda: write_report(None, _dir() / "r.html")),
    ("write_pngs None directory", "directory", lambda: write_pngs(_inspection(), None)),
    ("write_pngs None inspection", "inspection", lambda: write_pngs(None, _dir() / "pngs")),
]

# Chat formats: the same conversations refused by every format (a late system message by those
# without a system turn; Llama 3's and Qwen3's write it as their templates do, test_modern_chat).
for _name, _format in CHATS.items():
    CASES += [
        (f"{_name} empty conversation", "messages", lambda f=_format: f().render([])),
        (f"{_name} a str", "messages", lambda f=_format: f().render("hello")),
        (f"{_name} a non-dict message", "messages", lambda f=_format: f().render([5])),
        (f"{_name} unknown role", "messages",
         lambda f=_format: f().render([{"role": "tool", "content": "x"}])),
        (f"{_name} no role", "messages", lambda f=_format: f().render([{"content": "x"}])),
        (f"{_name} None content", "messages",
         lambda f=_format: f().render([{"role": "user", "content": None}])),
        *([] if _format.late_system else [  # Gemma 3 has no system turn to write one in
            (f"{_name} system after user", "messages",
             lambda f=_format: f().render(_messages("user", "system"))),
            (f"{_name} system after an exchange", "messages",
             lambda f=_format: f().render(_messages("system", "user", "assistant", "system",
                                                    "user"))),
            (f"{_name} two system messages", "messages",
             lambda f=_format: f().render(_messages("system", "system", "user")))]),
        (f"{_name} int reasoning", "messages", lambda f=_format: f().render(
            [*_messages("user"), {"role": "assistant", "content": "a", "reasoning_content": 5}])),
        (f"{_name} add_generation_prompt str", "add_generation_prompt",
         lambda f=_format: f().render(_messages("user"), add_generation_prompt="yes")),
        (f"{_name} encode without its tokens", "tokenizer",
         lambda f=_format: f().encode(gpt2_tokenizer(), _messages("user"))),
        (f"{_name} encode None tokenizer", "tokenizer",
         lambda f=_format: f().encode(None, _messages("user"))),
        (f"{_name} stop_ids None tokenizer", "tokenizer", lambda f=_format: f().stop_ids(None)),
    ]
CASES += [
    ("qwen3 enable_thinking 1", "enable_thinking", lambda: Qwen3ChatFormat(enable_thinking=1)),
    ("gemma3 assistant first", "messages",
     lambda: Gemma3ChatFormat().render(_messages("assistant", "user"))),
]


@pytest.mark.parametrize("parameter, call", [pytest.param(p, c, id=i) for i, p, c in CASES])
def test_a_bad_argument_is_refused_by_name_before_any_work(parameter, call):
    with pytest.raises((ValueError, TypeError)) as caught:
        call()
    error = caught.value
    assert getattr(error, "parameter", None) == parameter, (type(error).__name__, str(error))
    assert parameter in str(error) or parameter.split(".")[-1] in str(error)


def test_the_sweep_names_every_case_once():
    names = [name for name, _, _ in CASES]
    assert len(names) == len(set(names))


def test_refusing_a_bad_dpo_run_leaves_both_models_untouched():
    policy, reference = copy.deepcopy(_gpt()), copy.deepcopy(_gpt())
    reference.train()
    before = [p.clone() for p in policy.parameters()]
    with pytest.raises(ValueError, match="^grad_clip"):
        dpo.train_model_dpo_simple(policy, reference, [_pairs_batch()], [_pairs_batch()],
                                   _optimizer(policy), grad_clip=NAN)
    assert reference.training  # not yet put in eval mode: nothing was done
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))


def test_a_refused_generation_writes_no_response():
    done = []
    with pytest.raises(ValueError, match=r"data\[1\] has no 'instruction' field"):
        instructions.generate_responses(_gpt2_vocab_model(), [RECORD, {"output": "x"}],
                                        max_new_tokens=1, progress=lambda i, r: done.append(i))
    assert done == []  # the first record was not generated before the second was checked


def test_adapters_that_do_not_fit_leave_the_model_without_adapters():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="^path: ") as caught:
        lora.load_lora(model, _lora_file())
    assert caught.value.parameter == "path"
    assert not any(isinstance(m, lora.LinearWithLoRA) for m in model.modules())
