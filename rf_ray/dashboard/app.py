"""The dashboard's web app (Starlette, which MLflow already brings in): one page and a small
JSON API.

    GET  /                                               the page (static/index.html)
    GET  /static/...                                     its script and style sheet
    GET  /api/experiments                                experiments under the root
    GET  /api/experiments/{name}?runs_after=&steps_after=&chunks_after=
                                                         what changed since the cursor
    GET  /api/experiments/{name}/runs/{id}/params        a run's knobs (the clone form)
    POST /api/experiments/{name}/runs/{id}/{op}          op: stop, resume, delete, prune
    POST /api/experiments/{name}/runs/{id}/clone         {"changes": {knob: text}, "warm_start"}

Errors are ``{"error": message}`` (cut to ``limits.MAX_MESSAGE`` characters): 400 bad input
(``ConfigError``, a number out of range), 413 a body over 1 MiB, 409 an op that cannot apply
(``OpError``, or an experiment that is not running, starting, or ended while asked: its page is
read-only), 403 a request without the page's CSRF token, 404 an unknown experiment or run, 504
no answer in time, 500 a bug (its message, and the traceback in the server's log).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.errors import ConfigError, DamagedFileError, OpError, UntrustedDirectoryError
from rf_ray.dashboard import reads
from rf_ray.dashboard.guard import Guard, GuardMiddleware, session_of, set_session
from rf_ray.dashboard.limits import (
    BodyLimit,
    BodyTooLargeError,
    clip,
    error,
    float_param,
    int_param,
    read_json,
)
from rf_ray.dashboard.steer import RUN_OPS, Steering, clone_request
from rf_ray.ops import read_only_params
from rf_ray.remote import NoAnswerError, OpRequest
from rf_ray.steerable import NotSteerableError, check_steerable

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
POLL_MS = 2000
"""How often the page asks for changes (the issue: at most every 2 s)."""


@dataclass
class Settings:
    """What one dashboard server serves, and how."""

    root: reads.Root
    guard: Guard = field(default_factory=Guard)
    mlflow_url: str | None = None
    """Base URL of an MLflow UI (``--mlflow``); runs link to their page there."""
    mlflow_experiment: str | None = None
    """The one experiment that UI serves (its ``mlflow.db``); None: all of them (a server)."""
    steering: Steering = field(default_factory=Steering)
    poll_ms: int = POLL_MS


def create_app(settings: Settings) -> Starlette:
    """The ASGI app serving ``settings.root``."""
    api = _Api(settings)
    routes = [
        Route("/", api.page),
        Route("/api/experiments", api.experiments),
        Route("/api/experiments/{name}", api.state),
        Route("/api/experiments/{name}/runs/{run_id}/params", api.params),
        Route("/api/experiments/{name}/runs/{run_id}/clone", api.clone, methods=["POST"]),
        Route("/api/experiments/{name}/runs/{run_id}/{op}", api.op, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        settings.steering.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_REFUSED)
    app.add_middleware(GuardMiddleware, guard=settings.guard)
    app.add_middleware(BodyLimit)  # outermost: a body too large is refused before anything
    return app


class _Api:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self._mlflow_ids: dict[str, str | None] = {}

    async def page(self, request: Request) -> Response:
        session, new = session_of(request)
        config = {
            "csrf": self.s.guard.csrf_token(session),
            "pollMs": self.s.poll_ms,
            "mlflowUrl": self.s.mlflow_url,
        }
        text = (STATIC / "index.html").read_text(encoding="utf-8")
        text = text.replace("{{CONFIG}}", html.escape(json.dumps(config), quote=True))
        response = HTMLResponse(text, headers=_PAGE_HEADERS)
        if new:
            set_session(response, session)
        return response

    async def experiments(self, request: Request) -> Response:
        found = await run_in_threadpool(reads.list_experiments, self.s.root)
        return JSONResponse({"root": str(self.s.root.path), "experiments": found})

    async def state(self, request: Request) -> Response:
        exp_dir = self._dir(request)
        if exp_dir is None:
            return _not_found(request)
        query = request.query_params
        try:
            cursor = reads.Cursor(
                runs_after=float_param(query.get("runs_after", "0"), "runs_after"),
                steps_after=int_param(query.get("steps_after", "0"), "steps_after"),
                chunks_after=int_param(query.get("chunks_after", "0"), "chunks_after"),
            )
        except ConfigError as exc:
            return error(f"bad cursor in the query ({exc}); omit it to read everything", 400)
        state = await run_in_threadpool(reads.read_state, exp_dir, cursor)
        state["mlflow"] = await self._mlflow_links(request.path_params["name"], state["runs"])
        return JSONResponse(state)

    async def params(self, request: Request) -> Response:
        exp_dir = self._dir(request)
        if exp_dir is None:
            return _not_found(request)
        try:
            run_id = int_param(request.path_params["run_id"], "the run id")
        except ConfigError as exc:
            return error(str(exc), 400)
        found = await run_in_threadpool(reads.run_params, exp_dir, run_id)
        if found is None:
            return error(f"no run {run_id} in experiment {request.path_params['name']!r}", 404)
        return JSONResponse(
            {"run_id": run_id, "params": reads.finite(found), "read_only": read_only_params()}
        )

    async def op(self, request: Request) -> Response:
        op = request.path_params["op"]
        if op not in RUN_OPS:
            return error(f"unknown op {op!r}; ops are: {', '.join(RUN_OPS)}, clone", 404)

        async def prepare(run_id: int) -> OpRequest:
            return OpRequest(op, run_id)

        return await self._steer(request, prepare)

    async def clone(self, request: Request) -> Response:
        async def prepare(run_id: int) -> OpRequest:
            body = await read_json(request)
            if not isinstance(body, dict) or not isinstance(body.get("changes"), dict):
                raise ConfigError(
                    'the body must be JSON {"changes": {knob: value}, "warm_start": bool}'
                )
            warm = body.get("warm_start", False)
            if not isinstance(warm, bool):
                raise ConfigError(f"warm_start must be true or false, got {clip(repr(warm), 40)}")
            return clone_request(run_id, body["changes"], warm)

        return await self._steer(request, prepare)

    async def _steer(
        self, request: Request, prepare: Callable[[int], Awaitable[OpRequest]]
    ) -> Response:
        """The order of checks of every op: CSRF, the experiment, the run id, the request
        (body), whether the experiment can take ops now (read from its directory), then the op
        itself, from a child process."""
        refused = self.s.guard.check_csrf(request)
        if refused is not None:
            return error(refused, 403)
        exp_dir = self._dir(request)
        if exp_dir is None:
            return _not_found(request)
        try:
            op = await prepare(int_param(request.path_params["run_id"], "the run id"))
            await run_in_threadpool(check_steerable, exp_dir)
            return JSONResponse(await self.s.steering.send(exp_dir, op))
        except (ConfigError, OpError) as exc:
            return _refusal(exc)
        except Exception as exc:  # a bug: say so in the answer, not only in the server's log
            logger.exception("dashboard: %s failed", request.url.path)
            return error(f"internal error ({type(exc).__name__}: {exc}); see the server's log", 500)

    def _dir(self, request: Request) -> Path | None:
        try:
            return self.s.root.dir_of(request.path_params["name"])
        except LookupError:
            return None

    async def _mlflow_links(self, name: str, runs: list[dict[str, Any]]) -> dict[int, str]:
        """Run id -> its page in the MLflow UI, for the experiment that UI serves."""
        only = self.s.mlflow_experiment
        if self.s.mlflow_url is None or (only is not None and name != only):
            return {}
        if name not in self._mlflow_ids:
            self._mlflow_ids[name] = await run_in_threadpool(_mlflow_experiment_id, self.s, name)
        exp_id = self._mlflow_ids[name]
        if exp_id is None:
            return {}
        base = self.s.mlflow_url.rstrip("/")
        return {
            r["run_id"]: f"{base}/#/experiments/{exp_id}/runs/{r['mlflow_run_id']}"
            for r in runs
            if r.get("mlflow_run_id")
        }


def _mlflow_experiment_id(settings: Settings, name: str) -> str | None:
    """The MLflow experiment id of rf-ray experiment ``name`` (MLflow names it the same)."""
    from mlflow.tracking import MlflowClient

    exp_dir = settings.root.dir_of(name)
    with Store(exp_dir, readonly=True) as store:
        meta = store.meta()
    try:
        uri = ExperimentDir(exp_dir).tracking_uri_from(meta["tracking_uri"])
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(meta["name"])
    except Exception as exc:  # an unreachable tracking server only costs the links
        logger.warning("no MLflow links for %s: %s", name, exc)
        return None
    return None if found is None else str(found.experiment_id)


_STATUS = ((BodyTooLargeError, 413), (ConfigError, 400), (NotSteerableError, 409),
           (NoAnswerError, 504), (OpError, 409))  # fmt: skip
"""How each refusal answers (the first class that matches)."""


def _refusal(exc: Exception) -> JSONResponse:
    status = next(code for kind, code in _STATUS if isinstance(exc, kind))
    suffix = "; its page is read-only until it runs" if isinstance(exc, NotSteerableError) else ""
    return error(f"{exc}{suffix}", status)


async def _untrusted(request: Request, exc: Exception) -> Response:
    return error(str(exc), 403)


async def _damaged(request: Request, exc: Exception) -> Response:
    return error(f"this experiment cannot be read: {exc}", 422)


_REFUSED: dict[Any, Any] = {UntrustedDirectoryError: _untrusted, DamagedFileError: _damaged}
"""Experiments the page shows as refused (another user's, or damaged), on any endpoint."""


def _not_found(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    return error(f"no experiment {name!r} under this dashboard's --path", 404)


_PAGE_HEADERS = {
    # Everything the page needs is served from here: no CDN, no inline script, no framing.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
