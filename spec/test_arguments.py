"""Bad arguments, swept: every public function and command-line flag refuses them by name.

One table of (call, exception type, words the message must hold). Each row is a mistake a user
makes (a bool for an int, a float for a count, NaN, a negative or zero size, a size too large, a
tensor of the wrong dtype, device or shape); the refusal must be a ``ValueError`` or ``TypeError``
that names the parameter (or, on the command line, the flag) and what is allowed, raised before
torch raises something of its own from deep inside. Cheap by design: no Hypothesis, tiny models.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gpt_components as g
from gpt_components.cli import main

pytestmark = pytest.mark.machinery

NAN, INF = math.nan, math.inf
ANY = (TypeError, ValueError)  # a wrong type some checks report as a ValueError, by design
CFG = g.GPTConfig(vocab_size=50, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                  drop_rate=0.0)
_cache: dict = {}


def model():
    if "model" not in _cache:
        torch.manual_seed(0)
        _cache["model"] = g.GPTModel(CFG).eval()
    return _cache["model"]


def tok():
    if "tok" not in _cache:
        _cache["tok"] = g.gpt2_tokenizer()
    return _cache["tok"]


IDX = torch.tensor([[1, 2, 3]])
X = torch.rand(1, 3, 4)
TOKENS = np.arange(40, dtype=np.uint16)
CALLS: list = []


def bad(label: str, call, error: type, *words: str) -> None:
    CALLS.append(pytest.param(call, error, words, id=label))


def _mha(**kw):
    args = {"d_in": 4, "d_out": 4, "context_length": 4, "dropout": 0.0, "num_heads": 2}
    return g.MultiHeadAttention(**{**args, **kw})


def _train_config(**kw):
    return g.TrainConfig(**kw).validate()


# -- tokenizers and data (chapter 2) --------------------------------------------------------
bad("SimpleTokenizerV1(vocab=list)", lambda: g.SimpleTokenizerV1(["a"]), TypeError, "vocab")
bad("SimpleTokenizerV2 no unk", lambda: g.SimpleTokenizerV2({"a": 0, "<|endoftext|>": 1}),
    ValueError, "vocab", "<|unk|>")
bad("build_vocab(text=bytes)", lambda: g.build_vocab(b"a b"), TypeError, "text")
bad("GPTDatasetV1(stride=True)", lambda: g.GPTDatasetV1("a b c d e f", tok(), 2, True),
    TypeError, "stride")
bad("GPTDatasetV1(max_length=0)", lambda: g.GPTDatasetV1("a b c d e f", tok(), 0, 1),
    ValueError, "max_length")
bad("GPTDatasetV1(max_length=2.0)", lambda: g.GPTDatasetV1("a b c d e f", tok(), 2.0, 1),
    TypeError, "max_length")
bad("create_dataloader_v1(batch_size=0)", lambda: g.create_dataloader_v1("a b c", batch_size=0),
    ValueError, "batch_size")
bad("create_dataloader_v1(shuffle=1)", lambda: g.create_dataloader_v1("a b c", shuffle=1),
    TypeError, "shuffle")
bad("create_dataloader_v1(num_workers=-1)",
    lambda: g.create_dataloader_v1("a b c", num_workers=-1), ValueError, "num_workers")
bad("GPTEmbedding(emb_dim=0)", lambda: g.GPTEmbedding(50, 0, 4), ValueError, "emb_dim")
bad("GPTEmbedding(drop_rate=nan)", lambda: g.GPTEmbedding(50, 8, 4, NAN), ValueError,
    "drop_rate")
bad("GPTEmbedding(vocab_size=True)", lambda: g.GPTEmbedding(True, 8, 4), TypeError, "vocab_size")
bad("GPTEmbedding forward float ids", lambda: g.GPTEmbedding(50, 8, 4)(torch.ones(1, 2)),
    TypeError, "dtype")
bad("GPTEmbedding forward id >= vocab",
    lambda: g.GPTEmbedding(50, 8, 4)(torch.tensor([[50]])), ValueError, "vocab_size")
bad("TokenWindows(stride=True)", lambda: g.TokenWindows(TOKENS, 4, True), TypeError, "stride")
bad("TokenWindows(stride=0)", lambda: g.TokenWindows(TOKENS, 4, 0), ValueError, "stride")
bad("TokenWindows(stride=2.5)", lambda: g.TokenWindows(TOKENS, 4, 2.5), TypeError, "stride")
bad("TokenWindows(context_length=0)", lambda: g.TokenWindows(TOKENS, 0), ValueError,
    "context_length")
bad("TokenWindows(context_length=True)", lambda: g.TokenWindows(TOKENS, True), TypeError,
    "context_length")
bad("TokenCorpus.split(nan)",
    lambda: g.TokenCorpus.from_text("a b c d e f g", tok()).split(NAN), ValueError,
    "val_fraction")
bad("TokenCorpus.split(1.0)",
    lambda: g.TokenCorpus.from_text("a b c d e f g", tok()).split(1.0), ValueError,
    "val_fraction")
bad("prepare_corpus missing file",
    lambda: g.prepare_corpus("/no/such/corpus.txt", tok(), "/tmp/cache"), FileNotFoundError,
    "does not exist")

# -- attention (chapter 3) ------------------------------------------------------------------
bad("MultiHeadAttention(num_heads=3)", lambda: _mha(num_heads=3), ValueError, "num_heads",
    "d_out")
bad("MultiHeadAttention(num_heads=0)", lambda: _mha(num_heads=0), ValueError, "num_heads")
bad("MultiHeadAttention(dropout=1.0)", lambda: _mha(dropout=1.0), ValueError, "dropout")
bad("MultiHeadAttention(qkv_bias='no')", lambda: _mha(qkv_bias="no"), TypeError, "qkv_bias")
bad("MultiHeadAttention(qkv_bias=1)", lambda: _mha(qkv_bias=1), TypeError, "qkv_bias")
bad("MultiHeadAttention(d_in=4.0)", lambda: _mha(d_in=4.0), TypeError, "d_in")
bad("MultiHeadAttention float64 input", lambda: _mha()(X.double()), TypeError, "dtype",
    "float64", "float32")
bad("MultiHeadAttention int input", lambda: _mha()(torch.ones(1, 3, 4, dtype=torch.long)),
    TypeError, "floating")
bad("MultiHeadAttention meta input", lambda: _mha()(X.to("meta")), ValueError, "device", "meta")
bad("MultiHeadAttention too many tokens", lambda: _mha()(torch.rand(1, 5, 4)), ValueError,
    "context_length")
bad("MultiHeadAttention 2-D input", lambda: _mha()(torch.rand(3, 4)), ValueError, "shape")
bad("CausalAttention float64 input",
    lambda: g.CausalAttention(4, 4, 4, 0.0)(X.double()), TypeError, "float64")
bad("CausalAttention(qkv_bias='no')", lambda: g.CausalAttention(4, 4, 4, 0.0, qkv_bias="no"),
    TypeError, "qkv_bias")
bad("SelfAttentionV2(qkv_bias=2)", lambda: g.SelfAttentionV2(4, 4, qkv_bias=2), TypeError,
    "qkv_bias")
bad("SelfAttentionV1 float64 input", lambda: g.SelfAttentionV1(4, 4)(X.double()), TypeError,
    "float64")
bad("SelfAttentionV2 float64 input", lambda: g.SelfAttentionV2(4, 4)(X.double()), TypeError,
    "float64")
bad("MultiHeadAttentionWrapper float64 input",
    lambda: g.MultiHeadAttentionWrapper(4, 4, 4, 0.0, 2)(X.double()), TypeError, "float64")
bad("CausalSelfAttention(kernel='fast')",
    lambda: g.CausalSelfAttention(4, 4, 4, 0.0, 2, kernel="fast"), ValueError, "kernel")
bad("CausalSelfAttention float64 input",
    lambda: g.CausalSelfAttention(4, 4, 4, 0.0, 2)(X.double()), TypeError, "float64")
bad("simple_self_attention(list)", lambda: g.simple_self_attention([[1.0]]), TypeError, "x")

# -- the model (chapter 4) ------------------------------------------------------------------
bad("GPTConfig(qkv_bias='no')", lambda: g.GPTConfig(qkv_bias="no"), TypeError, "qkv_bias")
bad("GPTConfig(tie_weights=1)", lambda: g.GPTConfig(tie_weights=1), TypeError, "tie_weights")
bad("GPTConfig(emb_dim=7, n_heads=2)", lambda: g.GPTConfig(emb_dim=7, n_heads=2), ValueError,
    "emb_dim", "n_heads")
bad("GPTConfig(drop_rate=nan)", lambda: g.GPTConfig(drop_rate=NAN), ValueError, "drop_rate")
bad("GPTConfig(drop_rate=True)", lambda: g.GPTConfig(drop_rate=True), ANY, "drop_rate")
bad("GPTConfig(n_layers=0)", lambda: g.GPTConfig(n_layers=0), ValueError, "n_layers")
bad("GPTConfig(vocab_size=50.0)", lambda: g.GPTConfig(vocab_size=50.0), ANY,
    "vocab_size")
bad("GPTConfig(context_length=0)", lambda: g.GPTConfig(context_length=0), ValueError,
    "context_length")
bad("GPTConfig(attn_kernel='flash')", lambda: g.GPTConfig(attn_kernel="flash"), ValueError,
    "attn_kernel")
bad("GPTConfig.from_name('gpt-huge')", lambda: g.GPTConfig.from_name("gpt-huge"), ValueError,
    "gpt-huge", "gpt-nano")
bad("GPTConfig.from_name(emb_dim missing key)", lambda: g.GPTModel({"emb_dimm": 8}), TypeError,
    "emb_dimm")
bad("LayerNorm(eps=0)", lambda: g.LayerNorm(4, eps=0.0), ValueError, "eps")
bad("LayerNorm(eps=nan)", lambda: g.LayerNorm(4, eps=NAN), ValueError, "eps")
bad("LayerNorm(emb_dim=0)", lambda: g.LayerNorm(0), ValueError, "emb_dim")
bad("LayerNorm wrong width", lambda: g.LayerNorm(4)(torch.rand(2, 5)), ValueError, "emb_dim")
bad("FeedForward(cfg without emb_dim)", lambda: g.FeedForward({"vocab_size": 3}), TypeError,
    "emb_dim")
bad("TransformerBlock(cfg without emb_dim)", lambda: g.TransformerBlock({"n_heads": 2}),
    TypeError, "emb_dim")
bad("GPTModel float ids", lambda: model()(torch.ones(1, 3)), TypeError, "idx", "dtype")
bad("GPTModel id >= vocab", lambda: model()(torch.tensor([[50]])), ValueError, "vocab_size")
bad("GPTModel negative id", lambda: model()(torch.tensor([[-1]])), ValueError, "idx")
bad("GPTModel too many tokens", lambda: model()(torch.zeros(1, 9, dtype=torch.long)),
    ValueError, "context_length")
bad("GPTModel 1-D ids", lambda: model()(torch.tensor([1, 2])), ValueError, "idx", "2-D")
bad("GPTModel meta ids", lambda: model()(IDX.to("meta")), ValueError, "device", "meta")
bad("memory_footprint_mb(dtype='float16')",
    lambda: g.memory_footprint_mb(model(), dtype="float16"), TypeError, "dtype")
bad("count_parameters(list)", lambda: g.count_parameters([1]), TypeError, "model")
bad("KVCache(n_layers=0)", lambda: g.KVCache(0, 1, 2, 4, 8), ValueError, "n_layers")
bad("KVCache(max_tokens=True)", lambda: g.KVCache(1, 1, 2, 4, True), ANY, "max_tokens")

# -- generation (chapter 5) -----------------------------------------------------------------
bad("generate(top_k=vocab+1)", lambda: g.generate(model(), IDX, 2, temperature=1.0, top_k=51),
    ValueError, "top_k", "vocab_size=50")
bad("generate(top_k=0)", lambda: g.generate(model(), IDX, 2, top_k=0), ValueError, "top_k")
bad("generate(top_k=2.0)", lambda: g.generate(model(), IDX, 2, top_k=2.0), TypeError, "top_k")
bad("generate(top_k=True)", lambda: g.generate(model(), IDX, 2, top_k=True), TypeError, "top_k")
bad("generate(top_p=0)", lambda: g.generate(model(), IDX, 2, top_p=0.0), ValueError, "top_p")
bad("generate(top_p=nan)", lambda: g.generate(model(), IDX, 2, top_p=NAN), ValueError, "top_p")
bad("generate(temperature=-1)", lambda: g.generate(model(), IDX, 2, temperature=-1.0),
    ValueError, "temperature")
bad("generate(temperature=inf)", lambda: g.generate(model(), IDX, 2, temperature=INF),
    ValueError, "temperature")
bad("generate(temperature='hot')", lambda: g.generate(model(), IDX, 2, temperature="hot"),
    TypeError, "temperature")
bad("generate(max_new_tokens=-1)", lambda: g.generate(model(), IDX, -1), ValueError,
    "max_new_tokens")
bad("generate(max_new_tokens=2.0)", lambda: g.generate(model(), IDX, 2.0), TypeError,
    "max_new_tokens")
bad("generate(context_size=0)", lambda: g.generate(model(), IDX, 2, context_size=0),
    ValueError, "context_size")
bad("generate(context_size=9)", lambda: g.generate(model(), IDX, 2, context_size=9),
    ValueError, "context_size")
bad("generate(eos_id=50)", lambda: g.generate(model(), IDX, 2, eos_id=50), ValueError,
    "eos_id")
bad("generate(eos_id=True)", lambda: g.generate(model(), IDX, 2, eos_id=True), TypeError,
    "eos_id")
bad("generate(use_cache=1)", lambda: g.generate(model(), IDX, 2, use_cache=1), TypeError,
    "use_cache")
bad("generate(generator=0)", lambda: g.generate(model(), IDX, 2, generator=0), TypeError,
    "generator")
bad("generate float idx", lambda: g.generate(model(), IDX.float(), 2), TypeError, "idx")
bad("generate(model=Linear)", lambda: g.generate(torch.nn.Linear(2, 2), IDX, 2), TypeError,
    "model")
bad("generate_text_simple(context_size=0)", lambda: g.generate_text_simple(model(), IDX, 2, 0),
    ValueError, "context_size")
bad("generate_text_simple(max_new_tokens=-1)",
    lambda: g.generate_text_simple(model(), IDX, -1, 4), ValueError, "max_new_tokens")
bad("sample_next_token NaN logits",
    lambda: g.sample_next_token(torch.tensor([[NAN, 1.0]]), temperature=1.0), ValueError,
    "logits", "NaN")
bad("sample_next_token NaN logits greedy",
    lambda: g.sample_next_token(torch.tensor([[NAN, 1.0]])), ValueError, "logits", "NaN")
bad("sample_next_token +inf logits",
    lambda: g.sample_next_token(torch.tensor([[INF, 1.0]]), temperature=1.0), ValueError,
    "logits")
bad("sample_next_token int logits", lambda: g.sample_next_token(torch.tensor([[1, 2]])),
    TypeError, "logits")
bad("sample_next_token 1-D logits", lambda: g.sample_next_token(torch.tensor([1.0, 2.0])),
    ValueError, "logits")
bad("sample_next_token meta logits",
    lambda: g.sample_next_token(torch.zeros(1, 3, device="meta"), temperature=1.0), ValueError,
    "device", "meta")
bad("sample_next_token(top_k=vocab+1)",
    lambda: g.sample_next_token(torch.zeros(1, 3), temperature=1.0, top_k=4), ValueError,
    "top_k")
bad("text_to_token_ids(text=bytes)", lambda: g.text_to_token_ids(b"hi"), TypeError, "text")
bad("token_ids_to_text(float tensor)", lambda: g.token_ids_to_text(torch.tensor([[1.5]])),
    TypeError, "token_ids")

# -- weights, checkpoints, training (chapter 5, appendix D) ---------------------------------
bad("hf_name(3)", lambda: g.hf_name(3), TypeError, "book_name")
bad("load_pretrained(3)", lambda: g.load_pretrained(3), TypeError, "name_or_path")
bad("load_pretrained missing", lambda: g.load_pretrained("/no/such/dir"), FileNotFoundError,
    "does not exist")
bad("download_command('gpt3')", lambda: g.download_command("gpt3"), ValueError, "name")
bad("read_safetensors missing", lambda: g.read_safetensors("/no/such.safetensors"),
    FileNotFoundError, "does not exist")
bad("save_checkpoint(step=True)",
    lambda: g.save_checkpoint("/tmp/never", model=model(), state={}, meta={"step": True}),
    ValueError, "step")
bad("save_checkpoint(step=1.0)",
    lambda: g.save_checkpoint("/tmp/never", model=model(), state={}, meta={"step": 1.0}),
    ValueError, "step")
bad("save_checkpoint(keep=True)",
    lambda: g.save_checkpoint("/tmp/never", model=model(), state={}, meta={"step": 1},
                              keep=True), TypeError, "keep")
bad("save_checkpoint(keep=1.5)",
    lambda: g.save_checkpoint("/tmp/never", model=model(), state={}, meta={"step": 1},
                              keep=1.5), TypeError, "keep")
bad("save_checkpoint(meta=list)",
    lambda: g.save_checkpoint("/tmp/never", model=model(), state={}, meta=[1]), TypeError,
    "meta")
bad("load_checkpoint missing", lambda: g.load_checkpoint("/no/such/run"), ValueError,
    "does not exist")
bad("load_checkpoint(load_state=1)", lambda: g.load_checkpoint("/tmp", load_state=1), TypeError,
    "load_state")
bad("TrainConfig(warmup_steps=2.5)", lambda: _train_config(warmup_steps=2.5), TypeError,
    "warmup_steps")
bad("TrainConfig(warmup_steps=-1)", lambda: _train_config(warmup_steps=-1), ValueError,
    "warmup_steps")
bad("TrainConfig(seed=1.5)", lambda: _train_config(seed=1.5), TypeError, "seed")
bad("TrainConfig(seed=-1)", lambda: _train_config(seed=-1), ValueError, "seed")
bad("TrainConfig(batch_size=True)", lambda: _train_config(batch_size=True), TypeError,
    "batch_size")
bad("TrainConfig(lr=nan)", lambda: _train_config(lr=NAN), ValueError, "lr")
bad("TrainConfig(min_lr=nan)", lambda: _train_config(min_lr=NAN), ValueError, "min_lr")
bad("TrainConfig(min_lr>lr)", lambda: _train_config(lr=1e-3, min_lr=1e-2), ValueError, "min_lr")
bad("TrainConfig(grad_clip=nan)", lambda: _train_config(grad_clip=NAN), ValueError,
    "grad_clip")
bad("TrainConfig(val_fraction=nan)", lambda: _train_config(val_fraction=NAN), ValueError,
    "val_fraction")
bad("TrainConfig(stride=True)", lambda: _train_config(stride=True), TypeError, "stride")
bad("TrainConfig(stride=0)", lambda: _train_config(stride=0), ValueError, "stride")
bad("TrainConfig(sample_tokens=-1)", lambda: _train_config(sample_tokens=-1), ValueError,
    "sample_tokens")
bad("TrainConfig(compile=1)", lambda: _train_config(compile=1), TypeError, "compile")
bad("TrainConfig(max_steps=2.0)", lambda: _train_config(max_steps=2.0), TypeError,
    "max_steps")
bad("lr_at(step=-5)", lambda: g.lr_at(-5, peak_lr=1e-3, min_lr=1e-4, warmup_steps=2,
                                      total_steps=10), ValueError, "step")
bad("lr_at(step=2.5)", lambda: g.lr_at(2.5, peak_lr=1e-3, min_lr=1e-4, warmup_steps=2,
                                       total_steps=10), TypeError, "step")
bad("lr_at(warmup_steps=2.5)", lambda: g.lr_at(1, peak_lr=1e-3, min_lr=1e-4, warmup_steps=2.5,
                                               total_steps=10), TypeError, "warmup_steps")
bad("lr_at(min_lr=nan)", lambda: g.lr_at(1, peak_lr=1e-3, min_lr=NAN, warmup_steps=2,
                                         total_steps=10), ValueError, "min_lr")
bad("configure_optimizer(lr=nan)", lambda: g.configure_optimizer(model(), NAN, 0.1), ValueError,
    "lr")
bad("configure_optimizer(weight_decay=nan)",
    lambda: g.configure_optimizer(model(), 1e-3, NAN), ValueError, "weight_decay")
bad("configure_optimizer(betas=(0.9, 1.5))",
    lambda: g.configure_optimizer(model(), 1e-3, 0.1, (0.9, 1.5)), ValueError, "betas")
bad("calc_loss_batch target >= vocab",
    lambda: g.calc_loss_batch(IDX, torch.tensor([[1, 2, 50]]), model(), "cpu"), ValueError,
    "target_batch", "vocab_size")
bad("calc_loss_batch negative target",
    lambda: g.calc_loss_batch(IDX, torch.tensor([[1, 2, -3]]), model(), "cpu"), ValueError,
    "target_batch")
bad("calc_loss_batch float targets",
    lambda: g.calc_loss_batch(IDX, torch.tensor([[1.0, 2.0, 3.0]]), model(), "cpu"), TypeError,
    "target_batch")
bad("calc_loss_batch shape mismatch",
    lambda: g.calc_loss_batch(IDX, torch.tensor([[1, 2]]), model(), "cpu"), ValueError,
    "target_batch", "shape")
bad("calc_loss_loader(num_batches=0)", lambda: g.calc_loss_loader([], model(), "cpu", 0),
    ValueError, "num_batches")
bad("calc_loss_loader(num_batches=True)", lambda: g.calc_loss_loader([], model(), "cpu", True),
    TypeError, "num_batches")
bad("perplexity(nan)", lambda: g.perplexity(NAN), ValueError, "loss")
bad("perplexity('1')", lambda: g.perplexity("1"), TypeError, "loss")
bad("train(seed=1.5)",
    lambda: g.train(model(), TOKENS, TOKENS, g.TrainConfig(seed=1.5), "/tmp/never",
                    context_length=4, progress=False), TypeError, "seed")
bad("train val split shorter than a window",
    lambda: g.train(model(), TOKENS, TOKENS[:3], g.TrainConfig(max_steps=1), "/tmp/never",
                    context_length=4, progress=False), ValueError, "validation", "window")
bad("train(context_length=0)",
    lambda: g.train(model(), TOKENS, TOKENS, g.TrainConfig(max_steps=1), "/tmp/never",
                    context_length=0, progress=False), ValueError, "context_length")
bad("train(context_length above the model's)",
    lambda: g.train(model(), TOKENS, TOKENS, g.TrainConfig(max_steps=1, batch_size=1), "/tmp/never",
                    context_length=16, progress=False), ValueError, "context_length")

# -- finetuning (chapters 6, 7, appendix E) -------------------------------------------------
bad("SpamDataset(pad_token_id=10**6)",
    lambda: g.SpamDataset([("hi", 0)], tok(), pad_token_id=10**6), ValueError, "pad_token_id")
bad("SpamDataset(pad_token_id=-1)",
    lambda: g.SpamDataset([("hi", 0)], tok(), pad_token_id=-1), ValueError, "pad_token_id")
bad("SpamDataset(pad_token_id=True)",
    lambda: g.SpamDataset([("hi", 0)], tok(), pad_token_id=True), TypeError, "pad_token_id")
bad("SpamDataset(max_length=0)", lambda: g.SpamDataset([("hi", 0)], tok(), max_length=0),
    ValueError, "max_length")
bad("SpamDataset(max_length=True)", lambda: g.SpamDataset([("hi", 0)], tok(), max_length=True),
    ANY, "max_length")
bad("SpamDataset label out of range", lambda: g.SpamDataset([("hi", 2)], tok()), ValueError,
    "label")
bad("split_records(fractions nan)", lambda: g.split_records([1, 2, 3], (NAN, 0.5, 0.5)),
    ValueError, "fractions")
bad("split_records(seed=1.5)", lambda: g.split_records([1, 2, 3], seed=1.5), TypeError, "seed")
bad("balance_classes(seed=True)",
    lambda: g.balance_classes([g.LabeledText("hi", 0)], seed=True), TypeError, "seed")
bad("instruction_collate(allowed_max_length=True)",
    lambda: g.instruction_collate([[1, 2, 3]], allowed_max_length=True), TypeError,
    "allowed_max_length")
bad("instruction_collate(allowed_max_length=0)",
    lambda: g.instruction_collate([[1, 2, 3]], allowed_max_length=0), ValueError,
    "allowed_max_length")
bad("instruction_collate(allowed_max_length=2.5)",
    lambda: g.instruction_collate([[1, 2, 3]], allowed_max_length=2.5), TypeError,
    "allowed_max_length")
bad("instruction_collate(pad_token_id=-5)",
    lambda: g.instruction_collate([[1, 2, 3]], pad_token_id=-5), ValueError, "pad_token_id")
bad("instruction_collate(pad_token_id=1.0)",
    lambda: g.instruction_collate([[1, 2, 3]], pad_token_id=1.0), TypeError, "pad_token_id")
bad("instruction_collate(mask_prompt=1)",
    lambda: g.instruction_collate([[1, 2, 3]], mask_prompt=1), TypeError, "mask_prompt")
bad("instruction_collate(ignore_index=0.5)",
    lambda: g.instruction_collate([[1, 2, 3]], ignore_index=0.5), TypeError, "ignore_index")
bad("instruction_collate(empty batch)", lambda: g.instruction_collate([]), ValueError, "batch")
bad("instruction_splits(seed=1.5)", lambda: g.instruction_splits(seed=1.5), TypeError, "seed")
bad("generate_responses(max_new_tokens=0)",
    lambda: g.generate_responses(model(), [], max_new_tokens=0), ValueError, "max_new_tokens")
bad("make_classifier(num_classes=True)",
    lambda: g.make_classifier(g.GPTModel(CFG), True), ANY, "num_classes")
bad("make_classifier(trainable_blocks=2)",
    lambda: g.make_classifier(g.GPTModel(CFG), 2, 2), ValueError, "trainable_blocks")
bad("make_classifier(trainable_blocks=1.0)",
    lambda: g.make_classifier(g.GPTModel(CFG), 2, 1.0), TypeError, "trainable_blocks")
bad("classify(max_length=0)",
    lambda: g.classify("hi", g.make_classifier(g.GPTModel(CFG), 2), max_length=0), ValueError,
    "max_length")
bad("replace_linear_with_lora(rank=1.5)",
    lambda: g.replace_linear_with_lora(g.GPTModel(CFG), 1.5, 2.0), TypeError, "rank")
bad("replace_linear_with_lora(alpha=nan)",
    lambda: g.replace_linear_with_lora(g.GPTModel(CFG), 2, NAN), ValueError, "alpha")
bad("replace_linear_with_lora(freeze_base=1)",
    lambda: g.replace_linear_with_lora(g.GPTModel(CFG), 2, 2.0, freeze_base=1), TypeError,
    "freeze_base")
bad("LoRALayer(in_dim=0)", lambda: g.LoRALayer(0, 4, 2, 2.0), ValueError, "in_dim")
bad("load_lora missing", lambda: g.load_lora(g.GPTModel(CFG), "/no/such.safetensors"),
    FileNotFoundError, "/no/such.safetensors")

# -- fundamentals (appendix A) --------------------------------------------------------------
bad("NeuralNetwork(num_inputs=0)", lambda: g.NeuralNetwork(0, 2), ValueError, "num_inputs")
bad("NeuralNetwork(num_outputs=True)", lambda: g.NeuralNetwork(2, True), TypeError,
    "num_outputs")
bad("train_classifier(epochs=1.5)",
    lambda: g.train_classifier(g.NeuralNetwork(2, 2), [], 1.5, 0.1), TypeError, "epochs")
bad("train_classifier(lr=nan)", lambda: g.train_classifier(g.NeuralNetwork(2, 2), [], 1, NAN),
    ValueError, "lr")
bad("resource_path unknown", lambda: g.resource_path("nope.txt"), ValueError, "nope.txt")


@pytest.mark.parametrize("call, error, words", CALLS)
def test_a_bad_argument_is_refused_by_name_before_torch_sees_it(call, error, words):
    with pytest.raises((TypeError, ValueError, FileNotFoundError)) as refused:
        call()
    message = str(refused.value)
    assert isinstance(refused.value, error), f"{type(refused.value).__name__}: {message}"
    assert type(refused.value).__module__.startswith(("gpt_components", "builtins")), message
    assert "\n" not in message.strip()
    for word in words:
        assert word in message, message


# -- the command line -----------------------------------------------------------------------
FLAGS: list = []


def flag(argv: list[str], *words: str) -> None:
    FLAGS.append(pytest.param(argv, words, id=" ".join(argv)))


TRAIN = ["train", "--no-progress", "--run-dir", "{run}"]
flag([*TRAIN, "--context-length", "0"], "--context-length", ">= 1")
flag([*TRAIN, "--context-length", "-3"], "--context-length")
flag([*TRAIN, "--steps", "0"], "--steps", ">= 1")
flag([*TRAIN, "--steps", "-1"], "--steps")
flag([*TRAIN, "--preset", "gpt-huge"], "--preset", "gpt-huge", "gpt-nano")
flag([*TRAIN, "--epochs", "0"], "--epochs")
flag([*TRAIN, "--grad-accum", "0"], "--grad-accum")
flag([*TRAIN, "--lr", "nan"], "--lr")
flag([*TRAIN, "--lr", "inf"], "--lr")
flag([*TRAIN, "--min-lr", "-1"], "--min-lr")
flag([*TRAIN, "--warmup-steps", "-1"], "--warmup-steps")
flag([*TRAIN, "--weight-decay", "nan"], "--weight-decay")
flag([*TRAIN, "--grad-clip", "-1"], "--grad-clip")
flag([*TRAIN, "--grad-clip", "nan"], "--grad-clip")
flag([*TRAIN, "--dropout", "1.5"], "--dropout")
flag([*TRAIN, "--dropout", "nan"], "--dropout")
flag([*TRAIN, "--val-fraction", "0"], "--val-fraction")
flag([*TRAIN, "--val-fraction", "nan"], "--val-fraction")
flag([*TRAIN, "--stride", "0"], "--stride")
flag([*TRAIN, "--eval-interval", "0"], "--eval-interval")
flag([*TRAIN, "--eval-iters", "0"], "--eval-iters")
flag([*TRAIN, "--checkpoint-interval", "0"], "--checkpoint-interval")
flag([*TRAIN, "--seed", "-1"], "--seed")
flag([*TRAIN, "--sample-tokens", "-1"], "--sample-tokens")
flag([*TRAIN, "--batch-size", "-2"], "--batch-size")
flag([*TRAIN, "--corpus", "/no/such/corpus.txt"], "--corpus", "does not exist")
flag([*TRAIN, "--val-fraction", "0.001", "--context-length", "64"], "validation", "--val-fraction")
GEN = ["generate", "{tmp}/gpt"]
flag([*GEN, "--max-new-tokens", "-1"], "--max-new-tokens")
flag([*GEN, "--temperature", "nan"], "--temperature")
flag([*GEN, "--temperature", "-1"], "--temperature")
flag([*GEN, "--top-k", "0"], "--top-k")
flag([*GEN, "--top-k", "50258", "--temperature", "1"], "--top-k", "vocab_size")
flag([*GEN, "--top-p", "nan"], "--top-p")
flag([*GEN, "--top-p", "0"], "--top-p")
flag([*GEN, "--eos-id", "50257"], "--eos-id")
flag([*GEN, "--eos-id", "-1"], "--eos-id")
flag([*GEN, "--context-size", "0"], "--context-size")
flag([*GEN, "--seed", "-1", "--temperature", "1"], "--seed")
flag([*GEN, "--device", "tpu"], "--device")
flag([*GEN, "--prompt", ""], "--prompt")
FT = ["finetune-classifier", "--out", "{tmp}/out"]
flag([*FT, "--lr", "nan"], "--lr")
flag([*FT, "--lr", "0"], "--lr")
flag([*FT, "--weight-decay", "-1"], "--weight-decay")
flag([*FT, "--drop-rate", "1.5"], "--drop-rate")
flag([*FT, "--lora-alpha", "nan", "--lora-rank", "2"], "--lora-alpha")
flag([*FT, "--trainable-blocks", "-1"], "--trainable-blocks")
flag([*FT, "--max-length", "0"], "--max-length")
flag([*FT, "--seed", "-1"], "--seed")
flag([*FT, "--weights", "/no/such/weights"], "--weights", "does not exist")
flag([*FT, "--run", "/no/such/run"], "--run", "does not exist")
FI = ["finetune-instructions", "--out", "{tmp}/out"]
flag([*FI, "--allowed-max-length", "0"], "--allowed-max-length")
flag([*FI, "--epochs", "0"], "--epochs")
flag([*FI, "--lr", "inf"], "--lr")
flag(["instruction-responses", "--model", "{tmp}/gpt", "--max-new-tokens", "0"],
     "--max-new-tokens")
flag(["instruction-responses", "--model", "{tmp}/gpt", "--limit", "0"], "--limit")
flag(["classify", "hi", "--model", "/no/such/model"], "--model", "/no/such/model")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flags")
    g.save_pretrained(g.GPTModel(g.GPTConfig(vocab_size=50257, context_length=8, emb_dim=8,
                                             n_heads=2, n_layers=1)), tmp / "gpt")
    return tmp


class _Started(Exception):
    """Raised where a command would start training: a bad flag must stop it before that."""


def _refuse_to_start(*args, **kwargs):
    raise _Started("training started despite a bad flag")


@pytest.mark.parametrize("argv, words", FLAGS)
def test_a_bad_flag_is_one_line_naming_the_flag(argv, words, workdir, capsys, monkeypatch,
                                                tmp_path):
    import gpt_components.finetune.commands as commands
    import gpt_components.training as training

    monkeypatch.setattr(training, "train_step", _refuse_to_start)
    monkeypatch.setattr(commands, "configure_optimizer", _refuse_to_start)
    argv = [arg.replace("{tmp}", str(workdir)).replace("{run}", str(tmp_path / "run"))
            for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt-components: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    for internal in ("max_steps", "name ", "d_in", "drop_rate ", "num_batches"):
        assert internal not in err, err
