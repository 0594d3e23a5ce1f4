"""Files that a kill never tears: written whole under a temporary name, then renamed into place.

A rename within one directory is atomic: a reader sees the old file or the new one, never half
of either. It is durable only once the new file's bytes (``fsync`` of the file, *before* the
rename) and the directory entry (``fsync`` of the directory, *after* it) reach the disk;
otherwise a power cut can leave a renamed but empty file. Every writer of the machinery goes
through these helpers, so that order holds in one place.

- ``write_bytes_atomically(path, data)``, ``write_json_atomically(path, payload)``: one file.
- ``fsync_directory(path)``: make the entries of a directory (renames, new files) durable.
- ``fsync_tree(path)``: every file of a directory tree, then its directories.
- ``replace_directory(new, target)``: put the directory ``new`` in the place of ``target`` in one
  step: on Linux the two are exchanged (``renameat2(RENAME_EXCHANGE)``), so ``target`` always
  names a whole directory, the old one or the new one; elsewhere two renames, with a moment
  between them when ``target`` is missing.

>>> import json, pathlib, tempfile
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_json_atomically(folder / "config.json", {"step": 3})
>>> json.loads((folder / "config.json").read_text())
{'step': 3}
>>> sorted(p.name for p in folder.iterdir())  # no temporary file left behind
['config.json']
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_bytes_atomically", "write_json_atomically", "fsync_directory", "fsync_tree",
           "replace_directory"]


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush the entries of directory ``path`` to the disk (a no-op where the OS cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows opens no directory; its renames are durable on their own
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; nothing more can be done there
    finally:
        os.close(fd)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``: temporary file, fsync, rename, dir fsync."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes reach the disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_json_atomically(path: str | os.PathLike, payload: Any) -> None:
    """``payload`` as indented JSON in ``path``, written with ``write_bytes_atomically``."""
    write_bytes_atomically(path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


def fsync_tree(path: str | os.PathLike) -> None:
    """fsync every file under ``path``, then every directory, deepest first."""
    folders = []
    for root, _, files in os.walk(path):
        folders.append(root)
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in reversed(folders):
        fsync_directory(folder)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories ``a`` and ``b`` in one step; False where the OS has no way to."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    errno = ctypes.get_errno()
    if errno in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: this file system cannot exchange
        return False
    raise OSError(errno, os.strerror(errno), str(b))


def replace_directory(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put directory ``new`` (a sibling of ``target``) in ``target``'s place; the old is removed.

    ``new`` is fsynced first, so the directory ``target`` names after the swap is whole on disk.
    """
    new, target = Path(new), Path(target)
    fsync_tree(new)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # now the old directory
    else:
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.rename(target, old / target.name)
        os.rename(new, target)
        shutil.rmtree(old)
    fsync_directory(target.parent)
