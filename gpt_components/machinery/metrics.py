"""A training run's records (chapter 5): ``metrics.jsonl`` and the ``loss.png`` drawn from it.

``metrics.jsonl`` holds one JSON object a line: one per optimizer step (``step``,
``tokens_seen``, ``loss``, ...) and one per evaluation (``val_loss``, ...). Lines are only ever
appended, so a run killed mid-write leaves at most a half-written last line, which
``read_metrics`` skips. A resumed run first cuts the file back to its checkpoint's step, by
writing the kept records to a temporary file beside it and renaming that over it: a process
killed at any instant leaves either the old log or the new one, never a shorter one.
Exports ``read_metrics``, ``start_metrics``, ``append_metrics`` and ``plot_losses``.

>>> import tempfile
>>> run = tempfile.mkdtemp()
>>> start_metrics(run)
>>> append_metrics(run, [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0}])
>>> start_metrics(run, keep_until_step=1)  # resuming from the checkpoint of step 1
>>> read_metrics(run)
[{'step': 1, 'loss': 2.5}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_bytes_atomically

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.figure import Figure

__all__ = ["METRICS_FILE", "read_metrics", "start_metrics", "append_metrics", "plot_losses"]

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``metrics.jsonl`` in ``run_dir`` (none if it does not exist).

    Reading stops at the first line that is not JSON: a run killed while appending leaves a
    half-written last line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def start_metrics(run_dir: str | os.PathLike, keep_until_step: int | None = None) -> None:
    """Begin ``run_dir``'s log: empty, or (resuming) cut back to the records of steps <= k.

    The log is replaced whole (temporary file, fsync, rename, directory fsync), never rewritten
    in place.
    """
    run_dir = Path(run_dir)
    kept = [] if keep_until_step is None else [
        r for r in read_metrics(run_dir) if r["step"] <= keep_until_step]
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in run_dir.glob(f".{METRICS_FILE}.*.tmp"):  # from a rewrite killed midway
        leftover.unlink(missing_ok=True)
    # fsync before the rename and of the directory after it: a crash leaves the whole old log
    # or the whole new one, never a renamed file whose bytes had not reached the disk.
    write_bytes_atomically(run_dir / METRICS_FILE,
                           "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))


def append_metrics(run_dir: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append ``records`` to the log, one JSON line each, in one write."""
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def plot_losses(records: Iterable[dict], path: str | os.PathLike) -> Figure:
    """Draw the evaluated losses against tokens seen into ``path`` (PNG, Agg).

    The two marked lines are what the run prints at each evaluation (and on its last line):
    the training loss measured in eval mode (``train_eval_loss``) and the validation loss. The
    loss of each optimizer step, noisier and taken with dropout on, is drawn faintly behind.
    Returns the matplotlib ``Figure``, for a notebook to show or restyle.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = list(records)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r and "train_eval_loss" in r]
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([r["tokens_seen"] for r in steps], [r["loss"] for r in steps], color="0.6",
            alpha=0.4, linewidth=0.8, label="train (each step)")
    ax.plot([r["tokens_seen"] for r in evals], [r["train_eval_loss"] for r in evals], "o-",
            label="train (evaluation)")
    ax.plot([r["tokens_seen"] for r in evals], [r["val_loss"] for r in evals], "o-",
            label="validation")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return fig
