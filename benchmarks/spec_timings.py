"""Time the spec against its budgets: the whole default tier, each chapter's marker, the slow tier.

The budgets (spec/README.md) keep writing properties first a tight loop: under Hypothesis' ``ci``
profile on a quiet 2-core machine, ``pytest spec`` within 3 minutes and ``pytest spec -m
<chapter>`` within 45 seconds for every chapter. Times are only meaningful on a quiet machine
(load average under 1.5), so the script prints the load before and after each run and refuses to
start on a busy one unless told to (``--force``).

    python benchmarks/spec_timings.py                 # every chapter, then the whole tier
    python benchmarks/spec_timings.py ch03 modern     # just these markers
    python benchmarks/spec_timings.py --slow          # the slow tier as well

Not a pytest file: pytest-benchmark times functions in one process; this times whole pytest
runs, each in a fresh interpreter, as a developer (or CI) runs them.

>>> sorted(BUDGETS)[:3], BUDGETS["whole"]
(['appendix_a', 'appendix_d', 'appendix_e'], 180)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHOLE, CHAPTER, SLOW = 180, 45, 600  # seconds


def _markers() -> list[str]:
    """The markers pyproject.toml declares (``"name: description"`` lines), slow excepted."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = text.split("markers = [", 1)[1].split("]", 1)[0]
    names = re.findall(r'^\s*"([a-z0-9_]+):', block, flags=re.M)
    return [name for name in names if name != "slow"]


BUDGETS = {**{name: CHAPTER for name in _markers()}, "whole": WHOLE, "slow": SLOW}


def _run(args: list[str]) -> tuple[float, str]:
    env = {**os.environ, "CI": "true"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "spec", "-q", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
    return seconds, re.sub(r"=+", "", summary).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("markers", nargs="*", help="markers to time (default: every chapter)")
    parser.add_argument("--slow", action="store_true", help="also time the slow tier")
    parser.add_argument("--force", action="store_true", help="time even on a busy machine")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.markers) - set(BUDGETS))
    if unknown:
        parser.error(f"markers must be among {sorted(BUDGETS)}, got {unknown}")
    load = os.getloadavg()[0]
    if load >= 1.5 and not args.force:
        print(f"load average {load:.2f}: wait for a quiet machine (< 1.5) or pass --force")
        return 2
    runs = [(name, ["-m", name]) for name in (args.markers or _markers())]
    if not args.markers:
        runs.append(("whole", []))
    if args.slow:
        runs.append(("slow", ["-m", "slow"]))
    over = 0
    print(f"{'tier':<12} {'seconds':>8} {'budget':>7}  load before/after  result")
    for name, extra in runs:
        before = os.getloadavg()[0]
        seconds, summary = _run(extra)
        after = os.getloadavg()[0]
        flag = "" if seconds <= BUDGETS[name] else "  OVER"
        over += bool(flag)
        print(f"{name:<12} {seconds:8.1f} {BUDGETS[name]:7d}  {before:5.2f} / {after:5.2f}"
              f"      {summary}{flag}", flush=True)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
