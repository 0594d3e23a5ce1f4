"""Checkpoints (chapter 5 and appendix D): save a run atomically, load it without pickle risk.

A checkpoint is a directory ``checkpoints/step-NNNNNNNN/`` in a run directory holding

- ``model.safetensors``: the weights (safetensors never executes code);
- ``state.pt``: optimizer state and anything else made of tensors and plain values, read back
  with ``torch.load(weights_only=True)``, which refuses pickles that would construct objects;
- ``meta.json``: the step, data position, model and training configuration, as plain JSON.

It is written under a temporary name and renamed into place, then ``checkpoints/latest.json``
is replaced (again temporary file + ``os.replace``) to point at it, and only then are older
checkpoints pruned: a process killed at any instant leaves the previous checkpoint usable.
Every temporary name sits in the directory it is renamed into (a rename is atomic only within
one file system) and starts with a dot; the next successful save removes any a kill left behind.

Exports: ``save_checkpoint``, ``load_checkpoint``, ``latest_checkpoint``, ``Checkpoint``,
``CheckpointError``.

>>> import tempfile, torch
>>> run = tempfile.mkdtemp()
>>> model = torch.nn.Linear(2, 2)
>>> path = save_checkpoint(run, model=model, state={"note": torch.ones(1)}, meta={"step": 3})
>>> path.name, latest_checkpoint(run) == path
('step-00000003', True)
>>> ckpt = load_checkpoint(run)
>>> ckpt.meta["step"], sorted(ckpt.weights), ckpt.state["note"].tolist()
(3, ['bias', 'weight'], [1.0])
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "Checkpoint",
    "CheckpointError",
]

WEIGHTS, STATE, META, LATEST = "model.safetensors", "state.pt", "meta.json", "latest.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, truncated or unsafe to load."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: weights, tensor state and JSON metadata."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic_json(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    _fsync_write(Path(tmp), json.dumps(payload, indent=2).encode("utf-8"))
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    model: torch.nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``meta["step"]`` and make it the latest; keep the newest ``keep``.

    ``state`` may hold tensors, numbers, strings, lists and dicts (an optimizer's
    ``state_dict()``, for instance); ``meta`` must be JSON-serialisable and include ``step``.
    """
    step = meta.get("step")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"meta['step'] must be an int >= 0, got {step!r}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep!r}")
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    # safetensors refuses tensors that share memory (a tied output head): store copies.
    weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / WEIGHTS))
    with open(tmp / STATE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_write(tmp / META, json.dumps(meta, indent=2).encode("utf-8"))
    if final.exists():  # left by a run killed before it could point latest.json at it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_json(root / LATEST, {"step": step, "path": final.name})
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*"):  # temporary directories of saves killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in root.glob(f".{LATEST}.*.tmp"):
        leftover.unlink(missing_ok=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint directory ``latest.json`` points at, or None if the run has none yet."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"pointer {str(pointer)!r} is corrupted: {error}") from None
    return pointer.parent / name


def _refusal_reason(error: Exception) -> str:
    """The one sentence of torch's weights-only refusal that says what the pickle wanted."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch bolds part of its message
    found = re.search(r"WeightsUnpickler error:\s*(.*?)\.(?:\s|$)", text)
    if found:
        return found.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "unsafe pickle"


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint directory, or the latest checkpoint of a run directory.

    Raises ``CheckpointError`` (a ``ValueError``) naming the file for anything missing, truncated,
    corrupted, or containing a pickle that would run code: such a pickle is refused, not run.
    """
    path = Path(path)
    if (path / "checkpoints").is_dir() or not (path / META).exists():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"path must be a run or checkpoint directory, got {str(path)!r}")
        path = found
    for name in (WEIGHTS, STATE, META):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is missing {name}")
    try:
        weights = load_file(str(path / WEIGHTS), device=map_location)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{str(path / WEIGHTS)!r} is corrupted or truncated: {error}"
                              ) from None
    try:
        state = torch.load(path / STATE, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{str(path / STATE)!r} was refused: it holds objects other than tensors and plain "
            f"values ({_refusal_reason(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(f"{str(path / STATE)!r} is corrupted or truncated: {error}") from None
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{str(path / META)!r} is corrupted: {error}") from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} must hold dicts in {STATE} and {META}")
    return Checkpoint(path, weights, state, meta)
