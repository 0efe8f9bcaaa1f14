"""Who may talk to the dashboard, and which requests may change anything.

Three checks, in this order, for every request:

1. **Host.** Bound to a loopback address (the default), the ``Host`` header must name this
   machine (``127.0.0.1``, ``localhost``, ``[::1]``): a page from another site that re-points
   its own host name at 127.0.0.1 (DNS rebinding) is refused.
2. **Access token** (only when bound elsewhere, which needs ``--allow-remote``): every request
   carries the token printed once at start, as ``Authorization: Bearer <token>`` or as the
   ``rf_ray_access`` cookie that opening ``/?token=<token>`` sets (that visit is redirected to
   ``/`` so the token does not stay in the address bar, and the page never contains it).
3. **CSRF** (state-changing requests only): the ``X-RF-Ray-CSRF`` header must carry the token
   the page was served with. It is an HMAC of the browser's session cookie, so it differs per
   session; a cross-site page can neither read it nor set the header without a CORS preflight
   the server never grants. An ``Origin`` header, when sent, must be this server's own.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

SESSION_COOKIE = "rf_ray_session"
ACCESS_COOKIE = "rf_ray_access"
CSRF_HEADER = "x-rf-ray-csrf"


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost`` included)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Guard:
    """The server's secrets and what it checks; one per server process."""

    access_token: str | None = None
    """Required on every request when set (``--allow-remote``)."""
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    """Signs session cookies into CSRF tokens; never leaves the process."""

    @property
    def loopback_only(self) -> bool:
        return self.access_token is None

    def csrf_token(self, session: str) -> str:
        return hmac.new(self.key, session.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request) -> str | None:
        """Why this state-changing request is refused, or None when it may go on."""
        origin = request.headers.get("origin")
        if origin is not None and origin != _own_origin(request):
            return f"cross-site request refused (Origin {origin[:200]!r} is not this dashboard)"
        session = request.cookies.get(SESSION_COOKIE)
        sent = request.headers.get(CSRF_HEADER)
        if not session or not sent:
            return (
                f"missing {CSRF_HEADER} header or session cookie: reload the dashboard page "
                "and use its buttons"
            )
        if not hmac.compare_digest(sent, self.csrf_token(session)):
            return f"{CSRF_HEADER} does not match this session: reload the dashboard page"
        return None

    def has_access(self, request: Request) -> bool:
        if self.access_token is None:
            return True
        given = bearer_token(request.headers.get("authorization", ""))
        given = given or request.cookies.get(ACCESS_COOKIE) or ""
        return hmac.compare_digest(given.encode(), self.access_token.encode())


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; the scheme is matched without
    regard to case (RFC 7235, section 2.1), so ``bearer`` and ``BEARER`` work too."""
    scheme, _, token = authorization.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _host_name(host_header: str) -> str:
    """``127.0.0.1:8265`` -> ``127.0.0.1``; ``[::1]:8265`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class GuardMiddleware:
    """Applies checks 1 and 2 to every HTTP request (CSRF is checked by the POST handlers)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._refusal(request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        guard = self.guard
        host = _host_name(request.headers.get("host", ""))
        if guard.loopback_only and not is_loopback(host):
            return JSONResponse(
                {"error": f"Host {host[:200]!r} refused: this dashboard serves 127.0.0.1 only"}, 421
            )
        if guard.access_token is None or guard.has_access(request):
            return None
        token = request.query_params.get("token")
        if (
            request.method == "GET"
            and request.url.path == "/"
            and token is not None
            and hmac.compare_digest(token.encode(), guard.access_token.encode())
        ):
            redirect = RedirectResponse("/", status_code=303)
            redirect.set_cookie(ACCESS_COOKIE, token, httponly=True, samesite="strict")
            return redirect
        return JSONResponse(
            {
                "error": "this dashboard needs its access token: open the URL that "
                "`rf-ray dashboard` printed at start (…/?token=…), or send "
                "'Authorization: Bearer <token>'"
            },
            401,
        )


def session_of(request: Request) -> tuple[str, bool]:
    """The browser's session id, and whether it is new (then the page sets the cookie)."""
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        return session, False
    return secrets.token_urlsafe(24), True


def set_session(response: Any, session: str) -> None:
    response.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
