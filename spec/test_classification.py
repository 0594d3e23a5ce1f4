"""Classification finetuning (chapter 6): the last real token, trainable parts, loss, commands."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from gpt_components.finetune.classification import (
    classification_accuracy,
    classification_loss,
    classifier_logits,
    classify,
    make_classifier,
    train_classifier_simple,
)
from gpt_components.finetune.lora import replace_linear_with_lora
from gpt_components.finetune.spam_data import SPAM_LABELS, LabeledText, SpamDataset
from gpt_components.model import GPTConfig, GPTModel
from gpt_components.tokenizers import gpt2_tokenizer
from spec.strategies import generator, seeds

pytestmark = pytest.mark.ch06

EOT = 50256
PAD = 63  # the padding id of the 64-token models: the classifier never reads it


def tiny_gpt(seed: int, n_layers: int = 2, context_length: int = 24, vocab_size: int = 64,
             dtype: torch.dtype = torch.float32) -> GPTModel:
    """A few-thousand-parameter GPT whose weights are drawn from ``seed``, dropout off."""
    cfg = GPTConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=8, n_heads=2,
                    n_layers=n_layers, drop_rate=0.0)
    with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG: isolate it
        model = GPTModel(cfg).to(dtype)
    g = generator(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
    return model


@given(seeds, st.lists(st.lists(st.integers(0, PAD), min_size=1, max_size=10),
                       min_size=1, max_size=4), st.integers(0, 6))
def test_padding_never_changes_a_classification(seed, sequences, extra):
    model = make_classifier(tiny_gpt(seed, dtype=torch.float64), num_classes=3,
                            generator=generator(seed + 1))
    width = max(map(len, sequences)) + extra
    padded = torch.full((len(sequences), width), PAD)
    for row, ids in enumerate(sequences):
        padded[row, : len(ids)] = torch.tensor(ids)
    lengths = torch.tensor([len(ids) for ids in sequences])
    scores = classifier_logits(model, padded, lengths)
    for row, ids in enumerate(sequences):
        alone = model(torch.tensor([ids]))[0, -1]  # unpadded: the last position is the last token
        torch.testing.assert_close(scores[row], alone, rtol=1e-9, atol=1e-9)


@given(st.integers(1, 4), st.none() | st.integers(0, 4), st.integers(1, 5), seeds)
def test_only_the_chosen_parameters_require_grad(n_layers, trainable_blocks, num_classes, seed):
    model = tiny_gpt(seed, n_layers=n_layers)
    if trainable_blocks is not None and trainable_blocks > n_layers:
        with pytest.raises(ValueError, match="trainable_blocks"):
            make_classifier(model, num_classes, trainable_blocks)
        return
    make_classifier(model, num_classes, trainable_blocks)
    assert (model.out_head.in_features, model.out_head.out_features) == (8, num_classes)
    first_trained = 0 if trainable_blocks is None else n_layers - trainable_blocks
    prefixes = ["final_norm.", "out_head."] + [f"trf_blocks.{i}." for i in
                                                range(first_trained, n_layers)]
    for name, p in model.named_parameters():
        wanted = trainable_blocks is None or any(name.startswith(pre) for pre in prefixes)
        assert p.requires_grad == wanted, name


def test_the_default_trains_the_last_block_final_norm_and_head():
    model = make_classifier(tiny_gpt(0, n_layers=3))
    trained = {name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("trf") else "")
               for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"trf_blocks.2", "final_norm", "out_head"}


def test_seeding_as_the_book_does_gives_the_books_classifier_head():
    # The book: torch.manual_seed(123), then model.out_head = nn.Linear(emb_dim, 2).
    with torch.random.fork_rng(devices=[]):
        model = GPTModel(GPTConfig(vocab_size=64, context_length=8, emb_dim=12, n_heads=2,
                                   n_layers=1))
        torch.manual_seed(123)
        head = make_classifier(model).out_head
        torch.manual_seed(123)
        reference = torch.nn.Linear(12, 2)
    assert [round(v, 4) for v in head.weight[0, :4].tolist()] == [-0.1177, 0.0096, -0.1434,
                                                                  0.1089]
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)


@given(seeds, st.integers(1, 5), st.integers(1, 16))
def test_a_generator_draws_the_head_nn_linear_would_draw_under_the_same_seed(
        seed, num_classes, emb_dim):
    cfg = GPTConfig(vocab_size=20, context_length=4, emb_dim=emb_dim, n_heads=1, n_layers=1)
    with torch.random.fork_rng(devices=[]):
        model = GPTModel(cfg)
        torch.manual_seed(seed)
        reference = torch.nn.Linear(emb_dim, num_classes)
        state = torch.get_rng_state()
        head = make_classifier(model, num_classes, generator=generator(seed)).out_head
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(head.weight, reference.weight) and torch.equal(head.bias, reference.bias)


@given(seeds, st.integers(2, 4), st.lists(st.integers(1, 8), min_size=1, max_size=5))
def test_loss_and_accuracy_match_a_float64_recomputation(seed, num_classes, lengths):
    g = generator(seed)
    model = make_classifier(tiny_gpt(seed), num_classes, generator=g)
    ids = torch.randint(0, 64, (len(lengths), 8), generator=g)
    labels = torch.randint(0, num_classes, (len(lengths),), generator=g)
    lengths_t = torch.tensor(lengths)
    logits = torch.stack([model(ids[i : i + 1, :n])[0, -1] for i, n in enumerate(lengths)])
    logits = logits.double()
    expected = (logits.logsumexp(-1) - logits[torch.arange(len(lengths)), labels]).mean()
    loss = classification_loss(model, ids, labels, lengths_t)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    loader = DataLoader(list(zip(ids, labels, lengths_t, strict=True)), batch_size=2)
    accuracy = classification_accuracy(loader, model)
    assert accuracy == pytest.approx(float((logits.argmax(-1) == labels).double().mean()))


def test_classify_returns_the_label_of_the_highest_score():
    tok = gpt2_tokenizer()
    model = make_classifier(tiny_gpt(3, vocab_size=50257), generator=generator(4))
    for text in ["You won a FREE prize, call now", "see you at lunch", "ok"]:
        ids = torch.tensor([tok.encode(text)])
        expected = SPAM_LABELS[int(model(ids)[0, -1].argmax())]
        assert classify(text, model, tok) == expected
    lora = replace_linear_with_lora(copy.deepcopy(model), rank=2, alpha=8.0)
    assert [classify(t, lora, tok) for t in ("win cash", "hi")] == [
        classify(t, model, tok) for t in ("win cash", "hi")]  # adapters start as no change
    with pytest.raises(ValueError, match="labels"):
        classify("hello", model, tok, labels=("a", "b", "c"))
    with pytest.raises(ValueError, match="text"):
        classify("", model, tok)


def test_classify_cuts_texts_longer_than_the_context():
    model = make_classifier(tiny_gpt(5, context_length=8, vocab_size=50257))
    assert classify("word " * 50, model) in SPAM_LABELS


@given(st.integers(2, 3), st.integers(0, 1))
@example(num_classes=2, offset=0)
def test_labels_outside_the_classes_are_rejected(num_classes, offset):
    bad = num_classes + offset
    message = f"label of records\\[1\\] must be in \\[0, {num_classes}\\)"
    with pytest.raises(ValueError, match=message):
        SpamDataset([("hi", 0), ("there", bad)], num_classes=num_classes)
    with pytest.raises(ValueError, match="labels must be class indices"):
        model = make_classifier(tiny_gpt(0), num_classes)
        classification_loss(model, torch.tensor([[1, 2]]), torch.tensor([bad]))
    with pytest.raises(ValueError, match="labels must be class indices"):
        classification_loss(model, torch.tensor([[1, 2]]), torch.tensor([-1]))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="num_classes"):
        make_classifier(tiny_gpt(0), num_classes=0)
    with pytest.raises(TypeError, match="model"):
        make_classifier(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="lengths"):
        classifier_logits(make_classifier(tiny_gpt(0)), torch.tensor([[1, 2]]), torch.tensor([3]))
    loader = DataLoader(SpamDataset([("hi", 0)]), batch_size=1)
    for bad, error in ((0, ValueError), (1.5, TypeError)):
        message = rf"^num_batches must be an int >= 1 or None, got {bad}$"
        with pytest.raises(error, match=message) as caught:
            classification_accuracy(loader, make_classifier(tiny_gpt(0, vocab_size=50257)),
                                    "cpu", bad)
        assert caught.value.parameter == "num_batches"


@pytest.mark.parametrize("seed", [0, 1])
def test_training_steps_lower_the_loss_on_a_tiny_model(seed):
    g = generator(seed)
    spam = [LabeledText(f"WIN a FREE prize {i}! Call now", 1) for i in range(8)]
    ham = [LabeledText(f"see you at {i} for lunch", 0) for i in range(8)]
    data = SpamDataset(spam + ham)
    loader = DataLoader(data, batch_size=8, shuffle=True, generator=g)
    model = make_classifier(tiny_gpt(seed, vocab_size=50257), generator=g)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    everything = DataLoader(data, batch_size=len(data))
    before = classification_loss(model, *next(iter(everything))).item()
    records = train_classifier_simple(model, loader, everything, optimizer, num_epochs=5,
                                      eval_freq=4, eval_iter=1, seed=seed)
    after = classification_loss(model, *next(iter(everything))).item()
    assert after < before
    assert [r["step"] for r in records] == list(range(1, 11))
    assert records[-1]["examples_seen"] == 5 * len(data)
    assert "val_accuracy" in records[-1]


def _commands_parser():
    import argparse

    from gpt_components.finetune.commands import add_commands

    parser = argparse.ArgumentParser(prog="gpt-components")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_finetune_classifier_and_classify_commands_run_end_to_end(tmp_path, capsys):
    data = tmp_path / "sms.tsv"
    lines = [f"spam\tWIN a FREE prize {i}, call now" for i in range(12)]
    lines += [f"ham\tsee you at {i} for lunch" for i in range(20)]
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "clf"
    parser = _commands_parser()
    args = parser.parse_args(["finetune-classifier", "--data", str(data), "--preset", "gpt-nano",
                              "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
                              "--lora-rank", "2", "--out", str(out), "--device", "cpu"])
    args.run(args)
    printed = capsys.readouterr().out
    assert "RANDOM weights" in printed and "test accuracy" in printed
    assert {p.name for p in out.iterdir()} >= {"classifier.json", "model.safetensors",
                                               "lora.safetensors", "metrics.jsonl"}
    args = parser.parse_args(["classify", "Claim your FREE prize", "--model", str(out)])
    args.run(args)
    assert capsys.readouterr().out.strip() in SPAM_LABELS


@pytest.mark.parametrize("argv, error, match", [
    (["--weights", "w", "--run", "r"], ValueError, "at most one"),
    (["--run", "no/such/run"], FileNotFoundError, "^run 'no/such/run' does not exist"),
    (["--lora-rank", "0"], ValueError, "^lora_rank must be an int >= 1, got 0"),
    (["--epochs", "0"], ValueError, "^epochs must be an int >= 1, got 0"),
])
def test_finetune_classifier_command_rejects_bad_options(tmp_path, argv, error, match):
    args = _commands_parser().parse_args(["finetune-classifier", "--out", str(tmp_path), *argv])
    with pytest.raises(error, match=match) as refused:
        args.run(args)
    assert refused.value.parameter  # the CLI names the flag from it


def test_classify_command_needs_a_finetuned_directory(tmp_path):
    args = _commands_parser().parse_args(["classify", "hi", "--model", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        args.run(args)
