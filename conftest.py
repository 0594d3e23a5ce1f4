"""Shared pytest configuration: Hypothesis profiles for the spec.

Profiles:
- ``dev`` (default on a workstation): quick, random, enough to run before every change.
- ``ci``: Hypothesis' own profile, which it loads by itself when ``CI=true``.
- ``thorough``: thousands of examples per property, for a deep check before a release.
- ``mutation``: derandomized and without the shrink phase, for mutmut.

Choose one with ``--hypothesis-profile NAME`` or ``HYPOTHESIS_PROFILE=NAME``.

Parallel runs: ``pytest spec`` spreads its test files over every core (pytest-xdist,
``-n auto --dist loadfile``), each worker with its share of torch's threads. ``-n 0`` (or
``-p no:xdist``) runs in one process; ``-n 4`` picks the count. The benchmarks always run in one
process: pytest-benchmark times nothing under xdist.
"""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

_ROOT = Path(__file__).resolve().parent

# Torch calls are slow the first time and vary with machine load: no deadlines anywhere.
settings.register_profile("dev", max_examples=25, deadline=None)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "mutation",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)

_requested = os.environ.get("HYPOTHESIS_PROFILE")
if _requested:
    settings.load_profile(_requested)
elif os.environ.get("CI", "").lower() not in ("1", "true"):
    settings.load_profile("dev")


def _runs_benchmarks(config: pytest.Config) -> bool:
    """Whether the command line names anything under ``benchmarks/``."""
    benchmarks = _ROOT / "benchmarks"
    for arg in config.args:
        path = (Path(config.invocation_params.dir) / arg.split("::")[0]).resolve()
        if path == benchmarks or benchmarks in path.parents or path in benchmarks.parents:
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Run the spec on every core unless the command line chose a process count itself."""
    if (not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput")
            or config.option.numprocesses is not None or config.option.collectonly
            or _runs_benchmarks(config)):
        return
    config.option.numprocesses = "auto"
    if config.option.dist == "no":
        config.option.dist = "loadfile"  # a file's module fixtures are built once, not per worker


def pytest_configure(config: pytest.Config) -> None:
    """Give each xdist worker its share of the cores, so workers do not oversubscribe them."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // int(workerinput["workercount"])))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the ``slow`` checks out unless the -m expression names them (``-m slow``)."""
    if "slow" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="slow (minutes on two cores): run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
