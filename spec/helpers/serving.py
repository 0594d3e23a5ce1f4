"""Helpers of the serving spec: a tiny model with a learned tokenizer, saved as a run directory,
and a server on a free port of 127.0.0.1 (in a thread of the test, or a `gpt-components serve`
child process), stopped by the test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch

from gpt_components.bpe import BPETokenizer
from gpt_components.machinery import rundir
from gpt_components.machinery.checkpoint import save_checkpoint
from gpt_components.machinery.resources import load_text
from gpt_components.machinery.sources import save_tokenizer
from gpt_components.model import GPTConfig, GPTModel

CONTEXT = 256  # room for chapter 7's preamble (~130 tokens of this tokenizer) and an answer


@cache
def tiny_tokenizer() -> BPETokenizer:
    """A 300-id BPE learned on the first 3,000 characters of the bundled story."""
    return BPETokenizer.train(load_text("the-verdict.txt")[:3000], vocab_size=300)


def tiny_model(seed: int = 0, context_length: int = CONTEXT) -> GPTModel:
    """A random gpt-nano over the tiny tokenizer, in eval mode (weights from ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cfg = GPTConfig.from_name("gpt-nano", vocab_size=tiny_tokenizer().n_vocab,
                                  context_length=context_length, drop_rate=0.0)
        return GPTModel(cfg).eval()


def write_run(run: Path, seed: int = 0) -> Path:
    """``tiny_model(seed)`` saved as a run directory (config, tokenizer, one checkpoint)."""
    model = tiny_model(seed)
    run.mkdir(parents=True)
    save_tokenizer(tiny_tokenizer(), run / rundir.TOKENIZER_DIR)
    rundir.write_config(run, model.cfg, {}, corpus="", tokenizer=rundir.TOKENIZER_DIR,
                        corpus_tokens=None)
    save_checkpoint(run, model=model, state={}, meta={"step": 1})
    return run


class ThreadServer:
    """``with ThreadServer(app) as url:`` uvicorn serving ``app`` in a thread, on a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="on",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not (self.server.started and self.server.servers):
            assert time.monotonic() < deadline and self.thread.is_alive(), "no server started"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *_: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


class ChildServer:
    """``with ChildServer(source, *flags) as url:`` a ``gpt-components serve`` process on a free
    port; ``stop(sig)`` ends it and returns (exit status, stdout, stderr)."""

    def __init__(self, source: Path, *flags: str, env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "gpt_components.cli", "serve", str(source),
                     "--port", "0", "--engine", "sequential", *flags]
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.result: tuple[int, str, str] | None = None

    def __enter__(self) -> str:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.first_line = self.process.stdout.readline()
        found = re.search(r"http://\S+:(\d+) ", self.first_line)
        if not found:
            self.process.kill()
            _, err = self.process.communicate(timeout=30)
            raise AssertionError(f"serve did not start: {self.first_line!r} {err!r}")
        return f"http://127.0.0.1:{found.group(1)}"

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str, str]:
        if self.result is None:
            self.process.send_signal(sig)
            out, err = self.process.communicate(timeout=60)
            self.result = (self.process.returncode, self.first_line + out, err)
        return self.result

    def __exit__(self, *_: Any) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=30)


class GatedEngine:
    """An engine whose steps wait for ``gate`` and then ``delay`` seconds, and which records
    the requests aborted."""

    def __init__(self, engine, delay: float = 0.0) -> None:
        self.engine, self.delay, self.aborted = engine, delay, []
        self.gate = threading.Event()
        self.gate.set()

    def add_request(self, *args):
        self.engine.add_request(*args)

    def has_unfinished(self):
        return self.engine.has_unfinished()

    def step(self):
        self.gate.wait(timeout=60)
        time.sleep(self.delay)
        return self.engine.step()

    def abort(self, request_id):
        self.aborted.append(request_id)
        self.engine.abort(request_id)


def until(condition, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds (a failed assertion after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
