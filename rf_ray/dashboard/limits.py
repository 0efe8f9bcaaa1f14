"""How much of a request the dashboard reads, and how much of an error it sends back.

- **Bodies**: at most ``MAX_BODY`` bytes. A declared ``Content-Length`` above it is refused (413)
  before any of the body is read (``BodyLimit``, for every request); a body sent without one
  (chunked) is read in pieces and refused as soon as it passes the cap (``read_json``).
- **Integers** in the path or the query: 0 to ``MAX_INT`` (SQLite's 64-bit integers); past it,
  400 rather than an ``OverflowError`` from the store (or a ``ValueError`` from ``int`` past
  Python's 4300 digits: the routes take run ids as text, ``app.py``, and ``int_param`` reads
  them). JSON nested deeper than Python's recursion limit is 400 too.
- **Echoed text**: an error message is cut to ``MAX_MESSAGE`` characters (its beginning, which
  names the field, and its end, which says what to do), so a request cannot make the server
  send back what it sent in.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from policies.errors import ConfigError

MAX_BODY = 1 << 20
"""Bytes of one request body (1 MiB: a clone's changes are a few hundred bytes)."""
MAX_INT = (1 << 63) - 1
"""The largest run id, step or row cursor the store can hold."""
MAX_MESSAGE = 2000
"""Characters of one error message sent back."""


class BodyTooLargeError(ConfigError):
    """A request body past ``MAX_BODY`` (answered 413)."""


def _too_large(size: int | None = None) -> str:
    given = f" ({size} bytes)" if size is not None else ""
    return f"request body too large{given}: the dashboard takes at most {MAX_BODY} bytes"


class BodyLimit:
    """Refuses (413) any HTTP request whose ``Content-Length`` is above ``MAX_BODY`` or not a
    number, before the app (or anything) reads its body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope.get("headers", ())).get(b"content-length")
            if declared is not None:
                size = int(declared) if declared.isdigit() else None
                if size is None or size > MAX_BODY:
                    status = 413 if size is not None else 400
                    message = _too_large(size) if size is not None else "bad Content-Length"
                    await error(message, status)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def read_json(request: Request) -> Any:
    """The request's JSON body, read in pieces: ``BodyTooLargeError`` once past ``MAX_BODY``,
    ``ConfigError`` when it is not JSON."""
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_BODY:
            raise BodyTooLargeError(_too_large())
    try:
        return json.loads(body)
    except ValueError:
        raise ConfigError("the body is not JSON") from None
    except RecursionError:
        raise ConfigError("the body's JSON is nested too deep") from None


def int_param(text: str | int, name: str) -> int:
    """``text`` as an int in 0..``MAX_INT``, or ``ConfigError`` naming ``name``."""
    shown = clip(str(text), 40)
    digits = str(text).strip()
    if digits.isdecimal():  # Python's int() refuses past 4300 digits, leading zeros included
        digits = digits.lstrip("0") or "0"
        if len(digits) > len(str(MAX_INT)):
            raise ConfigError(f"{name} must be in 0..{MAX_INT}, got {shown}")
    try:
        value = int(digits)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {shown!r}") from None
    if not 0 <= value <= MAX_INT:
        raise ConfigError(f"{name} must be in 0..{MAX_INT}, got {shown}")
    return value


def float_param(text: str, name: str) -> float:
    """``text`` as a finite float, or ``ConfigError`` naming ``name``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {clip(text, 40)!r}")
    return value


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to about ``limit`` characters: its start and end, the middle left out."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2 - 20, 1)
    return f"{text[:keep]} ... ({len(text) - 2 * keep} characters cut) ... {text[-keep:]}"


def error(message: str, status: int) -> JSONResponse:
    """The dashboard's error answer, ``{"error": message}``, its message clipped."""
    return JSONResponse({"error": clip(message)}, status)
