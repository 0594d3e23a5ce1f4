"""Spec of a run's records (chapter 5): the metrics log and its loss plot."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_components.metrics import (
    METRICS_FILE,
    append_metrics,
    plot_losses,
    read_metrics,
    start_metrics,
)

pytestmark = pytest.mark.ch05

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


def test_a_run_without_a_log_has_no_records(tmp_path):
    assert read_metrics(tmp_path) == []
    start_metrics(tmp_path / "new" / "run")  # creates the run directory
    assert (tmp_path / "new" / "run" / METRICS_FILE).read_text(encoding="utf-8") == ""


def test_the_loss_plot_is_a_png_of_both_losses_against_tokens_seen(tmp_path):
    log = [{"step": s, "tokens_seen": 100 * s, "loss": 5.0 / s} for s in range(1, 6)]
    log.insert(3, {"step": 3, "tokens_seen": 300, "val_loss": 2.5, "train_eval_loss": 1.9})
    log.append({"step": 5, "tokens_seen": 500, "val_loss": 2.0, "train_eval_loss": 1.5})
    fig = plot_losses(log, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = fig.axes
    train, val = ax.get_lines()
    assert list(train.get_xdata()) == [100, 200, 300, 400, 500]
    assert list(train.get_ydata()) == [5.0 / s for s in range(1, 6)]
    assert (list(val.get_xdata()), list(val.get_ydata())) == ([300, 500], [2.5, 2.0])
    assert val.get_marker() == "o"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train (step)", "validation"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("tokens seen", "cross-entropy loss")
