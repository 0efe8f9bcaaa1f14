"""``TrackingActor``: the one MLflow writer of an experiment; trials talk to it, not to MLflow.

Why: a trial that imported MLflow carried it (and pandas, which MLflow imports) in every run's
process, about 100 MiB PSS each, and N trials meant N SQLite writers contending for one lock.
Here one process per experiment holds the ``MlflowClient``; trials stay lean (no torch, TRL,
pandas or MLflow: ``tests/actors/test_lean_trial.py``) and send plain dicts.

It keeps today's ``Tracker`` guarantees, one ``Tracker`` per rf-ray run (they share one client):
writes never raise into a trial; a write MLflow refuses is buffered (bounded) and retried on the
run's next write; the first failure of a streak is logged once; a run whose MLflow run could not
be created yet is created by a later write. Every method answers with the run's MLflow run id
(``None`` while MLflow is unreachable), so a trial learns the id without a call of its own.

The actor is a plain (threaded, ``max_concurrency=1``) Ray actor: calls run one at a time in the
order each trial sent them, so a trial may send metric writes without waiting for them
(``TrackingClient``). Batching: a slice's rows go to MLflow in one ``log_batch`` per 500 metrics.

``TrackingClient`` is the trial's side: every call is bounded and never raises.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

TRACKING_CALL_SECONDS = 60.0
"""Bound on waiting for the tracking actor's answer (it retries a locked SQLite briefly)."""


@dataclass(frozen=True)
class TrackingOutcome:
    """What a run's tracker holds after ``TrackingActor.finish``."""

    mlflow_run_id: str | None
    buffered: int
    """Writes MLflow has not taken yet (it was unreachable)."""
    dropped_metrics: int


class TrackingActor:
    """One per experiment (started by its ``SchedulerActor``); see the module docstring."""

    def __init__(self, tracking_uri: str, experiment_name: str, client: Any = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self._client: Any = client
        """``client`` is a test seam: an ``MlflowClient``-like object (e.g. one that fails)."""
        self.trackers: dict[int, Any] = {}
        """rf-ray run id -> its ``actors.tracking.Tracker``."""

    def ready(self) -> bool:
        return True

    def _tracker(self, run_id: int) -> Any:
        from actors.tracking import Tracker

        tracker = self.trackers.get(run_id)
        if tracker is None:
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            tracker = Tracker(self.tracking_uri, self.experiment_name, client=self._client)
            self.trackers[run_id] = tracker
        return tracker

    def open_run(
        self,
        run_id: int,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        mlflow_run_id: str | None,
    ) -> str | None:
        """Create the run's MLflow run (``mlflow_run_id`` None), or mark the existing one
        running again (a resumed run, a restarted trial). Returns its id, if it exists yet."""
        tracker = self._tracker(run_id)
        if mlflow_run_id is None and tracker.run_id is None:
            tracker.start_run(run_name, params, tags)
            return tracker.run_id
        tracker.reopen(mlflow_run_id or tracker.run_id)
        return mlflow_run_id or tracker.run_id

    def log_metrics(
        self, run_id: int, mlflow_run_id: str | None, rows: list[tuple[int, dict[str, float]]]
    ) -> str | None:
        tracker = self._tracker(run_id)
        tracker.log_metrics(mlflow_run_id, rows)
        return mlflow_run_id or tracker.run_id

    def set_tags(self, run_id: int, mlflow_run_id: str | None, tags: dict[str, str]) -> str | None:
        tracker = self._tracker(run_id)
        tracker.set_tags(mlflow_run_id, tags)
        return mlflow_run_id or tracker.run_id

    def finish(
        self, run_id: int, mlflow_run_id: str | None, tags: dict[str, str], status: str
    ) -> TrackingOutcome:
        """Tag and close the run's MLflow run (FINISHED, FAILED or KILLED); flush what is
        buffered. What could not be sent stays buffered (a later resume retries nothing: the
        run's results are in the experiment store)."""
        tracker = self._tracker(run_id)
        tracker.set_tags(mlflow_run_id, tags)
        tracker.finish(mlflow_run_id, status)
        tracker.flush()
        return TrackingOutcome(
            mlflow_run_id or tracker.run_id, tracker.buffered, tracker.dropped_metrics
        )


class TrackingClient:
    """A trial's handle on the ``TrackingActor``: bounded calls that never raise.

    ``mlflow_run_id`` is the run's MLflow run id once known. While it is unknown each call is
    awaited, to learn it; after that metric writes are sent without waiting (the actor runs
    them in order)."""

    def __init__(self, actor: Any, run_id: int, mlflow_run_id: str | None) -> None:
        self.actor = actor
        self.run_id = run_id
        self.mlflow_run_id = mlflow_run_id
        self._opening: asyncio.Future[None] | None = None

    def start_open_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        """``open_run`` without waiting for it (the run's first slice need not wait for MLflow):
        every later call waits for it first."""
        self._opening = asyncio.ensure_future(self.open_run(run_name, params, tags))

    async def opened(self) -> None:
        """Wait for ``start_open_run``'s call, if any (it never raises)."""
        if self._opening is not None:
            await self._opening

    async def _call(self, what: str, ref: Any) -> Any:
        try:
            return await asyncio.wait_for(ref, TRACKING_CALL_SECONDS)
        except Exception as exc:  # tracking never stops training; the store has the results
            logger.warning("run %s: tracking call %s failed: %r", self.run_id, what, exc)
            return None

    def _learn(self, answer: Any) -> None:
        if self.mlflow_run_id is None and isinstance(answer, str):
            self.mlflow_run_id = answer

    async def open_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> None:
        ref = self.actor.open_run.remote(self.run_id, run_name, params, tags, self.mlflow_run_id)
        self._learn(await self._call("open_run", ref))

    async def log_metrics(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        if not rows:
            return
        await self.opened()
        try:
            ref = self.actor.log_metrics.remote(self.run_id, self.mlflow_run_id, rows)
        except Exception as exc:
            logger.warning("run %s: tracking call log_metrics failed: %r", self.run_id, exc)
            return
        if self.mlflow_run_id is None:
            self._learn(await self._call("log_metrics", ref))

    async def set_tags(self, tags: dict[str, str]) -> None:
        await self.opened()
        ref = self.actor.set_tags.remote(self.run_id, self.mlflow_run_id, tags)
        self._learn(await self._call("set_tags", ref))

    async def finish(self, tags: dict[str, str], status: str) -> None:
        await self.opened()
        ref = self.actor.finish.remote(self.run_id, self.mlflow_run_id, tags, status)
        outcome = await self._call("finish", ref)
        if not isinstance(outcome, TrackingOutcome):
            return
        self._learn(outcome.mlflow_run_id)
        if outcome.buffered:
            logger.warning(
                "run %s: %d MLflow writes could not be sent (%d metrics dropped); the run's "
                "results are in the experiment store", self.run_id, outcome.buffered,
                outcome.dropped_metrics,
            )  # fmt: skip
