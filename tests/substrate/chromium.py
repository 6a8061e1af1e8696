"""Headless Chromium (Debian's `chromium`, installed by `.ci/setup`) driven over the DevTools
protocol on a pipe (`--remote-debugging-pipe`: the browser reads commands on fd 3 and writes on
fd 4, one JSON message per NUL-terminated frame), so a test can open a page, read every console
message and evaluate expressions in it. Standard library only: no port, no websocket.

    with Chromium(tmp_path) as browser:
        page = browser.open(path, {"charts": "document.querySelectorAll('svg.chart').length"})
        assert not page.errors and page.values["charts"] == 3
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--remote-debugging-pipe", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--mute-audio", "--disable-dev-shm-usage"]
# Puts the two pipe ends on fd 3 and 4 and becomes the browser (argv: read-fd write-fd program args).
TRAMPOLINE = ("import os, sys; r, w = int(sys.argv[1]), int(sys.argv[2]); os.dup2(r, 100); os.dup2(w, 101); "
              "[os.close(f) for f in {r, w} - {3, 4}]; os.dup2(100, 3); os.dup2(101, 4); os.close(100); os.close(101); "
              "os.execv(sys.argv[3], sys.argv[3:])")


def chromium_binary() -> str:
    """`$TUNERAG_CHROMIUM`, else chromium on PATH."""
    found = os.environ.get("TUNERAG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise FileNotFoundError("chromium not found; run .ci/setup (apt-get install chromium)")
    return found


@dataclass
class Page:
    url: str
    console: list[dict[str, str]] = field(default_factory=list)  # {"level", "source", "text"}
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[dict[str, str]]:
        """Console errors and warnings: uncaught exceptions, console.error, refused or failed loads,
        policy violations."""
        return [m for m in self.console if m["level"] in ("error", "warning")]


class Chromium:
    def __init__(self, workdir: Path, timeout: float = 60.0) -> None:
        self.workdir = workdir
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._next_id = 0
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Chromium:
        self.workdir.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        cmd = [sys.executable, "-c", TRAMPOLINE, str(to_browser_r), str(from_browser_w), chromium_binary(), *FLAGS,
               f"--user-data-dir={self.workdir / 'profile'}", "about:blank"]
        with (self.workdir / "chromium.log").open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(to_browser_r, from_browser_w), start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        threading.Thread(target=self._read, daemon=True).start()
        self.call("Browser.getVersion")
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError, TimeoutError, RuntimeError):  # it may be gone already
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._to_browser)

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buf += chunk
            *frames, buf = buf.split(b"\0")
            for frame in frames:
                self._messages.put(json.loads(frame))
        self._messages.put(None)
        os.close(self._from_browser)

    def log_tail(self) -> str:
        path = self.workdir / "chromium.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Sends one command and returns its result; events that arrive meanwhile are kept in `events`."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._receive(deadline, f"{method} to answer")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result") or {}
            self.events.append(reply)

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise TimeoutError(f"chromium: no reply waiting for {what}:\n{self.log_tail()}") from None
        if message is None:
            raise RuntimeError(f"chromium exited (waiting for {what}):\n{self.log_tail()}")
        return message

    def wait_event(self, method: str, session: str, timeout: float | None = None) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            event = self._receive(deadline, method)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def open(self, path: Path | str, expressions: dict[str, str] | None = None, settle: float = 0.5) -> Page:
        """Loads the page in a new tab, waits for its load event (and `settle` seconds for late
        messages), evaluates `expressions` (by value) and closes the tab."""
        url = path if isinstance(path, str) else path.resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=session)
        first = len(self.events)
        navigated = self.call("Page.navigate", {"url": url}, session=session)
        if navigated.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {navigated['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        time.sleep(settle)
        page = Page(url)
        for name, expression in (expressions or {}).items():
            result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"{name}: {expression} threw {result['exceptionDetails']}")
            page.values[name] = result["result"].get("value")
        self.call("Target.closeTarget", {"targetId": target})
        page.console = [m for e in self.events[first:] if e.get("sessionId") == session and (m := _console(e))]
        return page


def _console(event: dict[str, Any]) -> dict[str, str] | None:
    p = event.get("params") or {}
    match event.get("method"):
        case "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args") or [])
            return {"level": {"assert": "error", "warn": "warning"}.get(p.get("type", ""), p.get("type", "")),
                    "source": "console-api", "text": text}
        case "Runtime.exceptionThrown":
            details = p.get("exceptionDetails") or {}
            return {"level": "error", "source": "exception",
                    "text": (details.get("exception") or {}).get("description") or details.get("text", "")}
        case "Log.entryAdded":
            entry = p.get("entry") or {}
            return {"level": entry.get("level", ""), "source": entry.get("source", ""), "text": entry.get("text", "")}
    return None


# Every chart of a page (svg.chart, from tunerag_operator.report.svg) as the browser laid it out:
# title, size, bounds, and per series the declared point count, the drawn vertices and line length,
# and each marker's data with whether it lies inside its chart.
CHARTS_JS = """[...document.querySelectorAll('svg.chart')].map(svg => {
  const box = svg.getBoundingClientRect();
  const inside = el => { const r = el.getBoundingClientRect();
    return r.width > 0 && r.left >= box.left - 0.5 && r.right <= box.right + 0.5
      && r.top >= box.top - 0.5 && r.bottom <= box.bottom + 0.5; };
  return {
    title: svg.querySelector('title').textContent, width: box.width, height: box.height,
    bounds: [...svg.querySelectorAll('g.bound')].map(b => [b.dataset.side, Number(b.dataset.value)]),
    series: [...svg.querySelectorAll('g.series')].map(g => ({
      name: g.dataset.series, count: Number(g.dataset.count),
      vertices: [...g.querySelectorAll('polyline')].reduce((n, p) => n + p.points.numberOfItems, 0),
      length: [...g.querySelectorAll('polyline')].reduce((n, p) => n + p.getTotalLength(), 0),
      markers: [...g.querySelectorAll('circle, rect')].map(m => ({
        x: m.dataset.x, y: Number(m.dataset.y), tone: m.dataset.tone || null, inside: inside(m),
        tip: (m.querySelector('title') || {}).textContent || ''})),
    })),
  };
})"""
