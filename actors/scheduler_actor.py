"""``SchedulerActor``: the async Ray shell around ``SchedulerCore``.

One per experiment, created as a named actor (``rf_ray:<dir name>:<hash of the directory>`` in
namespace ``rf_ray``) so that other processes (``rf-ray ops``, a Ray Job, a Tune driver) can
find a running experiment.
It starts one ``TrialActor`` per live run and keeps doing so as interactive-control ops resume or
clone runs. Every change is written to the store in one transaction, and the pruner's state with
it, so a killed driver can be resumed from the experiment directory.

Ops arrive as actor calls; the actor runs one call at a time between ``await`` points, and an op
has none while it changes state, so concurrent ops from several clients are each applied exactly
once, in order of arrival.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path
from typing import Any

from actors import logs
from actors.messages import Exit, Grant, Report, ReportAck, RunEntry
from actors.scheduler import MAX_TRIAL_RESTARTS, RunRow, SchedulerCore
from actors.storage import durable
from actors.storage.layout import ExperimentDir
from actors.storage.lock import hold_experiment_lock
from actors.storage.store import PRUNING_ERROR_KEY, Store
from policies.errors import OpError
from policies.pruning import pruner_from_dict
from policies.settings import ExperimentSettings
from policies.state import FailedBy, RunStatus, is_live

logger = logging.getLogger(__name__)


TRACKER_CALL_SECONDS = 60.0
"""Bound on the MLflow call with which the watchdog closes a failed run's MLflow run."""


class SchedulerActor:
    def __init__(
        self,
        name: str,
        experiment_dir: str,
        settings: ExperimentSettings,
        executors: list[Any],
        tracking_uri: str,
        lock_wait_s: float = 0.0,
    ) -> None:
        self.name = name
        self.dir = experiment_dir
        logs.quiet()
        logs.attach(experiment_dir, "scheduler")
        # The driver holds the lock while it writes the experiment and hands it over as it
        # creates this actor: wait (bounded) for it to let go.
        self._lock = hold_experiment_lock(experiment_dir, wait_s=lock_wait_s)
        # Open for the actor's life (it is the only writer while the experiment runs); closed
        # with the process. Every other user of the store opens it with ``with``.
        self.store = Store(experiment_dir)
        self.settings = settings
        # The pruner's state as last recorded (fresh for a new plan: ``persist`` wrote it), and
        # whether pruning had stopped (a chunk lacked its metric).
        meta = self.store.meta()
        state = meta.get("pruner_state")
        self.core = SchedulerCore.of(
            settings, pruner_from_dict(state) if state else settings.new_pruner(), len(executors)
        )
        self.core.pruning_error = meta.get(PRUNING_ERROR_KEY)
        self.executors = executors
        self.tracking_uri = tracking_uri
        self._tracking: Any = None
        """The experiment's ``TrackingActor`` (the one MLflow writer), started with the first
        trial."""
        self.preloaded = False
        """Whether the executors were asked to load a base model ahead of the first trial."""
        self.trials: list[tuple[int, Any, Any]] = []
        """(run id, trial actor, its run() ref) for every trial ever started."""
        self.looping: set[int] = set()
        """Runs whose trial is still asking for slices."""
        self._watches: set[asyncio.Task[None]] = set()
        self.finished = False
        self.ops_applied = 0
        self._cond: asyncio.Condition | None = None

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:  # must be created inside the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    async def ready(self) -> str:
        """Answers once the actor is up (it holds the experiment's lock by then)."""
        return self.name

    # ------------------------------------------------------------------ runs and trials
    async def add_runs(self, entries: list[RunEntry]) -> None:
        """Register runs (new, or resumed with their progress) and start a trial for each live
        one."""
        async with self.cond:
            self._preload(entries)
            for entry in entries:
                self._register(entry)
            self.cond.notify_all()

    def _preload(self, entries: list[RunEntry]) -> None:
        """At start-up, have every executor load the first live run's base model while the
        trials start (not answered: a failure surfaces as that run's ``add_run`` error)."""
        if self.preloaded:
            return
        first = next((e for e in entries if is_live(e.status)), None)
        if first is None:
            return
        self.preloaded = True
        for executor in self.executors:
            executor.load_base.remote(first.spec_blob)

    def _register(self, entry: RunEntry) -> None:
        row = self.core.add_run(entry)
        if is_live(row.status):
            self._spawn(row)

    def _spawn(self, row: RunRow) -> None:
        import ray

        from actors.trial_actor import TrialActor

        row.trial += 1
        trial = (
            ray.remote(TrialActor)
            .options(num_cpus=0)
            .remote(
                row.run_id,
                row.trial,
                row.spec_blob,
                row.params,
                row.tags,
                self._self_handle(),
                self.executors,
                self.dir,
                self.tracking,
                row.checkpoint,
                row.mlflow_run_id,
            )
        )
        ref = trial.run.remote()
        self.trials.append((row.run_id, trial, ref))
        self.looping.add(row.run_id)
        watch = asyncio.get_running_loop().create_task(self._watch(row.run_id, trial, ref))
        self._watches.add(watch)
        watch.add_done_callback(self._watches.discard)

    async def _watch(self, run_id: int, trial: Any, ref: Any) -> None:
        """Restart the trial of a live run whose trial died outside the executor (its process
        was killed, or its own loop raised, e.g. a call that failed in transit): the run's
        state is in its checkpoint and this record, so a new trial carries on where the old one
        was (a slice the executor finished meanwhile is found by the new trial's identical
        grant). After ``MAX_TRIAL_RESTARTS`` restarts the run fails, its MLflow run is closed
        as FAILED with the error, and the other runs go on."""
        try:
            await ref
            return
        except Exception as exc:
            error = f"the run's trial actor died: {type(exc).__name__}: {str(exc)[:1500]}"
        async with self.cond:
            latest = next(t for rid, t, _ in reversed(self.trials) if rid == run_id)
            if run_id not in self.looping or latest is not trial:
                return  # the trial had left its loop, or a resumed run has a new trial
            row = self.core.runs[run_id]
            if not (is_live(row.status) or row.in_flight):
                self.looping.discard(run_id)
                return  # already over (pruned, stopped...): nothing is waiting on this trial
            restart, pruned = self.core.on_trial_lost(run_id, error)
            if restart:
                logger.warning(
                    "run %s: %s; starting a new trial (restart %s of %s)", run_id, error,
                    row.trial_restarts, MAX_TRIAL_RESTARTS,
                )  # fmt: skip
                self._spawn(row)
                self.cond.notify_all()
                return
            self.looping.discard(run_id)
            mlflow_run_id = None
            if row.status is RunStatus.FAILED:
                logger.warning("run %s failed: %s", run_id, row.error)
                self._save(run_id)
                self._write_pruned(pruned)
                mlflow_run_id, error = row.mlflow_run_id, str(row.error)
            self.cond.notify_all()
        if mlflow_run_id is not None:
            await self._close_mlflow_run(run_id, mlflow_run_id, error)

    @property
    def tracking(self) -> Any:
        """The experiment's ``TrackingActor``, started on first use. It lives as long as this
        actor (Ray ends an actor with its owner); restarted if its process dies (what it had
        buffered for an unreachable MLflow is lost then; the store has every result)."""
        if self._tracking is None:
            import ray

            from actors.tracking_actor import TrackingActor

            self._tracking = (
                ray.remote(TrackingActor)
                .options(num_cpus=0, max_restarts=-1, max_concurrency=1)
                .remote(self.tracking_uri, self.name)
            )
        return self._tracking

    async def _close_mlflow_run(self, run_id: int, mlflow_run_id: str, error: str) -> None:
        """Mark a run's MLflow run FAILED with its error (bounded; a tracking outage is logged,
        never raised: the run's outcome is in the store either way)."""
        try:
            await asyncio.wait_for(
                self.tracking.finish.remote(
                    run_id, mlflow_run_id, {"rf_ray.status": "failed", "rf_ray.error": error},
                    "FAILED",
                ),
                TRACKER_CALL_SECONDS,
            )  # fmt: skip
        except Exception:
            logger.warning("run %s: could not close its MLflow run", run_id, exc_info=True)

    @staticmethod
    def _self_handle() -> Any:
        import ray

        return ray.get_runtime_context().current_actor

    # ------------------------------------------------------------------ the slice protocol
    async def request_slice(self, run_id: int, trial: int) -> Grant | Exit:
        """Wait until ``run_id`` may train; return its ``Grant``, or ``Exit`` once it is over.
        ``trial``: which of the run's trials asks; one that is no longer the run's current
        trial (it died and was replaced while it waited here) is sent away, never granted."""
        async with self.cond:
            while True:
                row = self.core.runs[run_id]
                if trial != row.trial:
                    return Exit(row.status.value, row.pruned_at)
                decision = self.core.grant_for(run_id)
                if isinstance(decision, Grant):
                    self._save(*(decision.group or (run_id,)))
                    if len(decision.group) > 1:
                        self.cond.notify_all()  # the group's other members have grants now
                    return decision
                if isinstance(decision, RunStatus):
                    self.looping.discard(run_id)
                    return Exit(decision.value, self.core.runs[run_id].pruned_at)
                await self.cond.wait()

    async def report(self, report: Report) -> ReportAck:
        """Record a finished slice (one store transaction, the pruner's state with it)."""
        async with self.cond:
            if report.fusion_oom_tokens:
                self.core.on_fusion_oom(report.fusion_oom_tokens)
            run_id = report.run_id
            pruning = self.core.pruning_error
            closed, pruned = self.core.on_result(
                run_id, report.end_step, report.step_metrics, report.eval_metrics
            )
            meta: dict[str, Any] = {"pruner_state": self.core.pruner.to_dict()}
            stopped = pruning is None and self.core.pruning_error is not None
            if stopped:  # a chunk lacked the pruner's metric: say so wherever runs are shown
                meta[PRUNING_ERROR_KEY] = self.core.pruning_error
            row = self.core.runs[run_id]
            row.checkpoint = report.checkpoint
            chunk = None
            if closed is not None:
                chunk = (closed[0], {**closed[1], **report.chunk_extras})
            self.store.record_slice(
                run_id,
                report.step_metrics,
                chunk,
                # The pruner's state and its decisions are durable with the chunk, never apart.
                meta=meta,
                others={rid: self.core.runs[rid].columns() for rid in pruned},
                # failures are cleared by the slice (``SchedulerCore.on_result``)
                **row.columns(),
            )
            if stopped:
                self._tag_pruning_error(*self.core.runs)
            self._log_progress(run_id, chunk, pruned)
            self.cond.notify_all()
            return ReportAck(row.status.value, chunk)

    def _log_progress(self, run_id: int, chunk: Any, pruned: set[int]) -> None:
        """The experiment's log: each closed chunk, a run that ended, the runs pruned."""
        row = self.core.runs[run_id]
        if chunk is not None:
            shown = {k: round(v, 4) for k, v in chunk[1].items() if isinstance(v, float)}
            logger.info(
                "run %s: chunk %s of %s done %s", run_id, chunk[0], row.plan.total_chunks, shown
            )
        if row.status is not RunStatus.RUNNING and run_id not in pruned:
            logger.info("run %s: %s after %s steps", run_id, row.status.value, row.steps_done)
        for rid in sorted(pruned):
            logger.info("run %s: pruned by %s", rid, self.core.pruner.describe())

    def _tag_pruning_error(self, *run_ids: int) -> None:
        """Tag the runs' MLflow runs with why pruning stopped (sent, not awaited: the tracking
        actor takes calls in order and never raises into the experiment)."""
        error = self.core.pruning_error
        for run_id in run_ids:
            mlflow_run_id = self.core.runs[run_id].mlflow_run_id
            if error is not None and mlflow_run_id is not None:
                self.tracking.set_tags.remote(
                    run_id, mlflow_run_id, {"rf_ray.pruning_error": error[:5000]}
                )

    async def report_failure(
        self, run_id: int, error: str, failed_by: str = FailedBy.RUN.value
    ) -> None:
        """The run failed: by its own code, or by the infrastructure (``failed_by``; then
        ``resume`` may continue it)."""
        async with self.cond:
            self._fail(run_id, error, FailedBy(failed_by))
            self.cond.notify_all()

    async def release(self, run_id: int, error: str | None = None) -> None:
        """The run's executor died (or was restarted past the slice deadline) before its slice
        finished: free the grant, the slice is re-run. ``error``: it happened while this run's
        call was in flight. A time-sliced run is charged with it, and at the second charge
        with no slice of the run recorded in between it fails; a run of a fused pass re-runs
        its slice alone instead, so only the run whose code did it is charged
        (``SchedulerCore.on_lost``). The others go on."""
        async with self.cond:
            fused = self.core.runs[run_id].group
            pruned = self.core.on_lost(run_id, error)
            row = self.core.runs[run_id]
            if error is not None and len(fused) > 1 and row.alone_after:
                logger.warning(
                    "run %s: its fused pass with runs %s was lost (%s); not charged, it re-runs "
                    "the slice alone", run_id, list(fused), error,
                )  # fmt: skip
            elif error is not None:
                logger.warning(
                    "run %s: executor died during its call (%s charged): %s",
                    run_id, row.failures, error,
                )  # fmt: skip
            if error is not None:
                self._save(run_id)
            if pruned is not None:  # the run failed
                self._write_pruned(pruned)
            self.cond.notify_all()

    def _fail(self, run_id: int, error: str, failed_by: FailedBy = FailedBy.RUN) -> None:
        logger.warning("run %s failed: %s", run_id, error)
        pruned = self.core.on_failure(run_id, error, failed_by)
        self._save(run_id)
        self._write_pruned(pruned)

    def _save(self, *run_ids: int) -> None:
        """Write the runs' progress, as the scheduler's rows have it, to the store."""
        for run_id in run_ids:
            self.store.update_run(run_id, **self.core.runs[run_id].columns())

    def _write_pruned(self, pruned: set[int]) -> None:
        self._save(*pruned)
        self.store.set_meta(pruner_state=self.core.pruner.to_dict())

    async def set_mlflow_run(self, run_id: int, mlflow_run_id: str) -> None:
        self.core.runs[run_id].mlflow_run_id = mlflow_run_id
        self._save(run_id)
        self._tag_pruning_error(run_id)

    async def set_adapter_path(self, run_id: int, path: str) -> None:
        self.store.update_run(run_id, adapter_path=path)

    # ------------------------------------------------------------------ interactive control
    async def op(self, name: str, run_id: int) -> dict[str, Any]:
        """Apply stop/resume/delete/prune to a run; raises ``OpError`` and changes nothing when
        the op cannot apply."""
        async with self.cond:
            self._check_open()
            pruned = self.core.apply_op(name, run_id)
            row = self.core.runs[run_id]
            self._save(run_id)
            self._write_pruned(pruned)
            if name == "resume" and run_id not in self.looping:
                self._spawn(row)
            self.ops_applied += 1
            logger.info("run %s: op %s -> %s", run_id, name, row.status.value)
            self.cond.notify_all()
            return {"run_id": run_id, "status": row.status.value, "seq": self.ops_applied}

    async def reserve_run_id(self) -> int:
        """A fresh run id for a clone, reserved in the store: concurrent clones never collide,
        and a refused clone's id is never handed out again."""
        self._check_open()
        return self.store.reserve_run_ids(1)[0]

    async def add_clone(self, entry: RunEntry) -> dict[str, Any]:
        """Add a new run while the experiment runs (built and validated by the client, its spec
        already written) and start its trial: a clone when ``entry.parent_run_id`` is set (a
        search algorithm's new config otherwise)."""
        async with self.cond:
            self._check_open()
            if entry.run_id in self.core.runs:
                raise OpError(f"run {entry.run_id} already exists; reserve a fresh id")
            parent = None
            if entry.parent_run_id is not None:
                parent = self.core.row_for_op(entry.parent_run_id)
            if entry.warm_start and parent is not None:
                entry = self._warm_from(entry, parent)
            self.store.add_run(
                entry.run_id, entry.params, RunStatus.PENDING.value, entry.plan.total_steps,
                entry.plan.total_chunks, entry.parent_run_id,
            )  # fmt: skip
            if entry.steps_done:
                self.store.update_run(entry.run_id, **entry.columns())
            self._register(entry)
            self.ops_applied += 1
            self.cond.notify_all()
            return {"run_id": entry.run_id, "status": "pending", "seq": self.ops_applied}

    def _warm_from(self, entry: RunEntry, parent: RunRow) -> RunEntry:
        """The clone starts from a copy of the parent's checkpoint (copied now: the parent
        trains on and replaces its own)."""
        if parent.steps_done == 0 or not parent.checkpoint:
            raise OpError(
                f"run {parent.run_id} has no checkpoint yet to warm-start from; "
                "clone it cold (warm_start=False) or wait for its first slice"
            )
        target = durable.copy_dir(
            parent.checkpoint, ExperimentDir(self.dir).run(entry.run_id).checkpoints_dir
        )
        return dataclasses.replace(entry, checkpoint=str(target), steps_done=parent.steps_done)

    async def get_spec_blob(self, run_id: int) -> bytes:
        return bytes(self.core.row_for_op(run_id).spec_blob)

    def _check_open(self) -> None:
        if self.finished:
            raise OpError(
                f"experiment {self.name!r} has finished; ops apply only while it runs "
                f"(resume it with `rf-ray resume {Path(self.dir).name} --path "
                f"{Path(self.dir).parent}` or Experiment(...).resume())"
            )

    # ------------------------------------------------------------------ lifecycle
    async def wait_done(self) -> list[dict[str, Any]]:
        """Block until no run is live or in flight and every trial has wrapped up."""
        async with self.cond:
            await self.cond.wait_for(self.core.done)
            self.finished = True
        outcomes = await asyncio.gather(*(ref for _, _, ref in self.trials), return_exceptions=True)
        # Over: nothing writes to the store any more, so let a new driver take the experiment
        # (a second run_fit adding runs) even while this actor lingers.
        self.store.close()
        self._lock.close()
        return [o if isinstance(o, dict) else {"error": repr(o)} for o in outcomes]

    async def wait_for_progress(
        self, run_id: int, steps_done: int = 0, chunks_done: int = 0, timeout_s: float = 300.0
    ) -> dict[str, Any]:
        """Return the run's snapshot row once it has recorded ``steps_done`` optimizer steps and
        ``chunks_done`` chunks, or as soon as it is no longer live (pruned, stopped, completed,
        failed, deleted), whichever comes first. Raises ``TimeoutError`` after ``timeout_s``
        naming the run, what was waited for and where the run stands."""

        def reached() -> bool:
            row = self.core.runs.get(run_id)
            if row is None:  # not registered yet (a clone on its way): keep waiting
                return False
            done = row.steps_done >= steps_done and row.chunks_done >= chunks_done
            return done or not is_live(row.status)

        async with self.cond:
            try:
                await asyncio.wait_for(self.cond.wait_for(reached), timeout_s)
            except TimeoutError:
                row = self.core.runs.get(run_id)
                where = (
                    "not registered"
                    if row is None
                    else f"{row.status.value}, {row.steps_done} steps, {row.chunks_done} chunks"
                )
                raise TimeoutError(
                    f"run {run_id} of {self.name!r} did not reach {steps_done} steps and "
                    f"{chunks_done} chunks within {timeout_s:g} s (it is {where})"
                ) from None
            return next(r for r in self.core.snapshot() if r["run_id"] == run_id)

    async def is_finished(self) -> bool:
        """True once the experiment is over (its lock is released)."""
        return self.finished

    async def hold(self, token: str) -> None:
        """Keep the experiment open under ``token`` (a driver that may still add runs) until
        ``unhold(token)``, even when no run is live."""
        async with self.cond:
            self._check_open()
            self.core.holds.add(token)

    async def unhold(self, token: str) -> None:
        """Drop the hold ``token`` (no-op if not held); the experiment ends once no run is live
        and no hold is left."""
        async with self.cond:
            self.core.holds.discard(token)
            self.cond.notify_all()

    async def trial_of(self, run_id: int) -> Any:
        """The handle of the run's latest trial actor (``None`` if it never had one): for
        diagnostics, e.g. what a trial process has imported (``TrialActor.loaded_modules``)."""
        return next((t for rid, t, _ in reversed(self.trials) if rid == run_id), None)

    async def snapshot(self) -> list[dict[str, Any]]:
        return self.core.snapshot()
