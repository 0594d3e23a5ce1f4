"""The finetune commands' outputs survive anything: a SIGKILL at any write of a re-run into an
existing --out leaves the earlier result or the new one, whole (never weights beside another
model's tokenizer); Ctrl-C or SIGTERM saves the model trained so far and says how to use it; a
diverging run is one line naming the step; a --out that is a file is refused before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_components.bpe import BPETokenizer
from gpt_components.cli import main
from gpt_components.finetune import commands
from gpt_components.machinery.metrics import read_metrics
from gpt_components.machinery.resources import load_text
from gpt_components.machinery.sources import load_model_and_tokenizer

pytestmark = pytest.mark.ch07

QUICK = ["--limit", "8", "--batch-size", "4", "--epochs", "1", "--eval-iter", "1"]
KILL_SCRIPT = Path(__file__).parent / "_finetune_kill.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    """A pretraining run with a learned 300-token BPE: finetuned from it, an output keeps that
    tokenizer's files; from a preset, it holds none (GPT-2's)."""
    root = tmp_path_factory.mktemp("bpe-run")
    text = load_text("the-verdict.txt")[:3000]
    (root / "corpus.txt").write_text(text, encoding="utf-8")
    BPETokenizer.train(text, vocab_size=300).save(root / "bpe")
    assert main(["train", "--corpus", str(root / "corpus.txt"), "--tokenizer", str(root / "bpe"),
                 "--run-dir", str(root / "run"), "--preset", "gpt-nano", "--context-length",
                 "16", "--batch-size", "2", "--steps", "2", "--eval-iters", "1",
                 "--sample-tokens", "0", "--no-progress"]) == 0
    return root / "run"


def _killed_at(k: int, out: Path, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KILL_SCRIPT), str(out.parent), str(k), *argv],
                          capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.slow
def test_a_rerun_killed_at_any_write_leaves_the_old_result_or_the_new_one_whole(
        bpe_run, tmp_path):
    old_argv = ["finetune-instructions", "--run", str(bpe_run), *QUICK]
    new_argv = ["finetune-instructions", "--preset", "gpt-nano", *QUICK]
    out = tmp_path / "out" / "model"
    assert main([*old_argv, "--out", str(out)]) == 0
    old = _files(out)
    # The new result, written by the same kind of process as the killed ones (bit for bit).
    counted = _killed_at(0, out, [*new_argv, "--out", str(out)])
    assert counted.returncode == 0, counted.stderr
    writes = int(counted.stdout.rsplit("writes: ", 1)[1])
    new = _files(out)
    assert "encoder.json" in old and "encoder.json" not in new  # BPE's files, then GPT-2's none
    assert main([*old_argv, "--out", str(out)]) == 0  # back to the old result
    # Every write once would take minutes; the first, some between, and the last three (the
    # swap and the removal of the old directory) cover each kind of state.
    points = sorted({1, writes // 3, 2 * writes // 3, writes - 2, writes - 1, writes})
    for k in points:
        killed = _killed_at(k, out, [*new_argv, "--out", str(out)])
        assert killed.returncode == -signal.SIGKILL, (k, killed.stderr[-2000:])
        found = _files(out)
        assert found in (old, new), f"kill at write {k} of {writes} left {sorted(found)}"
        model, tokenizer, _ = load_model_and_tokenizer(out)
        assert model.cfg.vocab_size == tokenizer.n_vocab  # never another model's tokenizer
        if found == new:
            assert main([*old_argv, "--out", str(out)]) == 0
    leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
    assert main([*old_argv, "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == [out.name], leftovers  # cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("sig, status, said", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_ctrl_c_or_sigterm_while_finetuning_saves_the_model_so_far_and_says_how_to_use_it(
        sig, status, said, tmp_path):
    out = tmp_path / "model"
    child = subprocess.Popen(
        [sys.executable, "-m", "gpt_components.cli", "finetune-instructions", "--preset",
         "gpt-nano", "--limit", "200", "--batch-size", "2", "--epochs", "50", "--eval-freq",
         "1", "--eval-iter", "1", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        while not child.stdout.readline().startswith("epoch 1 step 2:"):  # it is training
            assert child.poll() is None, child.stderr.read()
        child.send_signal(sig)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == status, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"gpt-components: {said} after step "), err
    assert last.endswith(f"use it with: gpt-components instruction-responses --model {out}")
    step = int(last.split(" after step ")[1].split(":")[0])
    assert [r["step"] for r in read_metrics(out)] == list(range(1, step + 1))
    model, tokenizer, _ = load_model_and_tokenizer(out)
    assert model.cfg.vocab_size == tokenizer.n_vocab


def test_a_diverging_finetune_is_one_line_naming_the_step_and_writes_nothing(
        tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["finetune-instructions", "--preset", "gpt-nano", "--lr", "1e30", *QUICK,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gpt-components: error: loss became ") and " at step " in err
    assert "nothing was written" in err and not out.exists()


@pytest.mark.parametrize("command", ["finetune-dpo", "finetune-instructions",
                                     "finetune-classifier"])
def test_an_out_that_is_a_file_is_refused_before_any_work(command, tmp_path, capsys,
                                                          monkeypatch):
    taken = tmp_path / "taken.json"
    taken.write_text("{}", encoding="utf-8")

    def no_work(*args, **kwargs):
        raise AssertionError("the starting model was loaded before --out was checked")

    monkeypatch.setattr(commands, "load_start_model", no_work)
    monkeypatch.setattr(commands.dpo, "load_preference_data", no_work)
    assert main([command, "--out", str(taken)]) == 2
    assert capsys.readouterr().err == (f"gpt-components: error: --out {str(taken)!r} is a file: "
                                       "give a directory to write the model to (a new one, or an "
                                       "earlier output to replace)\n")
    assert taken.read_text(encoding="utf-8") == "{}"
