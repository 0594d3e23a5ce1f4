"""Shared benchmark fixtures: a ``device`` parameter and timed calls that wait for the device.

CUDA and MPS run kernels asynchronously: a timer around a bare call measures only the launch.
Every timed call therefore goes through ``synchronize(device)`` before the clock stops.

Use in a benchmark file::

    def test_forward(run_synced, device):
        model = make_model().to(device)
        x = torch.randn(8, 256, 768, device=device)
        run_synced(model, x, rounds=3)          # times model(x) + synchronize(device)

or, with your own ``benchmark`` call, ``from benchmarks.conftest import synchronize``.

``pytest benchmarks`` also gets defaults of its own (``pytest_configure`` below; ``pytest spec``
never loads this file): every run is saved under the repository's ``.benchmarks/``, so
``pytest benchmarks --benchmark-compare`` compares with the previous run by itself, and tables
show ``min``, ``median`` and ``ops`` sorted by name so that they fit a terminal. Any of these
given on the command line wins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

STORAGE = Path(__file__).resolve().parent.parent / ".benchmarks"
COLUMNS = ["min", "median", "ops"]


def pytest_configure(config: pytest.Config) -> None:
    """Save every run and print narrow tables, unless the command line says otherwise.

    pytest-benchmark reads its options in its own ``pytest_configure``, which runs last.
    """
    option = config.option
    if not hasattr(option, "benchmark_autosave"):
        return  # run with -p no:benchmark
    given = {arg.split("=", 1)[0] for arg in config.invocation_params.args
             if isinstance(arg, str) and arg.startswith("--benchmark-")}
    saving = {"--benchmark-save", "--benchmark-autosave", "--benchmark-disable",
              "--benchmark-skip"}
    if not given & saving:
        from pytest_benchmark.utils import get_tag

        option.benchmark_autosave = get_tag()  # what --benchmark-autosave stores: commit_time
    if "--benchmark-storage" not in given:
        option.benchmark_storage = STORAGE.as_uri()
    if "--benchmark-columns" not in given:
        option.benchmark_columns = COLUMNS
    if "--benchmark-sort" not in given:
        option.benchmark_sort = "name"


def benchmark_devices() -> list[str]:
    """cpu always, then cuda and mps when this machine has them."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def synchronize(device: torch.device | str) -> None:
    """Block until every kernel queued on ``device`` has finished (a no-op on the CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def synced(fn: Callable[..., Any], device: torch.device | str) -> Callable[..., Any]:
    """``fn`` followed by ``synchronize(device)``, returning ``fn``'s result."""

    def call(*args: Any, **kwargs: Any) -> Any:
        result = fn(*args, **kwargs)
        synchronize(device)
        return result

    return call


@pytest.fixture(params=benchmark_devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    """Each benchmark that asks for ``device`` runs once per available device."""
    return torch.device(request.param)


@pytest.fixture
def run_synced(benchmark: Any, device: torch.device) -> Callable[..., Any]:
    """Time ``fn(*args, **kwargs)`` on ``device``, synchronised inside the timed call.

    ``rounds=None`` lets pytest-benchmark calibrate (fine for fast calls); give ``rounds`` (and
    optionally ``warmup_rounds``, default 1) for slow calls, which then run exactly that often.
    ``setup`` (optional) runs untimed before each round, e.g. to reset gradients.
    The device name is stored in the run's ``extra_info``.
    """

    def run(fn: Callable[..., Any], *args: Any, rounds: int | None = None,
            warmup_rounds: int = 1, setup: Callable[[], None] | None = None,
            **kwargs: Any) -> Any:
        benchmark.extra_info["device"] = str(device)
        timed = synced(fn, device)
        if rounds is None and setup is None:
            return benchmark(timed, *args, **kwargs)

        def before() -> None:
            if setup is not None:
                setup()
            synchronize(device)

        return benchmark.pedantic(
            timed, args=args, kwargs=kwargs, setup=before, rounds=rounds or 5,
            warmup_rounds=warmup_rounds, iterations=1,
        )

    return run
