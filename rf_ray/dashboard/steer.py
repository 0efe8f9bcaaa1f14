"""Steering from the page: the same path as ``rf-ray ops`` (``rf_ray.remote``), so the same
validation, the same one-line answers, each request applied once.

The dashboard process never attaches itself to an experiment's Ray cluster (it would die a
minute after that cluster goes: docs/experiments.md): each op runs in a short-lived child process
with a deadline (``remote.send``), from one worker thread, so the server keeps answering reads
meanwhile and two clicks are applied one after the other, in order of arrival, as the scheduler
applies concurrent ``rf-ray ops`` calls.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from policies.errors import ConfigError, OpError
from rf_ray import remote

logger = logging.getLogger(__name__)

RUN_OPS = ("stop", "resume", "delete", "prune")
STEER_TIMEOUT_S = remote.OP_TIMEOUT_S
"""Bound on one op: its child process's start, attaching, and the scheduler's answer."""


class Steering:
    """Sends ops to running experiments' schedulers; one worker thread, calls in order."""

    def __init__(self, timeout_s: float = STEER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rf-ray-steer")

    async def send(self, exp_dir: Path, request: remote.OpRequest) -> dict[str, Any]:
        """Apply ``request`` (``remote.send``), after every op sent before it; ``ConfigError``,
        ``OpError`` or ``remote.NoAnswerError`` as ``rf-ray ops`` raises them."""
        if request.op not in (*RUN_OPS, "clone"):
            raise OpError(f"unknown op {request.op!r}; ops are: {', '.join(RUN_OPS)}, clone")
        loop = asyncio.get_running_loop()
        result: dict[str, Any] = await loop.run_in_executor(
            self._pool, remote.send, exp_dir, request, self.timeout_s
        )
        logger.info("dashboard: %s run %d of %s -> %s", request.op, request.run_id,
                    exp_dir.name, result)  # fmt: skip
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def clone_request(run_id: int, changes: Any, warm_start: bool) -> remote.OpRequest:
    """A clone request from the page's form, checked here (before any process starts): text
    values parsed as the command line parses them, no function field given as text."""
    from rf_ray import ops
    from rf_ray.cli.ops import parse_value

    if not isinstance(changes, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in changes.items()
    ):
        raise ConfigError("changes must map knob names to the text typed, e.g. "
                          '{"learning_rate": "1e-4"}')  # fmt: skip
    parsed = {key: parse_value(text) for key, text in changes.items()}
    ops.check_function_changes(ops.flat_changes(parsed))
    if warm_start:
        ops.check_warm_changes(parsed)
    return remote.OpRequest("clone", run_id, parsed, warm_start)
