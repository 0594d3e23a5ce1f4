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
A save that fails (a full disk, a read-only directory) removes what it wrote and raises
``CheckpointWriteError`` naming the path and the cause; one whose weights or optimizer state
hold NaN or infinity writes nothing and raises ``NonFiniteStateError``.

``lock_run`` holds a run directory for one process: an OS lock (``flock``) on ``.lock`` in
it, which dies with its process, so a crashed run never leaves a stale lock behind.

Exports: ``save_checkpoint``, ``load_checkpoint``, ``latest_checkpoint``, ``latest_step``,
``lock_run``,
``Checkpoint``, ``CheckpointError``, ``CheckpointWriteError``, ``NonFiniteStateError``,
``RunLockedError``.

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

import contextlib
import io
import json
import os
import pickle
import pickletools
import re
import shlex
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from .atomic import fsync_directory, write_json_atomically
from .checks import check_bool, check_instance, check_int, value_error
from .tensor_files import TensorFileError, check_state_dict, read_safetensors

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "latest_step",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "NonFiniteStateError",
    "RunLockedError",
]

WEIGHTS, STATE, META, LATEST = "model.safetensors", "state.pt", "meta.json", "latest.json"
LOCK = ".lock"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, truncated or unsafe to load."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, read-only directory, ...); nothing was."""


class NonFiniteStateError(ValueError):
    """Weights or optimizer state hold NaN or infinity: such a checkpoint is never written."""


class RunLockedError(RuntimeError):
    """Another process holds the run directory (it is training or resuming it)."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns: weights, tensor state and JSON metadata."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    meta: dict[str, Any]

    def load_into(self, model: torch.nn.Module) -> torch.nn.Module:
        """Copy the weights into ``model`` after checking every name, shape and dtype.

        ``CheckpointError`` names the first tensor that is missing, extra or of another shape;
        floating-point weights of another precision are converted with a warning. A module that
        stacks tensors an older checkpoint kept apart (a mixture's experts) renames them first
        (its ``restack(weights, prefix)``).
        """
        weights = dict(self.weights)
        for prefix, module in model.named_modules():  # experts an older checkpoint kept apart
            if callable(getattr(module, "restack", None)):
                module.restack(weights, f"{prefix}." if prefix else "")
        try:
            weights = check_state_dict(model.state_dict(), weights, self.path / WEIGHTS)
        except TensorFileError as error:
            raise CheckpointError(str(error)) from None
        model.load_state_dict(weights)
        return model


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _first_non_finite(tensors: Any, where: str) -> str | None:
    """``where`` plus the key path of the first float tensor holding NaN or inf, else None."""
    if isinstance(tensors, torch.Tensor):
        if tensors.is_floating_point() and not bool(torch.isfinite(tensors).all()):
            return where
        return None
    items = (tensors.items() if isinstance(tensors, dict) else
             enumerate(tensors) if isinstance(tensors, (list, tuple)) else ())
    for key, value in items:
        found = _first_non_finite(value, f"{where}[{key!r}]")
        if found:
            return found
    return None


def save_checkpoint(
    run_dir: str | os.PathLike,
    *,
    model: torch.nn.Module | dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write a checkpoint for ``meta["step"]`` and make it the latest; keep the newest ``keep``.

    ``model`` is a module or its ``state_dict`` (weights gathered from shards, for instance).
    ``state`` may hold tensors, numbers, strings, lists and dicts (an optimizer's
    ``state_dict()``, for instance); ``meta`` must be JSON-serialisable and include ``step``.
    Raises ``NonFiniteStateError`` (writing nothing) if a weight or a tensor of ``state`` holds
    NaN or infinity, and ``CheckpointWriteError`` (an ``OSError``, leaving the previous
    checkpoint as it was and no temporary file) if the files cannot be written.
    """
    check_instance("model", model, (torch.nn.Module, dict), "a torch.nn.Module or its state_dict")
    check_instance("state", state, dict, "a dict")
    check_instance("meta", meta, dict, "a dict")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise value_error("meta", f"meta['step'] must be an int >= 0, got {step!r}")
    check_int("keep", keep, low=1)
    # safetensors refuses tensors that share memory (a tied output head): store copies.
    tensors = model if isinstance(model, dict) else model.state_dict()
    weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}
    bad = _first_non_finite(weights, "weight") or _first_non_finite(state, "state")
    if bad:
        raise NonFiniteStateError(f"refusing to save the checkpoint of step {step}: {bad} holds "
                                  "NaN or infinity")
    # Serialised in memory first, so that every byte reaches the disk through one plain write
    # whose failure (a full disk) is an OSError naming the file, not a torch internal error.
    state_buffer = io.BytesIO()
    torch.save(state, state_buffer)
    files = {WEIGHTS: safetensors_bytes(weights), STATE: state_buffer.getvalue(),
             META: json.dumps(meta, indent=2).encode("utf-8")}
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp: Path | None = None
    renamed = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
        for name, data in files.items():
            _fsync_write(tmp / name, data)
        if final.exists():  # left by a run killed before it could point latest.json at it
            shutil.rmtree(final)
        fsync_directory(tmp)
        os.replace(tmp, final)
        renamed = True
        fsync_directory(root)
        write_json_atomically(root / LATEST, {"step": step, "path": final.name})
    except OSError as error:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if renamed:  # latest.json still names the previous checkpoint: this one is unused
            shutil.rmtree(final, ignore_errors=True)
        raise CheckpointWriteError(_write_failure(final, error)) from None
    for old in sorted(root.glob("step-*"))[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*"):  # temporary directories of saves killed midway
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in root.glob(f".{LATEST}.*.tmp"):
        leftover.unlink(missing_ok=True)
    return final


def _write_failure(final: Path, error: OSError) -> str:
    cause = error.strerror or str(error)
    if error.filename:
        where = Path(os.fsdecode(error.filename))
        if where.parent.name.startswith(".") and where.parent.parent == final.parent:
            where = where.parent  # a file of the temporary checkpoint directory
        if where.name.startswith(".") and where.parent == final.parent:
            where = where.parent  # a temporary name means nothing to the user: its directory
        cause = f"{cause}: {str(where)!r}"
    try:
        previous = latest_checkpoint(final.parent.parent)
    except (CheckpointError, OSError):
        previous = None
    kept = (f"the previous checkpoint {str(previous)!r} is intact" if previous else
            "the run has no earlier checkpoint")
    return f"could not write checkpoint {str(final)!r} ({cause}); {kept}"


_held_locks: dict[Path, list[int]] = {}  # lock file -> [file descriptor, depth], this process


@contextlib.contextmanager
def lock_run(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``run_dir`` (made if missing) for this process while the block runs.

    The lock is ``flock`` on ``run_dir/.lock``, which holds the holder's pid: a second process
    gets ``RunLockedError`` at once, naming that pid. It is released when the block ends or the
    process dies, however it dies; within one process it may be taken again (it nests). Where
    the OS has no ``fcntl`` (Windows) the run is not locked.
    """
    run_dir = Path(run_dir)
    path = run_dir.resolve() / LOCK
    if path in _held_locks:
        _held_locks[path][1] += 1
        try:
            yield run_dir
        finally:
            _held_locks[path][1] -= 1
        return
    try:
        import fcntl
    except ImportError:
        yield run_dir
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"run directory {str(run_dir)!r} is in use by process {holder} (a train or resume "
            "of this run is still running): wait for it to finish or stop it first") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        _held_locks[path] = [fd, 1]
        yield run_dir
    finally:
        _held_locks.pop(path, None)
        os.close(fd)  # releases the flock


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


def latest_step(run_dir: str | os.PathLike) -> int:
    """The step of the run's latest checkpoint (its ``meta.json``), 0 if it has none yet."""
    found = latest_checkpoint(run_dir)
    if found is None:
        return 0
    try:
        step = json.loads((found / META).read_text(encoding="utf-8"))["step"]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{str(found / META)!r} is missing or corrupted: {error}") from None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{str(found / META)!r} holds step {step!r}, not an int >= 0")
    return step


# Names torch's weights-only unpickler may meet in a checkpoint we wrote ourselves.
_SAFE_GLOBAL = re.compile(r"(torch|collections|_codecs|numpy)\.")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
               "BINSTRING", "STRING"}


def _pickle_bytes(path: Path) -> bytes:
    """The pickle stream of a ``torch.save`` file: the zip's ``data.pkl``, or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0]) if names else b""
    return path.read_bytes()


def _pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a pickle would import, read without unpickling anything."""
    found, pushed, memo = [], [], {}
    try:
        for op, arg, _ in pickletools.genops(_pickle_bytes(path)):
            if op.name in ("GLOBAL", "INST"):
                found.append(".".join(str(arg).split(" ", 1)))
            elif op.name in _STRING_OPS:
                pushed.append(arg)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET") and isinstance(memo.get(arg), str):
                pushed.append(memo[arg])
            elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
    except (ValueError, KeyError, zipfile.BadZipFile, OSError):
        pass  # a damaged stream: report what was read before the damage
    return found


def _refusal_reason(error: Exception, path: Path) -> str:
    """What a refused pickle wanted to do, in a few words, without torch's advice to unlock it.

    torch names the global it refused (``GLOBAL posix.system``) in wordings that change between
    versions, and for some pickles (protocol 4) names none: the pickle's own opcodes say it then.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch bolds part of its message
    named = re.search(r"GLOBAL\s+([A-Za-z_][\w.]*[\w])", text)
    if named:
        return f"it would call {named.group(1)}"
    unsafe = [name for name in _pickle_globals(path) if not _SAFE_GLOBAL.match(name)]
    if unsafe:
        return f"it would call {unsafe[0]}"
    return "it holds pickle instructions other than tensors and plain values"


def _intact_older(root: Path, damaged: Path) -> Path | None:
    """The newest checkpoint in ``root`` other than ``damaged`` that loads in full, or None."""
    for candidate in sorted(root.glob("step-*"), reverse=True):
        if candidate.name == damaged.name or not candidate.is_dir():
            continue
        try:
            _load_directory(candidate, "cpu", load_state=True)
        except CheckpointError:
            continue
        return candidate
    return None


def _with_fallback(error: CheckpointError, run: Path, damaged: Path) -> CheckpointError:
    """``error`` plus, when an older checkpoint is intact, the command that points the run at it."""
    older = _intact_older(run / "checkpoints", damaged)
    if older is None:
        return error
    step = int(older.name.split("-", 1)[1])
    pointer = json.dumps({"step": step, "path": older.name})
    command = f"printf '%s' '{pointer}' > {shlex.quote(str(run / 'checkpoints' / LATEST))}"
    return CheckpointError(f"{error}; the older checkpoint {older.name} is intact: make it the "
                           f"latest with: {command}")


def _load_directory(path: Path, map_location: str, load_state: bool) -> Checkpoint:
    for name in (WEIGHTS, STATE, META) if load_state else (WEIGHTS, META):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is missing {name}")
    try:
        weights = {key: tensor.to(map_location)
                   for key, tensor in read_safetensors(path / WEIGHTS).items()}
    except (TensorFileError, OSError) as error:
        raise CheckpointError(str(error)) from None
    state: Any = {}
    if load_state:
        try:
            state = torch.load(path / STATE, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(
                f"{str(path / STATE)!r} was refused and nothing in it was run: it holds objects "
                f"other than tensors and plain values ({_refusal_reason(error, path / STATE)})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as error:
            raise CheckpointError(f"{str(path / STATE)!r} is corrupted or truncated: {error}"
                                  ) from None
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{str(path / META)!r} is corrupted: {error}") from None
    if not isinstance(state, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} must hold dicts in {STATE} and {META}")
    return Checkpoint(path, weights, state, meta)


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", *,
                    load_state: bool = True) -> Checkpoint:
    """Load a checkpoint directory, or the latest checkpoint of a run directory.

    Raises ``CheckpointError`` (a ``ValueError``) naming the file for anything missing, truncated,
    corrupted, or containing a pickle that would run code: such a pickle is refused, not run.
    When a run's latest checkpoint is damaged and an older one is intact, the error names it and
    the command that makes it the latest. ``load_state=False`` reads only the weights and
    ``meta.json`` (all that generation needs), leaving ``state`` empty.
    """
    check_instance("path", path, (str, os.PathLike), "a str or PathLike")
    check_bool("load_state", load_state)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"path {str(path)!r} does not exist")
    if (path / "checkpoints").is_dir() or not (path / META).exists():
        try:
            found = latest_checkpoint(path)
        except CheckpointError as error:
            raise _with_fallback(error, path, path / "checkpoints" / LATEST) from None
        if found is None:
            raise CheckpointError(f"path must be a run or checkpoint directory, got {str(path)!r}")
        try:
            return _load_directory(found, map_location, load_state)
        except CheckpointError as error:
            raise _with_fallback(error, path, found) from None
    return _load_directory(path, map_location, load_state)
