"""RFAPIModelConfig's client: an OpenAI-compatible /chat/completions call with retries (against
a stub server on 127.0.0.1 that the test starts and stops) and a sliding-window rate limiter."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from actors.engine.evals.api_client import ApiClient, ApiError, RateLimiter


class _Stub(BaseHTTPRequestHandler):
    script: list[int] = []
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body,
                                "auth": self.headers.get("Authorization")})  # fmt: skip
        status = type(self).script.pop(0) if type(self).script else 200
        if status == 200:
            text = "echo: " + body["messages"][-1]["content"]
            payload = {"choices": [{"message": {"role": "assistant", "content": text}}]}
        else:
            payload = {"error": {"message": f"stub says {status}"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    _Stub.script, _Stub.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_completion_goes_to_chat_completions_with_the_model_and_key(stub: str) -> None:
    client = ApiClient(stub, "stub-model", api_key="sk-test", timeout=5, max_retries=0)
    assert client.complete([{"role": "user", "content": "hi"}], temperature=0) == "echo: hi"
    (req,) = _Stub.seen
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "stub-model"
    assert req["body"]["temperature"] == 0
    assert req["auth"] == "Bearer sk-test"


def test_rate_limited_and_server_errors_are_retried(stub: str) -> None:
    _Stub.script = [429, 503]
    client = ApiClient(stub, "m", timeout=5, max_retries=3, backoff_s=0.01)
    assert client.complete("again") == "echo: again"
    assert client.retries == 2
    assert len(_Stub.seen) == 3


def test_a_client_error_is_not_retried_and_retries_are_bounded(stub: str) -> None:
    _Stub.script = [400]
    client = ApiClient(stub, "m", timeout=5, max_retries=3, backoff_s=0.01)
    with pytest.raises(ApiError, match="HTTP 400"):
        client.complete("x")
    assert len(_Stub.seen) == 1
    _Stub.script = [500, 500, 500]
    with pytest.raises(ApiError, match="gave up after 3 tries"):
        ApiClient(stub, "m", timeout=5, max_retries=2, backoff_s=0.01).complete("x")


def test_rate_limiter_waits_for_the_window() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(rpm=2, tpm=100, clock=lambda: now[0], sleep=sleep)
    limiter.acquire(10)
    limiter.acquire(10)
    assert slept == []
    limiter.acquire(10)  # third request in a minute: waits for the first to leave the window
    assert slept == [pytest.approx(60.0)]
    now[0] += 1
    limiter.acquire(95)  # tokens: 10 (t=60) + 95 > 100 -> waits for the t=60 request to expire
    assert slept[-1] == pytest.approx(59.0)
