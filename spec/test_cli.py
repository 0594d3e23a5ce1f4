"""The command line: every option documented, bad input as one-line errors, train -> generate."""

import json

import pytest

from gpt_components.bpe import BPETokenizer
from gpt_components.cli import build_parser, main
from gpt_components.metrics import read_metrics
from gpt_components.resources import load_text

pytestmark = pytest.mark.ch05

TEXT = load_text("the-verdict.txt")[:3000]
TINY = ["--preset", "gpt-nano", "--context-length", "16", "--batch-size", "2", "--steps", "3",
        "--eval-interval", "2", "--eval-iters", "1", "--sample-tokens", "3", "--no-progress"]


def _subparsers():
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices


@pytest.mark.parametrize("command", ["train", "generate", "finetune-classifier", "classify",
                                     "finetune-instructions", "instruction-responses"])
def test_every_option_has_help_text(command):
    actions = [a for a in _subparsers()[command]._actions if a.dest != "help"]
    assert actions
    assert [a.dest for a in actions if not (a.help or "").strip()] == []


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--lr", "-1"], "--lr must be a finite number > 0"),
    (["train", "--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr must be in [0, peak_lr=0.001]"),
    (["train", "--batch-size", "0"], "--batch-size must be an int >= 1"),
    (["train", "--preset", "gpt-huge"], "--preset must be one of"),
    (["train", "--corpus", "/no/such/corpus.txt"], "corpus"),
    (["train", "--tokenizer", "/no/such/tokenizer"], "--tokenizer"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--resume", "/no/such/run"], "--resume"),
    (["train", "--bf16", "--device", "cpu"], "bf16"),
    (["generate", "/no/such/run"], "source"),
    (["finetune-classifier", "--out", "o", "--weights", "/no/such/weights"], "/no/such/weights"),
    (["finetune-classifier", "--out", "o", "--run", "/no/such/run"], "/no/such/run"),
    (["finetune-classifier", "--out", "o", "--lora-rank", "0"], "rank"),
    (["finetune-instructions", "--out", "o", "--data", "/no/such/data.json"], "/no/such/data.json"),
    (["classify", "hello", "--model", "/no/such/model"], "/no/such/model"),
    (["instruction-responses", "--model", "/no/such/model"], "/no/such/model"),
])
def test_a_bad_argument_gives_a_one_line_error_and_a_nonzero_exit(argv, fragment, tmp_path,
                                                                  capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error:")
    assert fragment in err and "Traceback" not in err


def test_train_writes_a_run_that_generate_continues_and_resume_accepts(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY]) == 0
    for name in ("config.json", "metrics.jsonl", "loss.png", "checkpoints/latest.json"):
        assert (run / name).is_file()
    records = read_metrics(run)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    evaluations = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [2, 3]
    assert all(r["sample"].startswith("Every effort moves you") for r in evaluations)
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"] == "gpt2" and config["model"]["context_length"] == 16
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "I had", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("I had") and len(out) > len("I had\n")
    assert main(["generate", str(run), "--max-new-tokens", "4", "--temperature", "0.8",
                 "--top-k", "5", "--top-p", "0.9", "--no-cache"]) == 0
    capsys.readouterr()
    for bad, message in ((["--top-k", "0"], "--top-k must be >= 1, got 0"),
                         (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
                         (["--context-size", "99"], "--context-size must be <= the model's "
                                                    "context_length=16, got 99")):
        assert main(["generate", str(run), "--temperature", "1", *bad]) == 2
        assert capsys.readouterr().err == f"gpt-components: error: {message}\n"
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY]) == 2
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


def test_a_run_records_its_own_tokenizer_and_generate_reloads_it(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    tokenizer_dir = BPETokenizer.train(TEXT, vocab_size=300).save(tmp_path / "bpe")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--tokenizer", str(tokenizer_dir),
                 "--run-dir", str(run), *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"] == "tokenizer" and config["model"]["vocab_size"] == 300
    assert (run / "tokenizer" / "encoder.json").is_file()
    capsys.readouterr()
    assert main(["generate", str(run), "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("Every effort moves you")
