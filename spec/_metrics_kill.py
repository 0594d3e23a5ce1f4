"""SIGKILL a ``start_metrics`` rewrite at one chosen write, for the spec of ``metrics.jsonl``.

Usage: python spec/_metrics_kill.py RUN_DIR KEEP_UNTIL_STEP KILL_AT

An audit hook counts the file-system writes under RUN_DIR (an open for writing, a rename, a
removal, a truncation). At the KILL_AT-th the process first does what that call does at once
(an open that truncates empties the file) and then kills itself with SIGKILL: the state on disk
is that of a process killed just after the call. If fewer writes happen, the rewrite completes
and the script prints how many it saw. ``metrics.py`` is loaded from its file, without the
package, so the process starts in milliseconds (it needs nothing but the standard library).
"""

import importlib.util
import os
import signal
import sys
import types
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def main() -> None:
    run_dir, keep, kill_at = Path(sys.argv[1]).resolve(), int(sys.argv[2]), int(sys.argv[3])
    seen = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal seen
        if event not in ("open", "os.rename", "os.remove", "os.truncate"):
            return
        path = args[1] if event == "os.rename" else args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # an open of a file descriptor: the write was counted when it was made
        target = Path(os.fsdecode(path)).resolve()
        if run_dir not in target.parents:
            return
        if event == "open":
            mode, flags = args[1], args[2]
            if not (flags & WRITE_FLAGS or (mode and any(c in mode for c in "wax+"))):
                return
        seen += 1
        if seen == kill_at:
            if event == "open" and args[2] & os.O_TRUNC and target.exists():
                with open(target, "r+b") as f:  # the truncation the open was about to make
                    f.truncate(0)
            os.kill(os.getpid(), signal.SIGKILL)

    # A bare package over machinery/, so that metrics' ``from .atomic import`` finds its sibling.
    machinery = Path(__file__).resolve().parent.parent / "gpt_components" / "machinery"
    package = types.ModuleType("machinery_under_test")
    package.__path__ = [str(machinery)]
    sys.modules[package.__name__] = package
    spec = importlib.util.spec_from_file_location(f"{package.__name__}.metrics",
                                                  machinery / "metrics.py")
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    sys.addaudithook(hook)
    metrics.start_metrics(run_dir, keep_until_step=keep)
    print(seen)


if __name__ == "__main__":
    main()
