"""SIGKILL a ``gpt-components`` command at one chosen file-system write, for the spec of the
finetune commands' outputs.

Usage: python spec/_finetune_kill.py WATCHED_DIR KILL_AT ARGV...

An audit hook counts the writes under WATCHED_DIR (an open for writing, a rename, a removal, a
directory made or removed, a truncation, and a ctypes call: the directory exchange). At the
KILL_AT-th the process kills itself with SIGKILL before the call takes effect, so KILL_AT = 1,
2, ... visits every state the directory passes through. If fewer writes happen, the command
completes and the script prints how many it saw (0 for KILL_AT = 0: count only).
"""

import os
import signal
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
EVENTS = ("open", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate",
          "shutil.rmtree", "ctypes.call_function")


def main() -> None:
    watched, kill_at, argv = Path(sys.argv[1]).resolve(), int(sys.argv[2]), sys.argv[3:]
    seen = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal seen
        if event not in EVENTS:
            return
        if event != "ctypes.call_function":
            path = args[0]
            if not isinstance(path, (str, bytes, os.PathLike)):
                return  # an open of a file descriptor: the write was counted when it was made
            target = Path(os.fsdecode(path)).absolute()
            if watched != target and watched not in target.parents:
                return
            if event == "open":
                mode, flags = args[1], args[2]
                if not (flags & WRITE_FLAGS or (mode and any(c in mode for c in "wax+"))):
                    return
        seen += 1
        if seen == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    from gpt_components.cli import main as cli_main

    sys.addaudithook(hook)
    status = cli_main(argv)
    print(f"writes: {seen}")
    sys.exit(status)


if __name__ == "__main__":
    main()
