"""The engine loop: one thread owns the engine, and everything else talks to it through queues.

An engine (``Engine``, ``SequentialEngine``) is a plain object with four methods and no lock:
``add_request``, ``step``, ``abort``, ``has_unfinished``. A server has many requests arriving at
once on an event loop, and a forward pass must never block that loop. ``EngineLoop`` puts the
engine on a thread of its own: requests and aborts are queued commands, applied between steps;
the thread calls ``step()`` while anything is unfinished and sleeps on an event otherwise; each
``RequestOutput`` goes to the callback its request was submitted with (the server's puts it on an
asyncio queue with ``call_soon_threadsafe``). ``max_requests`` bounds the requests held at once,
waiting or running: ``submit`` refuses one more (the server's 429).

``make_engine(name, model, tokenizer)`` builds the engine ``serve --engine`` names.

>>> from gpt_components.model import GPTConfig, GPTModel
>>> from gpt_components.serving import SamplingParams
>>> import queue
>>> loop = EngineLoop(make_engine("sequential", GPTModel(GPTConfig.from_name(
...     "gpt-nano", vocab_size=50)), None))
>>> got = queue.SimpleQueue()
>>> loop.start()
>>> loop.submit("a", [1, 2], SamplingParams(temperature=0, max_tokens=2), got.put)
True
>>> [got.get(timeout=30).finished for _ in range(2)], loop.held
([False, True], 0)
>>> loop.stop()
"""

from __future__ import annotations

import contextlib
import importlib.util
import queue
import threading
from collections.abc import Callable
from typing import Any

from torch import nn

from ..machinery.checks import check_choice, check_int, value_error
from .requests import SamplingParams
from .sequential import SequentialEngine

__all__ = ["EngineLoop", "make_engine", "ENGINES", "DEFAULT_ENGINE"]

ENGINES = ("batched", "sequential")
# The batched engine once its module exists in this checkout; until then the sequential one.
DEFAULT_ENGINE = ("batched" if importlib.util.find_spec(f"{__package__}.engine") is not None
                  else "sequential")

def make_engine(name: str, model: nn.Module, tokenizer: Any) -> Any:
    """The engine called ``name`` (``"batched"`` or ``"sequential"``) serving ``model``."""
    check_choice("engine", name, ENGINES)
    if name == "sequential":
        return SequentialEngine(model, tokenizer=tokenizer)
    try:
        from .engine import Engine
    except ImportError:
        raise value_error("engine", "engine 'batched' is not in this checkout yet: use "
                                    "'sequential'") from None
    return Engine(model, tokenizer=tokenizer)


class EngineLoop:
    """One thread drives the engine: requests in, ``step()`` while any is unfinished, outputs
    out to each request's ``deliver`` callback (an exception if the engine failed).

    ``max_requests`` bounds the requests held at once (waiting or running); ``submit`` refuses
    one more with ``False``.
    """

    def __init__(self, engine: Any, max_requests: int = 64) -> None:
        self.engine = engine
        self.max_requests = check_int("max_requests", max_requests, low=1)
        self._commands: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._deliver: dict[str, Callable[[Any], None]] = {}  # the loop thread's alone
        self._held = 0  # requests submitted and not yet finished or aborted
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    @property
    def held(self) -> int:
        return self._held

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def submit(self, request_id: str, prompt: list[int], params: SamplingParams,
               deliver: Callable[[Any], None]) -> bool:
        """Queue a request, unless ``max_requests`` are held already (then ``False``)."""
        with self._lock:
            if self._held >= self.max_requests:
                return False
            self._held += 1
        self._commands.put(("add", request_id, prompt, params, deliver))
        self._wake.set()
        return True

    def abort(self, request_id: str) -> None:
        """Cancel a request: the engine frees it, and nothing more is delivered for it."""
        self._commands.put(("abort", request_id))
        self._wake.set()

    def _release(self, request_id: str) -> None:
        if self._deliver.pop(request_id, None) is not None:
            with self._lock:
                self._held -= 1

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, prompt, params, deliver = command
                self._deliver[request_id] = deliver
                try:
                    self.engine.add_request(request_id, prompt, params)
                except Exception as error:  # noqa: BLE001 - the request's, not the loop's
                    self._release(request_id)
                    deliver(error)
            elif command[1] in self._deliver:
                self.engine.abort(command[1])
                self._release(command[1])

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._apply_commands()
            if not self.engine.has_unfinished():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # noqa: BLE001 - every request held hears of it
                for request_id, deliver in list(self._deliver.items()):
                    with contextlib.suppress(Exception):
                        self.engine.abort(request_id)
                    self._release(request_id)
                    deliver(error)
                continue
            for output in outputs:
                deliver = self._deliver.get(output.request_id)
                if deliver is None:
                    continue  # aborted meanwhile
                if output.finished:
                    self._release(output.request_id)
                deliver(output)
