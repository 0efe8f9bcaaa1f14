"""Steering from the page: the same ops path as ``rf-ray ops`` (``rf_ray.ops``), so the same
validation and the same error messages, each request applied once.

Ray calls block, so they run on one worker thread: the server keeps answering reads meanwhile,
and two clicks are applied one after the other, in order of arrival, as the scheduler applies
concurrent ``rf-ray ops`` calls. Every call is bounded by ``timeout_s`` for the page; the
thread itself waits as ``rf_ray.ops`` does (its ``ray.get`` has no bound), so ops sent after one
that hung wait behind it and time out too, each saying so, until the scheduler answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from policies.errors import ConfigError, OpError

logger = logging.getLogger(__name__)
T = TypeVar("T")

RUN_OPS = ("stop", "resume", "delete", "prune")
STEER_TIMEOUT_S = 120.0
"""Bound on one op: attaching to Ray (first call) plus the scheduler's answer."""


class SteerTimeoutError(TimeoutError):
    """The scheduler did not answer an op in time (the op may still be applied)."""


class Steering:
    """Sends ops to running experiments' schedulers; one worker thread, calls in order."""

    def __init__(self, timeout_s: float = STEER_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rf-ray-steer")

    async def op(self, exp_dir: Path, op: str, run_id: int) -> dict[str, Any]:
        """stop/resume/delete/prune ``run_id``; ``OpError``/``ConfigError`` as ``rf-ray ops``."""
        if op not in RUN_OPS:
            raise OpError(f"unknown op {op!r}; the page's ops are: {', '.join(RUN_OPS)}, clone")
        return await self._call(_apply, exp_dir, op, run_id)

    async def clone(
        self, exp_dir: Path, run_id: int, changes: dict[str, str], warm_start: bool
    ) -> dict[str, Any]:
        """Clone ``run_id`` with ``changes`` (knob -> text as typed, parsed like the command
        line's ``knob=value``)."""
        return await self._call(_clone, exp_dir, run_id, changes, warm_start)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise SteerTimeoutError(
                f"the experiment's scheduler did not answer within {self.timeout_s:g} s; the op "
                "may still be applied: check the runs table before trying again"
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _apply(exp_dir: Path, op: str, run_id: int) -> dict[str, Any]:
    from rf_ray import ops

    result: dict[str, Any] = ops.apply(ops.attach(exp_dir), op, run_id)
    logger.info("dashboard: %s run %d of %s -> %s", op, run_id, exp_dir.name, result)
    return result


def _clone(exp_dir: Path, run_id: int, changes: dict[str, str], warm: bool) -> dict[str, Any]:
    from rf_ray import ops
    from rf_ray.cli.ops import parse_changes

    if not isinstance(changes, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in changes.items()
    ):
        raise ConfigError(f"changes must map knob names to the text typed, got {changes!r}")
    parsed = parse_changes([f"{key}={text}" for key, text in changes.items()])
    result: dict[str, Any] = ops.clone_modify(
        ops.attach(exp_dir), exp_dir, run_id, parsed, warm_start=warm
    )
    logger.info("dashboard: clone of run %d of %s -> %s", run_id, exp_dir.name, result)
    return result
