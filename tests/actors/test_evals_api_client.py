"""RFAPIModelConfig's client: an OpenAI-compatible /chat/completions call with retries (against
the evals tests' stub server on 127.0.0.1, ``tests/rf_ray/api_stub.py``) and a sliding-window
rate limiter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors.engine.evals.api_client import ApiClient, ApiError, RateLimiter
from tests.rf_ray.api_stub import Endpoint, endpoint


@pytest.fixture
def stub() -> Iterator[Endpoint]:
    with endpoint(echo=True) as state:
        yield state


def test_completion_goes_to_chat_completions_with_the_model_and_key(stub: Endpoint) -> None:
    client = ApiClient(stub.url, "stub-model", api_key="sk-test", timeout=5, max_retries=0)
    assert client.complete([{"role": "user", "content": "hi"}], temperature=0) == "echo: hi"
    (req,) = stub.seen
    assert req["path"] == "/v1/chat/completions"
    assert req["body"]["model"] == "stub-model"
    assert req["body"]["temperature"] == 0
    assert req["auth"] == "Bearer sk-test"


def test_rate_limited_and_server_errors_are_retried(stub: Endpoint) -> None:
    stub.failures[:] = [429, 503]
    client = ApiClient(stub.url, "m", timeout=5, max_retries=3, backoff_s=0.01)
    assert client.complete("again") == "echo: again"
    assert client.retries == 2
    assert len(stub.seen) == 3


def test_a_client_error_is_not_retried_and_retries_are_bounded(stub: Endpoint) -> None:
    stub.failures[:] = [400]
    client = ApiClient(stub.url, "m", timeout=5, max_retries=3, backoff_s=0.01)
    with pytest.raises(ApiError, match="HTTP 400"):
        client.complete("x")
    assert len(stub.seen) == 1
    stub.failures[:] = [500, 500, 500]
    with pytest.raises(ApiError, match="gave up after 3 tries"):
        ApiClient(stub.url, "m", timeout=5, max_retries=2, backoff_s=0.01).complete("x")


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
