"""An OpenAI-compatible ``/chat/completions`` client with rate limits and retries.

``ApiClient.complete(messages)`` sends one chat completion and returns its text;
``complete_many`` sends a batch's prompts concurrently (at most ``MAX_CONCURRENT`` in flight)
and returns the texts in order with what the batch cost in retries and waiting. Before each
request it waits for the endpoint's budget (``RateLimiter``: requests and tokens per minute over
a sliding 60-second window, shared by every pipeline that calls the same endpoint from this
executor); a 429 or 5xx answer, a timeout or a dropped connection is retried with exponential
backoff (honouring ``Retry-After``), at most ``max_retries`` times; any other error raises at
once with the endpoint's message. Every wait is bounded.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.engine.evals.spec import GeneratorSpec

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
MAX_CONCURRENT = 8
"""Requests of one batch in flight at once (the rate limiter still paces them)."""
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class ApiError(RuntimeError):
    """The endpoint refused a request for good (or kept failing past the retries)."""


def estimate_tokens(messages: list[dict[str, Any]] | str) -> int:
    """A rough count of a request's prompt tokens (4 characters a token), for the budget."""
    text = messages if isinstance(messages, str) else " ".join(
        str(m.get("content", "")) for m in messages
    )  # fmt: skip
    return max(1, len(text) // 4)


class RateLimiter:
    """Requests and tokens per minute over a sliding window; ``acquire`` waits for room."""

    def __init__(
        self,
        rpm: int | None,
        tpm: int | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.clock, self.sleep = clock, sleep
        self._sent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()
        self.waited = 0.0
        """Seconds spent waiting for room, in total (reported with the metrics)."""

    def _room_in(self, tokens: int, now: float) -> float:
        """Seconds until a request of ``tokens`` fits (0: now)."""
        while self._sent and now - self._sent[0][0] >= WINDOW_SECONDS:
            self._sent.popleft()
        waits = [0.0]
        if self.rpm is not None and len(self._sent) >= self.rpm:
            waits.append(self._sent[len(self._sent) - self.rpm][0] + WINDOW_SECONDS - now)
        if self.tpm is not None:
            used = sum(t for _, t in self._sent)
            excess = used + min(tokens, self.tpm) - self.tpm
            for when, spent in self._sent:
                if excess <= 0:
                    break
                waits.append(when + WINDOW_SECONDS - now)
                excess -= spent
        return max(waits)

    def acquire(self, tokens: int) -> float:
        """Wait until a request of ``tokens`` fits, record it; the seconds waited."""
        waited = 0.0
        with self._lock:  # waiters queue here: the first in line takes the next room
            while True:
                now = self.clock()
                wait = self._room_in(tokens, now)
                if wait <= 0:
                    self._sent.append((now, tokens))
                    return waited
                self.waited += wait
                waited += wait
                self.sleep(wait)


@dataclass
class CallStats:
    """What some requests cost beyond their answers."""

    requests: int = 0
    retries: int = 0
    """Requests sent again after a retryable failure."""
    waited: float = 0.0
    """Seconds spent waiting for the rate limiter and before retries."""

    def add(self, other: CallStats) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.waited += other.waited


class ApiClient:
    """One endpoint and model: ``complete(messages) -> str``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 5,
        limiter: RateLimiter | None = None,
        backoff_s: float = 1.0,
    ) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.model = model
        self.max_retries = max_retries
        self.limiter = limiter or RateLimiter(None, None)
        self.backoff_s = backoff_s
        self.retries = 0
        """Requests sent again after a retryable failure, in total."""

    def complete(self, messages: list[dict[str, Any]] | str, **request: Any) -> str:
        """The completion's text for ``messages`` (a string is one user message)."""
        return self._complete(messages, CallStats(), request)

    def complete_many(self, prompts: list[Any], **request: Any) -> tuple[list[str], CallStats]:
        """The completions of ``prompts``, in order, sent concurrently; and what they cost.
        The first error raises (the others still finish: no request is left behind)."""
        stats = [CallStats() for _ in prompts]
        workers = max(1, min(MAX_CONCURRENT, len(prompts)))
        with concurrent.futures.ThreadPoolExecutor(workers, "api") as pool:
            futures = [
                pool.submit(self._complete, p, one, request) for p, one in zip(prompts, stats)
            ]
            concurrent.futures.wait(futures)
        total = CallStats()
        for one in stats:
            total.add(one)
        return [f.result() for f in futures], total

    def _complete(
        self, messages: list[dict[str, Any]] | str, stats: CallStats, request: dict[str, Any]
    ) -> str:
        import httpx

        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        body = {"model": self.model, "messages": messages, **request}
        tokens = estimate_tokens(messages) + int(request.get("max_completion_tokens") or 0)
        stats.requests += 1
        for attempt in range(self.max_retries + 1):
            stats.waited += self.limiter.acquire(tokens)
            try:
                response = self.client.post("/chat/completions", json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                error, wait = f"{type(exc).__name__}: {exc}", None
            else:
                if response.status_code == 200:
                    return _text(response.json())
                error = f"HTTP {response.status_code}: {response.text[:500]}"
                if response.status_code not in RETRY_STATUSES:
                    raise ApiError(f"{self.model} at {self.client.base_url}: {error}")
                wait = _retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                break
            self.retries += 1
            stats.retries += 1
            delay = min(wait if wait is not None else self.backoff_s * 2**attempt, 60.0)
            logger.info("retrying %s in %.1f s after %s", self.model, delay, error)
            stats.waited += delay
            time.sleep(delay)
        raise ApiError(
            f"{self.model} at {self.client.base_url}: gave up after {self.max_retries + 1} "
            f"tries; last: {error}"
        )

    def close(self) -> None:
        self.client.close()


class Endpoints:
    """One ``ApiClient`` per endpoint and model, shared (with its rate limiter) by every
    pipeline that calls it from this executor. API shards run on several threads at once
    (``BaseModelActor``), so a client is made under a lock."""

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], ApiClient] = {}
        self._lock = threading.Lock()

    def client(self, generator: GeneratorSpec) -> ApiClient:
        g = generator
        key = (str(g.client.get("base_url")), g.model_name)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = ApiClient(
                    base_url=key[0], model=g.model_name, api_key=g.client.get("api_key"),
                    timeout=float(g.client.get("timeout", 60.0)),
                    max_retries=int(g.client.get("max_retries", 5)),
                    limiter=RateLimiter(g.rpm_limit, g.tpm_limit),
                )  # fmt: skip
            return self._clients[key]

    def complete(self, generator: GeneratorSpec, prompts: list[Any]) -> tuple[list[str], CallStats]:
        """A pipeline's batch of prompts, completed by its endpoint (``complete_many``)."""
        request = {**generator.request, "max_completion_tokens": generator.max_completion_tokens}
        return self.client(generator).complete_many(list(prompts), **request)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _text(payload: dict[str, Any]) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ApiError(
            f"the endpoint's answer has no choices[0].message.content: {payload!r}"
        ) from exc
    return content or ""


__all__ = [
    "MAX_CONCURRENT",
    "ApiClient",
    "ApiError",
    "CallStats",
    "Endpoints",
    "RateLimiter",
    "estimate_tokens",
]
