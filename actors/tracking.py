"""MLflow tracking: one MLflow experiment per rf-ray experiment, one MLflow run per run.

The default store is SQLite inside the experiment directory (MLflow 3's file store raises);
``MLFLOW_TRACKING_URI`` or an explicit URI points it elsewhere. Trials log through
``MlflowClient`` (no global active-run state, so many runs can be logged from one process).
SQLite allows one writer at a time: writes retry briefly on "database is locked".

An MLflow write error never fails a healthy run. Every ``Tracker`` method used during training
(``start_run``, ``log_metrics``, ``set_tags``, ``reopen``, ``finish``) never raises: a write that
fails is kept, in order, in a bounded in-memory buffer (``MAX_BUFFERED_METRICS`` metrics; past
it the oldest metrics are dropped and counted) and retried on the next call and on ``flush()``.
The first failure of a streak is logged once, with the MLflow error and what is buffered; the
recovery is logged too. A write MLflow rejects for good (a bad value, a run that no longer
exists) is dropped with a warning rather than blocking the writes behind it.

``start_run`` returns ``None`` while MLflow is unreachable; the run is created by a later call.
Pass ``None`` as the MLflow run id meanwhile (it means "the run this tracker is starting") and
read ``Tracker.run_id`` to learn the real id once it exists.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from actors.storage.durable import create_private_file
from actors.storage.layout import ExperimentDir
from policies.redact import redact

logger = logging.getLogger(__name__)
T = TypeVar("T")

_BAD_KEY = re.compile(r"[^\w\-. /:]")

MAX_BUFFERED_METRICS = 50_000
"""Metrics kept in memory while MLflow is unreachable (a few MiB); past it the oldest go."""

_PERMANENT_ERRORS = frozenset(
    {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"}
)
"""MLflow error codes that retrying cannot fix: the write is dropped, not buffered."""


def default_tracking_uri(experiment_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<experiment dir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return ExperimentDir(experiment_dir).embedded_tracking_uri()


def _private_sqlite(tracking_uri: str) -> None:
    """An SQLite tracking store rf-ray is about to make is created 0600 first (MLflow would
    create it with the process's umask): experiment files are private (docs/security.md)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        path = Path(tracking_uri[len(prefix) :])
        if path.parent.is_dir() and not path.exists():
            create_private_file(path)


def _retry(fn: Callable[[], T], attempts: int = 20) -> T:
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MLflow wraps sqlite's OperationalError in its own types
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


class _NoRunError(Exception):
    """A write for "this tracker's run" when the tracker never started one."""


def _permanent(exc: Exception) -> bool:
    return isinstance(exc, _NoRunError) or getattr(exc, "error_code", None) in _PERMANENT_ERRORS


@dataclass
class _Write:
    """One MLflow write not yet made. ``run_id`` None: the run this tracker is starting."""

    kind: str
    """"start", "metrics", "tags", "status" or "terminate"."""
    run_id: str | None
    payload: Any

    def describe(self) -> str:
        return f"{self.kind} of MLflow run {self.run_id or '(not created yet)'}"


class Tracker:
    """A small facade over ``MlflowClient`` for one rf-ray experiment (see module docstring).

    ``client`` is a test seam: an ``MlflowClient``-like object (e.g. one that fails N times).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, client: Any = None) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        _private_sqlite(tracking_uri)
        self.client = client if client is not None else MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        """The MLflow run this tracker's ``start_run`` created (None while pending)."""
        self._pending: collections.deque[_Write] = collections.deque()
        self._buffered_metrics = 0
        self.dropped_metrics = 0
        """Metrics dropped because the buffer was full (MLflow unreachable for long)."""
        self._failing = False
        self.flush()  # resolve the experiment now if MLflow answers; later if not

    # ------------------------------------------------------------------ public writes
    def ensure_experiment(self) -> str:
        """Create or find the MLflow experiment; raises if MLflow cannot be reached (for the
        driver, before any work starts)."""
        if self.experiment_id is None:
            exp = _retry(lambda: self.client.get_experiment_by_name(self.experiment_name))
            if exp is None:
                try:
                    exp_id = _retry(lambda: self.client.create_experiment(self.experiment_name))
                except Exception:  # created concurrently by another trial
                    exp = _retry(lambda: self.client.get_experiment_by_name(self.experiment_name))
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
                self.experiment_id = str(exp_id)
            else:
                self.experiment_id = str(exp.experiment_id)
        return self.experiment_id

    def start_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str | None:
        """Create the run's MLflow run and log its params (secret-looking values masked:
        ``policies.redact``) and tags; its id, or ``None`` while MLflow is unreachable (the run
        is then created by a later call)."""
        self._write(_Write("start", None, (run_name, redact(dict(params)), dict(tags))))
        return self.run_id

    def log_metrics(
        self, mlflow_run_id: str | None, rows: list[tuple[int, dict[str, float]]]
    ) -> None:
        """Log ``(step, {name: value})`` rows; non-finite and non-numeric values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(_key(k), float(v), now, step)
            for step, values in rows
            for k, v in values.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for i in range(0, len(metrics), 500):
            self._write(_Write("metrics", mlflow_run_id, metrics[i : i + 500]))

    def set_tags(self, mlflow_run_id: str | None, tags: dict[str, str]) -> None:
        self._write(_Write("tags", mlflow_run_id, {k: str(v)[:5000] for k, v in tags.items()}))

    def reopen(self, mlflow_run_id: str | None) -> None:
        """Mark a resumed run's MLflow run as running again."""
        self._write(_Write("status", mlflow_run_id, "RUNNING"))

    def finish(self, mlflow_run_id: str | None, status: str) -> None:
        """Close the MLflow run: FINISHED, FAILED or KILLED (stopped/pruned/deleted)."""
        self._write(_Write("terminate", mlflow_run_id, status))

    def flush(self) -> bool:
        """Retry the buffered writes, in order; True when nothing is left buffered."""
        while self._pending:
            write = self._pending[0]
            try:
                self._send(write)
            except Exception as exc:
                if not _permanent(exc):
                    self._failed(exc)
                    return False
                logger.warning("MLflow refused the %s for good, dropped: %r", write.describe(), exc)
            self._pending.popleft()
            if write.kind == "metrics":
                self._buffered_metrics -= len(write.payload)
        if self.experiment_id is None:
            try:
                self.ensure_experiment()
            except Exception as exc:
                self._failed(exc)
                return False
        if self._failing:
            self._failing = False
            logger.warning(
                "MLflow writes recovered (%s): buffered writes sent%s",
                self.tracking_uri,
                f"; {self.dropped_metrics} metrics were dropped" if self.dropped_metrics else "",
            )
        return True

    @property
    def buffered(self) -> int:
        """Writes waiting for MLflow."""
        return len(self._pending)

    # ------------------------------------------------------------------ internals
    def _write(self, write: _Write) -> None:
        """Queue ``write`` behind any buffered ones and send what MLflow takes; never raises."""
        self._pending.append(write)
        if write.kind == "metrics":
            self._buffered_metrics += len(write.payload)
            self._bound()
        self.flush()

    def _bound(self) -> None:
        """Drop the oldest buffered metrics past ``MAX_BUFFERED_METRICS``."""
        excess = self._buffered_metrics - MAX_BUFFERED_METRICS
        for write in list(self._pending):
            if excess <= 0:
                break
            if write.kind != "metrics":
                continue
            cut = min(excess, len(write.payload))
            write.payload = write.payload[cut:]
            excess -= cut
            self._buffered_metrics -= cut
            self.dropped_metrics += cut
        self._pending = collections.deque(
            w for w in self._pending if w.kind != "metrics" or w.payload
        )

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "MLflow write failed (%s: %r); training goes on, %d writes (%d metrics) are "
                "buffered and retried on the next write",
                self.tracking_uri,
                exc,
                len(self._pending),
                self._buffered_metrics,
            )

    def _send(self, write: _Write) -> None:
        from mlflow.entities import RunTag

        client = self.client
        if write.kind == "start":
            self._create_run(*write.payload)
            return
        run_id = write.run_id or self.run_id
        if run_id is None:  # a pending start would be ahead of it in the queue
            raise _NoRunError("no MLflow run id given and start_run was never called")
        if write.kind == "metrics":
            _retry(functools.partial(client.log_batch, run_id, metrics=write.payload))
        elif write.kind == "tags":
            rows = [RunTag(k, v) for k, v in write.payload.items()]
            _retry(functools.partial(client.log_batch, run_id, tags=rows))
        elif write.kind == "status":
            _retry(functools.partial(client.update_run, run_id, status=write.payload))
        elif write.kind == "terminate":
            _retry(functools.partial(client.set_terminated, run_id, status=write.payload))

    def _create_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        if self.run_id is None:
            experiment_id = self.ensure_experiment()
            run = _retry(
                lambda: self.client.create_run(experiment_id, run_name=run_name, tags=tags)
            )
            self.run_id = str(run.info.run_id)
        run_id = self.run_id
        batch = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):
            _retry(functools.partial(self.client.log_batch, run_id, params=batch[i : i + 100]))
        rows = [RunTag(k, v) for k, v in tags.items()]
        _retry(functools.partial(self.client.log_batch, run_id, tags=rows))


def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)
