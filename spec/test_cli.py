"""The command line: every option documented, bad input as one-line errors, train -> generate,
Ctrl-C, a locked run, resumes that extend or refuse, failed starts that leave nothing behind."""

import builtins
import dataclasses
import errno
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt_components import cli
from gpt_components.bpe import BPETokenizer
from gpt_components.cli import build_parser, main
from gpt_components.finetune import commands as finetune_commands
from gpt_components.machinery import rundir
from gpt_components.machinery.checkpoint import RunLockedError, load_checkpoint, lock_run
from gpt_components.machinery.metrics import read_metrics
from gpt_components.machinery.registry import FAMILIES
from gpt_components.machinery.resources import load_text

pytestmark = pytest.mark.machinery

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


@pytest.mark.parametrize("command", ["info", "generate", "finetune-classifier", "classify",
                                     "finetune-instructions", "instruction-responses"])
def test_every_command_describes_itself_in_its_help(command):
    description = _subparsers()[command].description or ""
    assert len(description.split()) >= 8, f"{command} --help has no description"


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--lr", "-1"], "--lr must be a float > 0, got -1.0"),
    (["train", "--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr must be a float in [0, 0.001]"),
    (["train", "--steps", "0"], "--steps must be an int >= 1, got 0\n"),
    (["train", "--grad-clip", "-1"], "--grad-clip must be a float >= 0, got -1.0\n"),
    (["train", "--batch-size", "0"], "--batch-size must be an int >= 1"),
    (["train", "--corpus", "/no/such/corpus.txt"], "corpus"),
    (["train", "--tokenizer", "/no/such/tokenizer"], "--tokenizer"),
    (["train", "--device", "tpu"], "--device"),
    (["train", "--resume", "/no/such/run"], "--resume"),
    (["train", "--bf16", "--device", "cpu"], "bf16"),
    (["train", "--weight-decay", "nan"], "--weight-decay must be a float >= 0 (finite), got nan"),
    (["train", "--grad-clip", "inf"], "--grad-clip must be a float >= 0 (finite), got inf"),
    (["train", "--min-lr", "nan"], "--min-lr must be a float in [0, 0.006] (finite), got nan"),
    (["generate", "/no/such/run"], "source '/no/such/run' does not exist"),
    (["finetune-classifier", "--out", "o", "--weights", "/no/such/weights"],
     "--weights '/no/such/weights' does not exist"),
    (["finetune-classifier", "--out", "o", "--run", "/no/such/run"],
     "--run '/no/such/run' does not exist"),
    (["finetune-classifier", "--out", "o", "--lora-rank", "0"], "--lora-rank must be an int >= 1"),
    (["finetune-dpo", "--out", "o", "--lr", "inf"], "--lr must be a float > 0 (finite), got inf"),
    (["finetune-instructions", "--out", "o", "--data", "/no/such/data.json"], "/no/such/data.json"),
    (["classify", "hello", "--model", "/no/such/model"], "/no/such/model"),
    (["instruction-responses", "--model", "/no/such/model"],
     "--model '/no/such/model' does not exist"),
])
def test_a_bad_argument_gives_a_one_line_error_and_a_nonzero_exit(argv, fragment, tmp_path,
                                                                  capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error:")
    assert fragment in err and "Traceback" not in err


def test_a_new_run_reads_the_tokenizer_its_presets_family_declares(tmp_path, monkeypatch):
    from gpt_components.machinery import registry

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    learned = BPETokenizer.train(TEXT, vocab_size=300)
    declared = learned.save(tmp_path / "declared")
    gpt2 = FAMILIES["gpt2"]
    monkeypatch.setitem(registry._DECLARED, "gpt2", gpt2)  # the original is back after the test
    dataclasses.replace(gpt2, tokenizer=str(declared))  # declared again: registered again
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["vocab_size"] == learned.n_vocab == 300  # not GPT-2's 50,257
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(tmp_path / "given"),
                 "--tokenizer", "gpt2", *TINY]) == 0  # a flag given still wins
    given = json.loads((tmp_path / "given" / "config.json").read_text())
    assert given["tokenizer"] == "gpt2" and given["model"]["vocab_size"] == 50257


def test_train_writes_a_run_that_generate_continues_and_resume_accepts(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY]) == 0
    for name in ("config.json", "metrics.jsonl", "loss.png", "checkpoints/latest.json"):
        assert (run / name).is_file()
    # It ends saying where the run is and what to type next, commands that work as printed.
    said = capsys.readouterr().out.splitlines()[-3:]
    assert said[0].startswith("done: step 3, ") and f"the run is in {run} " in said[0]
    assert shlex.split(said[1].partition("#")[0])[:2] == ["next:", "gpt-components"]
    assert f"gpt-components generate {run} --prompt" in said[1]
    assert f"gpt-components train --resume {run} --steps 6" in said[2]
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
    for bad, message in ((["--top-k", "0"], "--top-k must be an int >= 1, got 0"),
                         (["--top-p", "1.5"], "--top-p must be a float in (0, 1], got 1.5"),
                         (["--context-size", "99"], "--context-size must be <= the model's "
                                                    "context_length=16, got 99")):
        assert main(["generate", str(run), "--temperature", "1", *bad]) == 2
        # One line naming the flag (from error.parameter), and no "or None": a flag given has
        # a value.
        assert capsys.readouterr().err == f"gpt-components: error: {message}\n"
    assert main(["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY]) == 2
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0


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


def _train_argv(corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--corpus", str(corpus), "--run-dir", str(run), *TINY, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 3-step run (checkpoints at steps 2 and 3); copy it before changing it."""
    root = tmp_path_factory.mktemp("finished")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = root / "run"
    assert main(_train_argv(corpus, run, "--checkpoint-interval", "2", "--warmup-steps", "1")) == 0
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _child(*argv: str) -> subprocess.Popen:
    # Ctrl-C's default action, whatever the shell that started pytest left (a background job
    # ignores SIGINT, and its children inherit that).
    return subprocess.Popen([sys.executable, "-m", "gpt_components.cli", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _stopped_and_saved(child: subprocess.Popen, err: str, run: Path, status: int,
                       said: str) -> tuple[list[int], list[str]]:
    """A train stopped by a signal: its exit status, one line saying what it saved, every step
    logged up to the saved one (before the first planned checkpoint); (steps, resume command)."""
    assert child.returncode == status, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"gpt-components: {said}: saved the checkpoint of step ")
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 1000
    assert load_checkpoint(run).meta["step"] == steps[-1]
    return steps, shlex.split(last.partition("resume with: ")[2])


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
def test_ctrl_c_in_train_saves_the_step_reached_and_prints_the_command_that_resumes_it(
        tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    child = _child(*_train_argv(corpus, run, "--steps", "100000", "--checkpoint-interval",
                                "1000"))
    try:
        _until(lambda: any("loss" in r for r in read_metrics(run)))
        # While it trains, a second process is refused at once, naming the one holding the run.
        with pytest.raises(RunLockedError, match=rf"in use by process {child.pid} "):
            with lock_run(run):
                pass
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--no-progress"]) == 2
        assert f"is in use by process {child.pid} " in capsys.readouterr().err
        assert main(_train_argv(corpus, run)) == 2
        assert f"is in use by process {child.pid} " in capsys.readouterr().err
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    steps, command = _stopped_and_saved(child, err, run, 130, "interrupted")
    assert command == ["gpt-components", "train", "--resume", str(run)]
    # The lock died with its process: the printed command resumes the run (here, to 2 more).
    assert main([*command[1:], "--steps", str(steps[-1] + 2), "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(
        range(1, steps[-1] + 3))


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
def test_ctrl_c_under_torchrun_saves_one_step_on_every_rank_and_names_the_resume(tmp_path,
                                                                                  capsys):
    # A terminal's Ctrl-C signals the whole process group: torchrun, which forwards it to its
    # workers, and the workers themselves, so each worker sees it twice.
    import socket

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={port}", "-m", "gpt_components.cli",
         *_train_argv(corpus, run, "--steps", "100000", "--checkpoint-interval", "1000")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _until(lambda: any("loss" in r for r in read_metrics(run)))
        os.killpg(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        os.killpg(child.pid, signal.SIGKILL) if child.poll() is None else None
    said = [line for line in err.splitlines() if line.startswith("gpt-components: ")]
    assert len(said) == 1, err[-3000:]  # rank 0 speaks for the run; no worker aborted
    assert said[0].startswith("gpt-components: interrupted: saved the checkpoint of step "), err
    steps = [r["step"] for r in read_metrics(run) if "loss" in r]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 1000
    assert load_checkpoint(run).meta["step"] == steps[-1]
    command = shlex.split(said[0].partition("resume with: ")[2])
    assert command == ["torchrun", "--nproc_per_node=2", "-m", "gpt_components.cli", "train",
                       "--resume", str(run)]
    # One process cannot continue it exactly (its global batch would be half as large).
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith(
        "gpt-components: error: world size must be the run's own, 2 processes, to resume it "
        "exactly, got 1 (resume it with torchrun --nproc_per_node=2")
    assert load_checkpoint(run).meta["step"] == steps[-1]


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
def test_ctrl_c_in_generate_is_one_line_and_exit_status_130(finished):
    child = _child("generate", str(finished), "--max-new-tokens", "1000000", "--temperature",
                   "1")
    try:
        assert child.stdout.read(1)  # generating
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert (child.returncode, err) == (130, "gpt-components: interrupted\n")


@pytest.mark.parametrize("argv, name", [
    (["finetune-classifier", "--out", "o"], "finetune_classifier"),
    (["classify", "hello", "--model", "m"], "classify_command"),
    (["finetune-instructions", "--out", "o"], "finetune_instructions"),
    (["instruction-responses", "--model", "m"], "instruction_responses"),
])
def test_ctrl_c_in_any_command_is_one_line_and_exit_status_130(argv, name, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_commands, name, interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == "gpt-components: interrupted\n"


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_zero(finished, tmp_path,
                                                                          capsys):
    run = _copy(finished, tmp_path)
    whole = read_metrics(run)
    final = (run / "checkpoints" / "step-00000003" / "model.safetensors").read_bytes()
    # What a kill at step 1 left: the run's config and its first records, no checkpoint.
    shutil.rmtree(run / "checkpoints")
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in whole[:1]))
    capsys.readouterr()
    assert main(_train_argv(Path(json.loads((run / "config.json").read_text())["corpus"]),
                            run)) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and f"--resume {run}" in err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert read_metrics(run) == whole
    assert (run / "checkpoints" / "step-00000003" / "model.safetensors").read_bytes() == final


@pytest.mark.parametrize("problem, fragment", [
    ("empty corpus", "--corpus holds 0 training tokens"),
    ("context longer than the corpus", "--context-length 100000 is longer than the training "
                                       "split (678 tokens)"),
    ("a batch larger than the corpus", "--batch-size: the training split has 42 windows, "
                                       "fewer than one global batch of 1000"),
    ("too little memory", "--context-length 16 (with batch size 2) needs about"),
    ("read-only cache", "--cache-dir"),
])
def test_a_failed_start_is_one_line_and_leaves_no_run_behind(problem, fragment, tmp_path,
                                                             monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("" if problem == "empty corpus" else TEXT, encoding="utf-8")
    extra = {"context longer than the corpus": ["--context-length", "100000"],
             "a batch larger than the corpus": ["--batch-size", "1000"]}.get(problem, [])
    if problem == "too little memory":
        monkeypatch.setattr(rundir, "available_memory", lambda device: 10**6)
    if problem == "read-only cache":
        (tmp_path / "cache").mkdir()
        _read_only(monkeypatch, tmp_path / "cache")
        extra = ["--cache-dir", str(tmp_path / "cache")]
    run = tmp_path / "run"
    assert main(_train_argv(corpus, run, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error: ")
    assert fragment in err and "Traceback" not in err
    if problem == "read-only cache":
        assert "--corpus" not in err and "Permission denied" in err
    assert not run.exists()


def test_the_command_alone_prints_its_help_and_exit_status_2(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("usage: gpt-components ")
    assert "train" in captured.err and "the following arguments are required" not in captured.err


@pytest.mark.parametrize("command", ["train", "finetune-classifier"])
def test_a_misspelt_preset_says_did_you_mean_and_points_to_the_help(command, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    extra = ["--out", "o"] if command != "train" else ["--no-progress"]
    assert main([command, "--preset", "gpt-nan", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error: --preset ")
    assert "did you mean 'gpt-nano'?" in err and "qwen3-moe-nano" not in err
    assert err.endswith(f"(see gpt-components {command} --help)\n")


def test_the_flag_of_a_library_parameter_is_the_one_the_user_gave():
    parser = build_parser()
    given_run = parser.parse_args(["finetune-classifier", "--out", "o", "--run", "r"])
    given_weights = parser.parse_args(["finetune-classifier", "--out", "o", "--weights", "w"])
    generate = parser.parse_args(["generate", "s"])
    resume = parser.parse_args(["train", "--resume", "r"])
    for args in (given_run, given_weights, generate, resume):
        args.flags = {a.dest: (max(a.option_strings, key=len) if a.option_strings else
                               a.metavar or a.dest)
                      for a in _subparsers()[args.command]._actions}
    assert cli.flag_of("source", given_run) == "--run"
    assert cli.flag_of("source", given_weights) == "--weights"
    assert cli.flag_of("source", generate) == "source"
    assert cli.flag_of("top_p", generate) == "--top-p"  # a parameter is its own flag
    assert cli.flag_of("max_steps", resume) == "--steps"  # unless the table says otherwise
    assert cli.flag_of("run_dir", resume) == "--resume"
    assert cli.flag_of("no_such_parameter", generate) is None


def test_a_run_without_a_checkpoint_says_so_and_how_to_make_one(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints")  # what a kill before the first checkpoint leaves
    assert main(["generate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" not in err
    assert err.startswith(f"gpt-components: error: source {str(run)!r} is a run with no "
                          "checkpoint yet")
    assert err.endswith(f"gpt-components train --resume {run}\n")


def test_a_chat_longer_than_the_context_is_refused_naming_the_prompt(finished, capsys,
                                                                     monkeypatch):
    class Chat:  # a chat format with a header of ``header`` tokens
        header = 20

        def encode(self, tokenizer, messages):
            return [1] * self.header + tokenizer.encode(messages[-1]["content"])

        def stop_ids(self, tokenizer):
            return [0]

    monkeypatch.setattr(cli, "chat_format_for", lambda tokenizer: Chat())
    assert main(["generate", str(finished), "--chat", "--prompt", "Hi", "--max-new-tokens",
                 "4"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing generated from a cut-off chat
    assert captured.err.startswith("gpt-components: error: --prompt with --chat makes a chat of "
                                   "21 tokens, longer than the context of 16 tokens")
    assert captured.err.count("\n") == 1
    Chat.header = 10
    assert main(["generate", str(finished), "--chat", "--prompt", "Hi", "--max-new-tokens",
                 "4"]) == 0
    assert capsys.readouterr().err == ""  # 11 + 4 tokens fit
    assert main(["generate", str(finished), "--chat", "--prompt", "Hi", "--max-new-tokens",
                 "9"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("gpt-components: warning: the chat's 11 tokens and --max-new-tokens 9 "
                          "exceed the context of 16 tokens: after 5 answer tokens")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_sigterm_in_train_saves_the_step_reached_and_a_resume_goes_on_from_it(tmp_path,
                                                                              capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    child = _child(*_train_argv(corpus, run, "--steps", "100000", "--checkpoint-interval",
                                "1000"))
    try:
        _until(lambda: any("loss" in r for r in read_metrics(run)))
        child.send_signal(signal.SIGTERM)  # what a scheduler or `docker stop` sends first
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    steps, command = _stopped_and_saved(child, err, run, 143, "stopped by SIGTERM")
    assert main([*command[1:], "--steps", str(steps[-1] + 1), "--no-progress"]) == 0
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(
        range(1, steps[-1] + 2))  # from the saved step, not from 0


def test_generate_refuses_more_new_tokens_than_memory_can_hold(finished, capsys):
    assert main(["generate", str(finished), "--max-new-tokens", str(10**13)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpt-components: error: --max-new-tokens 10000000000000 needs about ")
    assert err.count("\n") == 1


def test_a_resume_refuses_by_name_every_flag_it_cannot_change(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for given in (["--lr", "0.1"], ["--preset", "gpt-mini"], ["--tie-weights"],
                  ["--context-length", "16"], ["--batch-size", "2"], ["--corpus", "x.txt"],
                  ["--tokenizer", "gpt2"], ["--epochs", "3"], ["--run-dir", "elsewhere"],
                  ["--compile"], ["--seed", "123"]):
        assert main(["train", "--resume", str(run), *given, "--steps", "9"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gpt-components: error: {given[0]} cannot be changed by "
                              "--resume"), err
        assert err.count("\n") == 1
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2  # finished: say so
    assert capsys.readouterr().err == (
        f"gpt-components: error: --resume: the run {str(run)!r} is finished (step 3 of 3): to "
        f"train it longer, give a new total, for example gpt-components train --resume {run} "
        "--steps 6\n")
    assert main(["train", "--resume", str(run), "--steps", "2"]) == 2
    assert "--steps must be greater than the 3 steps the run has made" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_resume_with_more_steps_re_lays_the_cosine_over_the_new_total(finished, tmp_path,
                                                                        capsys):
    run = _copy(finished, tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "7", "--no-progress"]) == 0
    assert "re-laid over 7 steps" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 7
    steps = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 8))
    peak, low, warmup = 6e-3, 6e-4, 1  # the run's --lr, --min-lr, --warmup-steps
    for r in steps[3:]:  # step s (1-based) follows a 7-step cosine from its peak to the minimum
        progress = (r["step"] - 1 - warmup) / (7 - 1 - warmup)
        expected = low + (peak - low) * (1 + math.cos(math.pi * progress)) / 2
        assert math.isclose(r["lr"], expected, rel_tol=1e-12), r
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2  # finished again


def test_train_help_lists_every_preset_and_the_flags_a_resume_takes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    presets = [(name, cfg) for family in FAMILIES.values() for name, cfg in family.presets.items()]
    assert len(presets) > 7  # GPT-2's and the modern families'
    for name, cfg in presets:
        line = next(line for line in out.splitlines() if line.startswith(f"  {name} "))
        assert line.endswith(f"{cfg.n_layers} layers x {cfg.emb_dim} wide, {cfg.n_heads} heads, "
                             f"context {cfg.context_length}")
    assert ("accepts only --steps, --device, --cache-dir, --no-progress" in " ".join(out.split()))
    assert "re-laid" in out


def _read_only(monkeypatch, directory: Path) -> None:
    """Make ``directory`` read-only for this process (the spec may run as root, whom chmod
    does not stop): every way of writing under it fails with EACCES naming the path."""
    directory = directory.resolve()

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        path = Path(os.fsdecode(path)).absolute()
        return directory in path.parents

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    def guard(real, writes=lambda *a, **k: True, paths=lambda *a: a[:1]):
        def guarded(*args, **kwargs):
            for path in paths(*args):
                if under(path) and writes(*args, **kwargs):
                    refuse(path)
            return real(*args, **kwargs)
        return guarded

    def opens_for_writing(file, mode="r", *args, **kwargs):
        return any(c in mode for c in "wax+")

    def os_open_writes(path, flags, *args, **kwargs):
        return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))

    for module, name, writes in ((builtins, "open", opens_for_writing),
                                 (io, "open", opens_for_writing), (os, "open", os_open_writes)):
        monkeypatch.setattr(module, name, guard(getattr(module, name), writes))
    for name in ("mkdir", "remove", "unlink", "rmdir", "truncate"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    for name in ("replace", "rename"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), paths=lambda *a: a[:2]))


@pytest.mark.parametrize("which", ["run", "checkpoints"])
def test_a_read_only_run_or_checkpoints_directory_is_one_line_and_keeps_the_last_checkpoint(
        which, finished, tmp_path, monkeypatch, capsys):
    run = _copy(finished, tmp_path)
    before = load_checkpoint(run)
    capsys.readouterr()
    _read_only(monkeypatch, run if which == "run" else run / "checkpoints")
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress"]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gpt-components: error: ")
    assert "Permission denied" in err and "Traceback" not in err
    if which == "run":
        assert repr(str(run)) in err or str(run) in err
    else:
        assert err == (f"gpt-components: error: could not write checkpoint "
                       f"'{run}/checkpoints/step-00000004' (Permission denied: "
                       f"'{run}/checkpoints'); the previous checkpoint "
                       f"'{run}/checkpoints/step-00000003' is intact\n")
    after = load_checkpoint(run)
    assert after.meta == before.meta
    assert all((after.weights[k] == v).all() for k, v in before.weights.items())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "latest.json", "step-00000002", "step-00000003"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
