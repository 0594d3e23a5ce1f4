"""Spec of a run's records (chapter 5): the metrics log and its loss plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt_components.machinery.metrics import (
    METRICS_FILE,
    append_metrics,
    plot_losses,
    read_metrics,
    start_metrics,
)

pytestmark = pytest.mark.machinery

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
records = st.fixed_dictionaries(
    {"step": st.integers(1, 50), "tokens_seen": st.integers(0, 10**6)},
    optional={"loss": finite, "val_loss": finite, "sample": st.text(max_size=20)},
)
batches = st.lists(st.lists(records, max_size=4), max_size=5)


@given(batches=batches, keep=st.none() | st.integers(0, 50))
def test_the_log_reads_back_what_was_appended_and_a_resume_keeps_steps_up_to_its_own(
        tmp_path_factory, batches, keep):
    run = tmp_path_factory.mktemp("run")
    start_metrics(run)
    for batch in batches:
        append_metrics(run, batch)
    written = [r for batch in batches for r in batch]
    assert read_metrics(run) == written
    start_metrics(run, keep_until_step=keep)
    assert read_metrics(run) == ([] if keep is None else [r for r in written if r["step"] <= keep])


@given(good=st.lists(records, max_size=4), cut=st.integers(1, 30))
def test_a_half_written_last_line_is_skipped(tmp_path_factory, good, cut):
    run = tmp_path_factory.mktemp("run")
    start_metrics(run)
    append_metrics(run, good)
    partial = json.dumps({"step": 99, "loss": 1.0, "sample": "x" * 40})[:cut]
    with open(run / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(partial)
    assert read_metrics(run) == good


KILLER = Path(__file__).resolve().parent / "_metrics_kill.py"


@pytest.mark.slow  # a subprocess (the slow tier; spec/README.md)
@settings(max_examples=8)  # each example starts a Python process (~50 ms) and kills it
@given(steps=st.integers(1, 12), keep=st.integers(1, 12), kill_at=st.integers(1, 4),
       half_line=st.booleans())
def test_a_resume_killed_at_any_write_of_the_log_loses_no_record(
        tmp_path_factory, steps, keep, kill_at, half_line):
    # A real SIGKILL at each file-system write the rewrite makes: after it, the log holds the
    # old records or the cut-back ones, and the next resume's rewrite gives the cut exactly.
    run = tmp_path_factory.mktemp("run")
    start_metrics(run)
    written = []
    for step in range(1, steps + 1):
        batch = [{"step": step, "tokens_seen": 8 * step, "loss": 1.0 / step}]
        if step % 3 == 0:
            batch.append({"step": step, "tokens_seen": 8 * step, "val_loss": 2.0})
        append_metrics(run, batch)
        written += batch
    if half_line:  # the run itself died mid-append
        with open(run / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write('{"step": 99, "lo')
    cut = [r for r in written if r["step"] <= keep]
    died = subprocess.run([sys.executable, str(KILLER), str(run), str(keep), str(kill_at)],
                          capture_output=True, text=True, timeout=60)
    if died.returncode == 0:  # the rewrite made fewer writes than kill_at
        assert int(died.stdout) < kill_at
        assert read_metrics(run) == cut
    else:
        assert died.returncode == -9, died.stderr
        assert read_metrics(run) in (written, cut)
    start_metrics(run, keep_until_step=keep)
    assert read_metrics(run) == cut
    assert sorted(p.name for p in run.iterdir()) == [METRICS_FILE]


@given(steps=st.integers(0, 6), keep=st.integers(0, 6))
def test_the_rewritten_log_reaches_the_disk_before_its_rename_and_the_rename_after(
        tmp_path_factory, steps, keep):
    """The kill harness stops a process *before* a rename, never after one; what a crash after
    the rename leaves depends on this order: the temporary file's bytes fsynced before it is
    renamed over the log, the directory's entry fsynced after. Removing either fsync fails."""
    import os

    from gpt_components.machinery import atomic

    run = tmp_path_factory.mktemp("run")
    start_metrics(run)
    append_metrics(run, [{"step": i + 1, "loss": 1.0} for i in range(steps)])
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        calls.append(("replace", os.path.realpath(src)))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atomic.os, "fsync", fsync)
        patch.setattr(atomic.os, "replace", replace)
        start_metrics(run, keep_until_step=keep)
    replaced = [i for i, (kind, _) in enumerate(calls) if kind == "replace"]
    assert len(replaced) == 1
    tmp = calls[replaced[0]][1]
    assert Path(tmp).parent == run.resolve() and Path(tmp).name != METRICS_FILE
    assert ("fsync", tmp) in calls[: replaced[0]]  # the bytes, before the name points at them
    assert ("fsync", str(run.resolve())) in calls[replaced[0] + 1:]  # the entry, after
    assert [r["step"] for r in read_metrics(run)] == list(range(1, min(steps, keep) + 1))


def test_a_run_without_a_log_has_no_records(tmp_path):
    assert read_metrics(tmp_path) == []
    start_metrics(tmp_path / "new" / "run")  # creates the run directory
    assert (tmp_path / "new" / "run" / METRICS_FILE).read_text(encoding="utf-8") == ""


def test_the_loss_plot_draws_what_the_run_prints_with_each_step_faintly_behind(tmp_path):
    log = [{"step": s, "tokens_seen": 100 * s, "loss": 5.0 / s} for s in range(1, 6)]
    log.insert(3, {"step": 3, "tokens_seen": 300, "val_loss": 2.5, "train_eval_loss": 1.9})
    log.append({"step": 5, "tokens_seen": 500, "val_loss": 2.0, "train_eval_loss": 1.5})
    fig = plot_losses(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = fig.axes
    each_step, train, val = ax.get_lines()
    assert list(each_step.get_xdata()) == [100, 200, 300, 400, 500]
    assert list(each_step.get_ydata()) == [5.0 / s for s in range(1, 6)]
    assert each_step.get_alpha() < 1 and each_step.get_marker() in ("None", None, "")
    # The evaluated losses, the figures the run prints (its last line: train 1.5, val 2.0).
    assert (list(train.get_xdata()), list(train.get_ydata())) == ([300, 500], [1.9, 1.5])
    assert (list(val.get_xdata()), list(val.get_ydata())) == ([300, 500], [2.5, 2.0])
    assert train.get_marker() == val.get_marker() == "o"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "train (each step)", "train (evaluation)", "validation"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("tokens seen", "cross-entropy loss")
