"""A stand-in model server for the tests of substrate.kserve (stdlib only, starts in a blink).

    python -m substrate.stub_predictor        # listens on 127.0.0.1:$PORT

It speaks just enough of KServe's Open Inference Protocol for the harness:

    GET  /v2/health/ready, /v2/health/live   200 (ready after $STUB_READY_DELAY seconds)
    GET  /metrics                           Prometheus text: stub_requests_total{version=...}
    POST <any path>                         200 JSON: {"version": $VERSION, "revision": $K_REVISION,
                                            "service": $K_SERVICE, "pod": $HOSTNAME, "path": ...,
                                            "env": {each name in $STUB_ECHO_ENV: its value},
                                            "file": content of $STUB_READ_FILE, "request": body}

With $STUB_FAIL set it prints that text to stderr and exits with $STUB_EXIT_CODE (default 3) before
listening: a model that fails to load. SIGTERM lets requests in flight finish, then exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_count = 0
_count_lock = threading.Lock()
_ready_at = 0.0


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits for requests in flight
    block_on_close = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: the log is for failures
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path in ("/v2/health/ready", "/v2/health/live"):
            ready = self.path.endswith("live") or time.monotonic() >= _ready_at
            self._send(200 if ready else 503, json.dumps({"ready" if "ready" in self.path else "live": ready}).encode())
        elif self.path == "/metrics":
            version = os.environ.get("VERSION", "")
            text = ("# HELP stub_requests_total Inference requests served.\n# TYPE stub_requests_total counter\n"
                    f'stub_requests_total{{version="{version}"}} {_count}\n')
            self._send(200, text.encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self) -> None:
        global _count
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            request = json.loads(raw) if raw else None
        except ValueError:
            request = raw.decode(errors="replace")
        with _count_lock:
            _count += 1
        content = None
        if os.environ.get("STUB_READ_FILE"):
            try:
                with open(os.environ["STUB_READ_FILE"]) as f:
                    content = f.read()
            except OSError as exc:
                content = f"error: {exc}"
        echo = {n: os.environ.get(n) for n in os.environ.get("STUB_ECHO_ENV", "").split(",") if n}
        body = {
            "version": os.environ.get("VERSION", ""), "revision": os.environ.get("K_REVISION"),
            "service": os.environ.get("K_SERVICE"), "pod": os.environ.get("HOSTNAME"), "path": self.path,
            "env": echo, "file": content, "request": request,
        }
        self._send(200, json.dumps(body).encode())


def main() -> int:
    global _ready_at
    if os.environ.get("STUB_FAIL"):
        print("loading model ...", flush=True)
        print(f"error: {os.environ['STUB_FAIL']}", file=sys.stderr, flush=True)
        return int(os.environ.get("STUB_EXIT_CODE", "3"))
    _ready_at = time.monotonic() + float(os.environ.get("STUB_READY_DELAY", "0"))
    server = Server(("127.0.0.1", int(os.environ["PORT"])), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"stub predictor {os.environ.get('VERSION', '')} listening on {server.server_address[1]}", flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
