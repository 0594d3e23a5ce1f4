"""The ``gpt-components`` command line: one subcommand per job.

>>> main(["info"])  # doctest: +ELLIPSIS
gpt_components ...
torch ...
tiktoken ...
devices: cpu...
0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _info(_: argparse.Namespace) -> None:
    import tiktoken
    import torch

    from . import __version__
    from .fundamentals import available_devices

    print(f"gpt_components {__version__}")
    print(f"torch {torch.__version__}")
    print(f"tiktoken {tiktoken.__version__}")
    print("devices: " + ", ".join(available_devices()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpt-components",
        description="Train, run and finetune a GPT-2-style model built from first principles.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = commands.add_parser("info", help="show package, torch and tiktoken versions and devices")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except CLIError as error:
        print(f"gpt-components: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
