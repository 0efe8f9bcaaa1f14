"""A stub OpenAI-compatible ``/chat/completions`` endpoint on 127.0.0.1, for the evals tests
that run RFAPIModelConfig pipelines (test_evals_api, test_evals_steering).

It answers ``"42"`` (or, with ``echo``, ``"echo: "`` and the last message). It can hold every
request until ``release`` is set (``arrived`` tells that one is waiting; the hold is bounded by
``hold_s``), and answer its first requests with scripted failures (429 with ``Retry-After: 0``,
5xx).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Endpoint:
    url: str = ""
    hold: bool = False
    hold_s: float = 240.0
    echo: bool = False
    failures: list[int] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)
    """Every answered request: its path, body, Authorization header and status."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        self.arrived.set()
        if self.hold:
            self.release.wait(self.hold_s)
        with self.lock:
            status = self.failures.pop(0) if self.failures else 200
            self.seen.append({"path": handler.path, "body": body, "status": status,
                              "auth": handler.headers.get("Authorization"),
                              "at": time.monotonic()})  # fmt: skip
        text = "echo: " + body["messages"][-1]["content"] if self.echo else "42"
        payload = (
            {"choices": [{"message": {"role": "assistant", "content": text}}]}
            if status == 200 else {"error": {"message": f"stub says {status}"}}
        )  # fmt: skip
        data = json.dumps(payload).encode()
        handler.send_response(status)
        if status == 429:
            handler.send_header("Retry-After", "0")
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


@contextmanager
def endpoint(
    hold: bool = False, failures: list[int] | None = None, echo: bool = False
) -> Iterator[Endpoint]:
    """A running stub (see module docstring); stopped, and every held request let go, after."""
    state = Endpoint(hold=hold, failures=list(failures or ()), echo=echo)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
