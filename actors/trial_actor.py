"""``TrialActor``: one per run. It owns the run's lifecycle and its MLflow run.

Loop: ask the scheduler for a slice, make sure the executor holds the run (re-seeding it from the
run's last durable checkpoint when it does not, e.g. after the executor restarted), have it train
the slice, wait until the executor has written the slice's checkpoint (``wait_durable``: it is
written in the background while the executor trains other runs), report to the scheduler, log to
MLflow through the experiment's ``TrackingActor``; stop when the scheduler says the run is over
(completed, pruned, stopped, failed, deleted).

* The trial process stays lean: it imports neither torch, TRL, pandas nor MLflow (the run spec
  travels to the executor as opaque bytes; MLflow writes go to the tracking actor).
* A checkpoint that cannot be written fails this run (the error names the step and the cause).
* An exception inside the run's slice marks only this run failed.
* Every executor call made for a grant (``add_run``, ``run_slice``, ``wait_durable``) is
  bounded by the grant's deadline (the experiment's ``slice_timeout``). Past it the run fails
  with an error naming the slice and what the executor was doing, and the executor process is
  restarted (Ray restarts it; it loads the base model again, once); the other runs are
  re-placed from their checkpoints.
* An executor that died while this run's call was in flight (its process id changed) is charged
  to the run: ``release(run_id, error)``; the scheduler fails the run at the second charge. One
  found dead before the call ran is not the run's fault: ``release(run_id)``, the slice re-runs.
* A call that failed in transit while the executor process lived on (``ActorUnavailableError``)
  is retried with the same grant: the executor's ``run_slice`` is idempotent.

* A fused grant's pass that passes its deadline or loses its executor fails and charges no
  member: each is handed back as lost (``release(run_id, error)``) and the scheduler re-runs
  its slice alone, time-sliced, from its last durable checkpoint, where a hang or a death is
  the run's own (``SchedulerCore.on_lost``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from actors import logs
from actors.messages import Exit, Grant, Report, SliceResult
from actors.storage.layout import ExperimentDir
from actors.tracking_actor import TrackingClient
from policies.errors import InfrastructureError, RunFailedError, RunNotPlacedError
from policies.state import FailedBy

logger = logging.getLogger(__name__)

_MLFLOW_STATUS = {
    "completed": "FINISHED",
    "failed": "FAILED",
    "pruned": "KILLED",
    "stopped": "KILLED",
    "deleted": "KILLED",
}

EXECUTOR_UP_SECONDS = 900.0
"""Bound on waiting for the executor to answer (after a restart it imports torch and loads the
base model, which is not the run's time: it is kept out of the slice deadline)."""
ACTIVITY_SECONDS = 5.0
"""Bound on asking a hung executor what it is doing."""
SMALL_CALL_SECONDS = 120.0
"""Bound on the executor's bookkeeping calls (has_run, remove_run, export)."""
MAX_IN_TRANSIT_RETRIES = 5
"""Retries of one call that failed in transit while the executor process lived on."""
MAX_UNCHARGED_LOSSES = 10
"""Grants in a row whose executor was found unreachable before this run's call ran; then the
run fails (the executor is gone for good, e.g. killed without restart)."""


class ExecutorLostError(Exception):
    """The executor was lost; ``charged``: the error, when it died during this run's call."""

    def __init__(self, charged: str | None, detail: str) -> None:
        super().__init__(detail)
        self.charged = charged


class TrialActor:
    def __init__(  # noqa: PLR0913  a Ray actor constructor: the run settings it is created with
        self,
        run_id: int,
        generation: int,
        spec_blob: bytes,
        params: dict[str, Any],
        tags: dict[str, str],
        scheduler: Any,
        executors: list[Any],
        experiment_dir: str,
        tracking: Any,
        checkpoint: str | None = None,
        mlflow_run_id: str | None = None,
    ) -> None:
        logs.attach(experiment_dir, f"trial {run_id}")
        self.run_id = run_id
        self.generation = generation
        """Which of the run's trials this is (``RunRow.trial``): sent with every request."""
        self.spec_blob = spec_blob
        self.params = params
        self.tags = tags
        self.scheduler = scheduler
        self.executors = executors
        self.run_dir = ExperimentDir(experiment_dir).run(run_id)
        self.tracking = TrackingClient(tracking, run_id, mlflow_run_id)
        """The run's MLflow writes go through the experiment's ``TrackingActor``."""
        self.checkpoint = checkpoint
        """The run's last durable checkpoint: where a (re)placed run is restored from."""
        self.mlflow_run_id = mlflow_run_id
        self.placed_on: int | None = None
        self.placed_pid = 0
        """Process id of the executor that holds the run (learned when it was placed): an
        executor death during a call shows as a changed pid."""
        self.token = uuid.uuid4().hex
        """Identifies this trial to the executor (see ``BaseModelActor.add_run``)."""

    async def loaded_modules(self, names: list[str]) -> list[str]:
        """Which of ``names`` this trial's process has imported (diagnostics: a trial is meant
        to stay lean, without torch, TRL, pandas or MLflow)."""
        import sys

        return [n for n in names if n in sys.modules]

    async def pid(self) -> int:
        """This trial's process id (diagnostics: bench/bench_memory.py reads its PSS)."""
        import os

        return os.getpid()

    async def run(self) -> dict[str, Any]:
        # Tracking never raises: an MLflow outage buffers writes in the tracking actor (see
        # actors.tracking), and the MLflow run may only exist later, once MLflow answers. A
        # resumed or restarted run keeps logging into its MLflow run.
        # The first slice does not wait for MLflow: the run is opened while it trains.
        tracker = self.tracking
        tracker.start_open_run(
            f"run-{self.run_id}", self.params, {**self.tags, "rf_ray.status": "running"}
        )
        uncharged = 0
        while True:
            answer = await self.scheduler.request_slice.remote(self.run_id, self.generation)
            if isinstance(answer, Exit):
                return await self._finish(tracker, answer)
            try:
                result = await self._train(answer)
            except ExecutorLostError as lost:
                self.placed_on = None
                uncharged = uncharged + 1 if lost.charged is None else 0
                if uncharged <= MAX_UNCHARGED_LOSSES:
                    logger.warning(
                        "run %s: executor lost (%s); the slice re-runs", self.run_id, lost
                    )
                    await self.scheduler.release.remote(self.run_id, lost.charged)
                    if lost.charged is None:  # give a restarting executor time to come up
                        await asyncio.sleep(min(2.0**uncharged, 30.0))
                    continue
                await self._fail(
                    tracker,
                    f"executor {answer.executor} was unreachable for {uncharged} grants in a "
                    f"row: {lost}",
                )
                continue
            except Exception as exc:  # one bad run never stops the others
                cause = FailedBy.INFRASTRUCTURE if _is(exc, InfrastructureError) else FailedBy.RUN
                await self._fail(tracker, _describe(exc), cause)
                continue
            uncharged = 0
            self.checkpoint = result.checkpoint
            ack = await self.scheduler.report.remote(Report.of(result))
            rows = [(int(m["step"]), m) for m in result.step_metrics if self._logs(m)]
            if ack.chunk is not None:
                chunk_no, chunk_metrics = ack.chunk
                chunk_row = {f"chunk/{k}": v for k, v in chunk_metrics.items()}
                rows.append((result.end_step, {**chunk_row, "chunk": chunk_no}))
            await tracker.log_metrics(rows)
            await self._record_mlflow_run(tracker)

    def _logs(self, metrics: dict[str, float]) -> bool:
        """Whether a step's metrics go to MLflow: every ``logging_steps`` optimizer steps (the
        run's TRL field; every step when unset), and any step that evaluated. The store keeps
        every step either way (``Experiment.get_results``)."""
        every = self.params.get("logging_steps", 1)
        every = every if isinstance(every, int) and every >= 1 else 1
        return int(metrics["step"]) % every == 0 or any(k.startswith("eval_") for k in metrics)

    async def _record_mlflow_run(self, tracker: TrackingClient) -> None:
        """Tell the scheduler the run's MLflow run id once it exists (at once, unless MLflow
        was unreachable when the trial started)."""
        if self.mlflow_run_id is None and tracker.mlflow_run_id is not None:
            self.mlflow_run_id = tracker.mlflow_run_id
            await self.scheduler.set_mlflow_run.remote(self.run_id, self.mlflow_run_id)

    async def _fail(
        self, tracker: TrackingClient, error: str, failed_by: FailedBy = FailedBy.RUN
    ) -> None:
        logger.warning("run %s failed (by %s): %s", self.run_id, failed_by.value, error)
        await self.scheduler.report_failure.remote(self.run_id, error, failed_by.value)
        await tracker.set_tags({"rf_ray.error": error})
        await self._evict()

    # ------------------------------------------------------------------ one slice
    async def _train(self, grant: Grant) -> SliceResult:
        """Place the run on the granted executor if needed, then train the slice."""
        executor = self.executors[grant.executor]
        if self.placed_on is not None and self.placed_on != grant.executor:
            await self._evict()  # moving: the old executor's copy would go stale
        if self.placed_on == grant.executor and await self._has_run(grant.executor):
            # Still resident, so still the process it was placed in (a restarted executor
            # starts empty): its pid is known, no extra round trip on the slice path.
            pid = self.placed_pid
        else:
            found = await self._pid(grant.executor)
            if found is None:
                raise ExecutorLostError(
                    None, f"executor {grant.executor} did not answer before the call"
                )
            pid = found
            await self._place(grant, pid)
        for _ in range(MAX_IN_TRANSIT_RETRIES + 1):
            try:
                result: SliceResult = await self._call(
                    grant, pid, "run_slice",
                    lambda: executor.run_slice.remote(
                        self.run_id, grant.start_step, grant.end_step, grant.evaluate,
                        str(self.run_dir.path), list(grant.group) or None,
                    ),
                )  # fmt: skip
                # Durable before recorded: the executor writes the checkpoint in the background
                # (it trains other runs meanwhile); the slice is reported only once it is on disk.
                try:
                    result.checkpoint = await self._call(
                        grant, pid, "wait_durable",
                        functools.partial(
                            executor.wait_durable.remote, self.run_id, result.end_step
                        ),
                    )  # fmt: skip
                except ExecutorLostError as lost:
                    # This run's compute was done: a death while its checkpoint was queued is
                    # another run's doing (the one training then), not this run's. Not charged;
                    # the slice re-runs from the last durable checkpoint.
                    raise ExecutorLostError(
                        None, f"while its checkpoint was queued: {lost}"
                    ) from lost
                return result
            except Exception as exc:
                if not _is(exc, RunNotPlacedError):
                    raise
                # The executor does not hold the run at the grant's start (it restarted, or
                # a retried call found it elsewhere): re-place it from the checkpoint.
                logger.info(
                    "run %s: not placed at step %s; re-placing", self.run_id, grant.start_step
                )
                await self._place(grant, pid)
        raise RunFailedError(
            f"run {self.run_id}: the executor kept reporting the run not placed at step "
            f"{grant.start_step} after {MAX_IN_TRANSIT_RETRIES + 1} placements"
        )

    async def _place(self, grant: Grant, pid: int) -> None:
        executor = self.executors[grant.executor]
        await self._call(
            grant, pid, "add_run",
            lambda: executor.add_run.remote(self.spec_blob, self.checkpoint, self.token),
        )  # fmt: skip
        self.placed_on, self.placed_pid = grant.executor, pid

    async def _call(
        self, grant: Grant, pid: int, what: str, submit: Callable[[], Awaitable[Any]]
    ) -> Any:
        """One executor call for ``grant``, bounded by its deadline; a call lost in transit
        while the executor process lived on is sent again (same grant)."""
        for _ in range(MAX_IN_TRANSIT_RETRIES + 1):
            try:
                return await asyncio.wait_for(submit(), grant.deadline_s)
            except asyncio.TimeoutError:
                await self._deadline_passed(grant, what, pid)
            except Exception as exc:
                if not _executor_lost(exc):
                    raise
                now = await self._pid(grant.executor)
                if now != pid:  # the process died while this run's call was in flight
                    error = (
                        f"{what} of steps {grant.start_step}..{grant.end_step}: {_describe(exc)}"
                    )
                    raise ExecutorLostError(error, error) from exc
                logger.warning("run %s: %s lost in transit (%s); retrying", self.run_id, what, exc)
        raise ExecutorLostError(None, f"{what}: lost in transit {MAX_IN_TRANSIT_RETRIES + 1} times")

    async def _deadline_passed(self, grant: Grant, what: str, pid: int) -> None:
        """Restart the executor (its worker thread may be stuck in user code for good) and
        fail the run, naming the slice and what the executor was doing. A fused grant's run
        is not failed: any member of the pass may have hung it, so the executor is restarted
        (once: unless another member already did) and the run handed back as lost with it,
        to re-run its slice alone (``SchedulerCore.on_lost``)."""
        import ray

        executor = self.executors[grant.executor]
        activity = await _activity(executor)
        fused = len(grant.group) > 1
        if not fused or await _same_process(executor, pid):
            logger.warning(
                "run %s: %s passed the slice deadline; restarting executor %s", self.run_id,
                what, grant.executor,
            )  # fmt: skip
            ray.kill(executor, no_restart=False)  # Ray restarts it; it reloads the base once
        self.placed_on = None
        if fused:
            error = (
                f"the fused pass of runs {list(grant.group)} (steps {grant.start_step}.."
                f"{grant.end_step} of run {self.run_id}) did not finish within slice_timeout="
                f"{grant.deadline_s:g} s ({what}); the executor was doing: {activity}"
            )
            raise ExecutorLostError(error, error)
        raise RunFailedError(
            f"run {self.run_id}: the slice of steps {grant.start_step}..{grant.end_step} "
            f"(chunk {grant.chunk}) did not finish within slice_timeout={grant.deadline_s:g} s "
            f"({what}); the executor was doing: {activity}. Its executor process was restarted. "
            "Fix the hung function, or raise slice_timeout / cut slices with more chunks or "
            "max_slice_steps"
        )

    async def _pid(self, index: int) -> int | None:
        """The executor's process id, once it answers (bounded); None if it does not."""
        try:
            ready = await asyncio.wait_for(
                self.executors[index].ready.remote(), EXECUTOR_UP_SECONDS
            )
            return int(ready["pid"])
        except Exception:
            logger.debug("run %s: executor %s unreachable", self.run_id, index, exc_info=True)
            return None

    async def _has_run(self, index: int) -> bool:
        try:
            return bool(
                await asyncio.wait_for(
                    self.executors[index].has_run.remote(self.run_id), SMALL_CALL_SECONDS
                )
            )
        except Exception as exc:  # found dead before this run's call ran: not its fault
            raise ExecutorLostError(None, f"has_run: {_describe(exc)}") from exc

    async def _evict(self) -> None:
        """Free the run's adapter and optimizer on the executor (its checkpoint stays on disk)."""
        if self.placed_on is not None:
            try:
                await asyncio.wait_for(
                    self.executors[self.placed_on].remove_run.remote(self.run_id, self.token),
                    SMALL_CALL_SECONDS,
                )
            except Exception:  # the executor is gone: nothing to free
                logger.debug("run %s: executor gone while evicting", self.run_id, exc_info=True)
            self.placed_on = None

    async def _finish(self, tracker: TrackingClient, answer: Exit) -> dict[str, Any]:
        status = answer.status
        outcome: dict[str, Any] = {
            "run_id": self.run_id,
            "mlflow_run_id": self.mlflow_run_id,
            "exit": status,
            "pruned_at": answer.pruned_at,
        }
        tags = {"rf_ray.status": status}
        if answer.pruned_at is not None:
            tags["rf_ray.pruned_at_chunk"] = str(answer.pruned_at)
        if status in ("completed", "pruned", "stopped") and self.placed_on is not None:
            # The adapter as the run left it, loadable with PeftModel.from_pretrained.
            path = await asyncio.wait_for(
                self.executors[self.placed_on].export.remote(
                    self.run_id, str(self.run_dir.adapter_dir)
                ),
                SMALL_CALL_SECONDS,
            )
            if path:  # an evals pipeline has no adapter to export
                outcome["adapter_path"] = path
                tags["rf_ray.adapter_path"] = path
                await self.scheduler.set_adapter_path.remote(self.run_id, path)
        await self._evict()
        await tracker.finish(tags, _MLFLOW_STATUS.get(status, "KILLED"))
        await self._record_mlflow_run(tracker)
        outcome["mlflow_run_id"] = self.mlflow_run_id
        return outcome


async def _activity(executor: Any) -> str:
    """What the executor's worker thread is doing, or "unknown" (an executor without
    ``activity()``, or one that does not answer within ``ACTIVITY_SECONDS``)."""
    try:
        return str(await asyncio.wait_for(executor.activity.remote(), ACTIVITY_SECONDS))
    except Exception:
        return "unknown"


async def _same_process(executor: Any, pid: int) -> bool:
    """Whether the executor still runs in process ``pid``: False once it answers from another
    one, or says it is restarting (a fused group's other member restarted it already); True
    if it does not answer within ``ACTIVITY_SECONDS`` (stuck: restart it)."""
    try:
        ready = await asyncio.wait_for(executor.ready.remote(), ACTIVITY_SECONDS)
    except asyncio.TimeoutError:
        return True
    except Exception:
        return False
    return int(ready["pid"]) == pid


def _executor_lost(exc: BaseException) -> bool:
    """True when the executor process died or is restarting (not the run's own error)."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError, RayActorError))


def _is(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is ``kind``, or a Ray task error whose cause is."""
    return isinstance(exc, kind) or isinstance(getattr(exc, "cause", None), kind)


def _describe(exc: BaseException) -> str:
    """The root cause of a (possibly Ray-wrapped) exception: its type and message."""
    cause = getattr(exc, "cause", None) or exc
    text = f"{type(cause).__name__}: {cause}".strip()
    return text if len(text) <= 2000 else text[:2000] + "..."
