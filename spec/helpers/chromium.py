"""A headless Chromium driven over the Chrome DevTools Protocol, for the report's browser test.

Nothing is downloaded: the browser is the system's (Debian's ``chromium`` package, or the one
named by ``$CHROMIUM``), started with every background fetch switched off, and spoken to over
its DevTools websocket with ``websocket-client``. One page, one socket, synchronous commands.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import websocket

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--no-first-run",
    "--no-default-browser-check", "--mute-audio", "--remote-debugging-port=0",
)


def find_chromium() -> str | None:
    """The browser to use: ``$CHROMIUM``, else the first of Debian's and Google's names."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


class Chromium:
    """``with Chromium(binary) as page:`` a blank page; ``page.call(method, **params)``."""

    def __init__(self, binary: str, width: int = 1280, height: int = 900) -> None:
        self.binary, self.size = binary, (width, height)
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def __enter__(self) -> Chromium:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self._process = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self._profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            self._socket = websocket.create_connection(self._browser_url(), timeout=30,
                                                       suppress_origin=True)
            target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._send("Target.attachToTarget",
                                       {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.size[0],
                      height=self.size[1], deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_: Any) -> None:
        """Close the browser and every process it started, then remove its profile.

        Chromium runs renderer, GPU and utility processes of its own, which keep writing to the
        profile for a moment after the main process dies: ask it to close, then kill its whole
        process group, and only then remove the directory.
        """
        if getattr(self, "_socket", None) is not None:
            try:
                self._send("Browser.close", {})
            except Exception:  # noqa: BLE001 - already gone or not answering: killed below
                pass
            self._socket.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._process.wait(timeout=30)
        self._remove_profile()

    def _remove_profile(self) -> None:
        """Remove the profile, retrying while a dying helper process still writes to it."""
        deadline = time.monotonic() + 10
        while True:
            try:
                shutil.rmtree(self._profile)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _browser_url(self) -> str:
        """Chromium prints its DevTools address on stderr once it listens."""
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            line = self._process.stderr.readline()
            if not line and self._process.poll() is not None:
                break
            seen.append(line)
            if found := re.search(r"DevTools listening on (ws://\S+)", line):
                return found.group(1)
        raise RuntimeError(f"{self.binary} gave no DevTools address: {''.join(seen)[-2000:]}")

    def _send(self, method: str, params: dict[str, Any], session: str | None = None) -> Any:
        self._next_id += 1
        self._socket.settimeout(30)
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._socket.send(json.dumps(message))
        while True:
            reply = json.loads(self._socket.recv())
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def call(self, method: str, **params: Any) -> Any:
        """Send one command to the page and return its result (events are kept in ``events``)."""
        return self._send(method, params, self._session)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        """The first event named ``method`` (already received or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self._socket.settimeout(max(0.1, deadline - time.monotonic()))
            self.events.append(json.loads(self._socket.recv()))

    def open(self, path: Path) -> None:
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at page coordinates (x, y) of the viewport."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def screenshot(self, full_page: bool = False) -> bytes:
        result = self.call("Page.captureScreenshot", format="png",
                           captureBeyondViewport=full_page)
        return base64.b64decode(result["data"])

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(str(params["exceptionDetails"].get("exception", params)))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                  "assert"):
                found.append(" ".join(str(a.get("value", a)) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(params["entry"].get("text", ""))
        return found

    def requested_urls(self) -> list[str]:
        return [event["params"]["request"]["url"] for event in self.events
                if event.get("method") == "Network.requestWillBeSent"]
