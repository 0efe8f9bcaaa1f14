"""``SchedulerActor``: the async Ray shell around ``SchedulerCore``.

One per experiment, created as a named actor (``rf_ray:<experiment>`` in namespace ``rf_ray``)
so that other processes (``rf-ray ops``, a Ray Job, a Tune driver) can find a running experiment.
It starts one ``TrialActor`` per live run and keeps doing so as interactive-control ops resume or
clone runs. Every change is written to the store in one transaction, and the pruner's state with
it, so a killed driver can be resumed from the experiment directory.

Ops arrive as actor calls; the actor runs one call at a time between ``await`` points, and an op
has none while it changes state, so concurrent ops from several clients are each applied exactly
once, in order of arrival.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from typing import Any

from actors.scheduler import Grant, SchedulerCore
from actors.store import Store
from policies.chunking import ChunkPlan
from policies.errors import OpError
from policies.fusion import FusionPolicy
from policies.pruning import pruner_from_dict
from policies.state import RunStatus, is_live

logger = logging.getLogger(__name__)


LOCK_FILE = "scheduler.lock"


def hold_experiment_lock(experiment_dir: str) -> Any:
    """One live scheduler per experiment directory: an exclusive ``flock`` on a file in it, held
    for the life of the process (the OS drops it when the process dies, however it dies)."""
    import fcntl

    handle = open(os.path.join(experiment_dir, LOCK_FILE), "a+")  # noqa: SIM115 (held open)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OpError(
            f"experiment at {experiment_dir} is already running (another scheduler holds "
            f"{LOCK_FILE}); steer it with `rf-ray ops`, or wait for it to finish"
        ) from None
    return handle


def experiment_locked(experiment_dir: str) -> bool:
    """True while some process's scheduler holds the experiment's lock."""
    import fcntl

    path = os.path.join(experiment_dir, LOCK_FILE)
    if not os.path.exists(path):
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class SchedulerActor:
    def __init__(
        self,
        name: str,
        experiment_dir: str,
        pruner: dict[str, Any],
        executors: list[Any],
        has_eval: bool,
        max_slice_steps: int | None,
        tracking_uri: str,
        fusion: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.dir = experiment_dir
        self._lock = hold_experiment_lock(experiment_dir)
        self.store = Store(experiment_dir)
        self.core = SchedulerCore(
            pruner_from_dict(pruner),
            len(executors),
            has_eval,
            max_slice_steps,
            FusionPolicy.from_dict(fusion) if fusion else None,
        )
        self.executors = executors
        self.tracking_uri = tracking_uri
        self.entries: dict[int, dict[str, Any]] = {}
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

    # ------------------------------------------------------------------ runs and trials
    async def add_runs(self, entries: list[dict[str, Any]]) -> None:
        """Register runs and start a trial for each live one.

        An entry holds run_id, plan (dict), spec_blob, params, tags, and for a resumed run its
        status, steps_done, pruned_at, checkpoint and mlflow_run_id.
        """
        async with self.cond:
            for entry in entries:
                self._register(entry)
            self.cond.notify_all()

    def _register(self, entry: dict[str, Any]) -> None:
        run_id = int(entry["run_id"])
        status = RunStatus(entry.get("status", RunStatus.PENDING.value))
        self.core.add_run(
            run_id,
            ChunkPlan.from_dict(entry["plan"]),
            status=status,
            steps_done=int(entry.get("steps_done", 0)),
            pruned_at=entry.get("pruned_at"),
            fusion_key=entry.get("fusion_key"),
            fusion_tokens=int(entry.get("fusion_tokens", 0)),
        )
        self.entries[run_id] = entry
        if is_live(status):
            self._spawn(run_id)

    def _spawn(self, run_id: int) -> None:
        import ray

        from actors.trial import TrialActor

        entry = self.entries[run_id]
        trial = (
            ray.remote(TrialActor)
            .options(num_cpus=0)
            .remote(
                run_id,
                entry["spec_blob"],
                entry["params"],
                entry["tags"],
                self._self_handle(),
                self.executors,
                self.dir,
                self.tracking_uri,
                self.name,
                entry.get("checkpoint"),
                entry.get("mlflow_run_id"),
            )
        )
        ref = trial.run.remote()
        self.trials.append((run_id, trial, ref))
        self.looping.add(run_id)
        watch = asyncio.get_running_loop().create_task(self._watch(run_id, trial, ref))
        self._watches.add(watch)
        watch.add_done_callback(self._watches.discard)

    async def _watch(self, run_id: int, trial: Any, ref: Any) -> None:
        """Fail the run of a trial that died outside a slice (its process was killed, or its
        own loop raised, e.g. a call that failed in transit). Without this its run would stay
        live and the experiment would wait for it forever; the other runs go on."""
        try:
            await ref
            return
        except Exception as exc:
            error = f"the run's trial actor died: {type(exc).__name__}: {str(exc)[:1500]}"
        async with self.cond:
            latest = next(t for rid, t, _ in reversed(self.trials) if rid == run_id)
            if run_id not in self.looping or latest is not trial:
                return  # the trial had left its loop, or a resumed run has a new trial
            self.looping.discard(run_id)
            row = self.core.runs[run_id]
            if not (is_live(row.status) or row.in_flight):
                return  # already over (pruned, stopped...): nothing is waiting on this trial
            logger.warning("run %s: %s", run_id, error)
            pruned = self.core.on_failure(run_id, error)
            self.store.update_run(run_id, status=RunStatus.FAILED.value, error=error)
            self._write_pruned(pruned)
            self.cond.notify_all()

    @staticmethod
    def _self_handle() -> Any:
        import ray

        return ray.get_runtime_context().current_actor

    # ------------------------------------------------------------------ the slice protocol
    async def request_slice(self, run_id: int) -> dict[str, Any]:
        """Wait until ``run_id`` may train; return the grant, or ``{"exit": status}``."""
        async with self.cond:
            while True:
                decision = self.core.grant_for(run_id)
                if isinstance(decision, Grant):
                    for member in decision.group or (run_id,):
                        self.store.update_run(member, status=self.core.runs[member].status.value)
                    if len(decision.group) > 1:
                        self.cond.notify_all()  # the group's other members have grants now
                    return {"grant": {**decision.__dict__, "group": list(decision.group)}}
                if isinstance(decision, RunStatus):
                    row = self.core.runs[run_id]
                    self.looping.discard(run_id)
                    return {"exit": decision.value, "pruned_at": row.pruned_at}
                await self.cond.wait()

    async def report(
        self,
        run_id: int,
        end_step: int,
        step_metrics: list[dict[str, float]],
        eval_metrics: dict[str, float] | None,
        extra_chunk_metrics: dict[str, float],
        checkpoint: str | None,
        fusion_oom_tokens: int | None = None,
    ) -> dict[str, Any]:
        async with self.cond:
            if fusion_oom_tokens:
                self.core.on_fusion_oom(fusion_oom_tokens)
            closed, pruned = self.core.on_result(run_id, end_step, step_metrics, eval_metrics)
            row = self.core.runs[run_id]
            self.entries[run_id]["checkpoint"] = checkpoint
            chunk = None
            if closed is not None:
                chunk = (closed[0], {**closed[1], **extra_chunk_metrics})
            self.store.record_slice(
                run_id,
                step_metrics,
                chunk,
                status=row.status.value,
                steps_done=row.steps_done,
                chunks_done=row.chunks_done,
                checkpoint=checkpoint,
                last_metric=row.last_metric,
                best_metric=row.best_metric,
            )
            self._write_pruned(pruned)
            if closed is not None and not pruned:  # the pruner recorded a value: keep it durable
                self.store.set_meta(pruner_state=self.core.pruner.to_dict())
            self.cond.notify_all()
            return {"status": row.status.value, "chunk": chunk}

    async def report_failure(self, run_id: int, error: str) -> None:
        async with self.cond:
            pruned = self.core.on_failure(run_id, error)
            self.store.update_run(run_id, status=RunStatus.FAILED.value, error=error)
            self._write_pruned(pruned)
            self.cond.notify_all()

    async def release(self, run_id: int) -> None:
        """The run's executor was lost mid-slice: free the grant, the slice will be re-run."""
        async with self.cond:
            self.core.release(run_id)
            self.cond.notify_all()

    def _write_pruned(self, pruned: set[int]) -> None:
        for rid in pruned:
            r = self.core.runs[rid]
            self.store.update_run(rid, status=r.status.value, pruned_at=r.pruned_at)
        self.store.set_meta(pruner_state=self.core.pruner.to_dict())

    async def set_mlflow_run(self, run_id: int, mlflow_run_id: str) -> None:
        self.entries[run_id]["mlflow_run_id"] = mlflow_run_id
        self.store.update_run(run_id, mlflow_run_id=mlflow_run_id)

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
            self.store.update_run(run_id, status=row.status.value, pruned_at=row.pruned_at)
            self._write_pruned(pruned)
            if name == "resume" and run_id not in self.looping:
                self.entries[run_id]["status"] = row.status.value
                self._spawn(run_id)
            self.ops_applied += 1
            self.cond.notify_all()
            return {"run_id": run_id, "status": row.status.value, "seq": self.ops_applied}

    async def reserve_run_id(self) -> int:
        """A fresh run id for a clone (reserved, so concurrent clones never collide)."""
        self._check_open()
        run_id = max(self.core.next_run_id(), max(self.entries, default=0) + 1)
        self.entries[run_id] = {"reserved": True}
        return run_id

    async def add_clone(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Add a new run while the experiment runs (built and validated by the client) and start
        its trial: a clone when ``entry["parent_run_id"]`` is set (a search algorithm's new
        config otherwise)."""
        async with self.cond:
            self._check_open()
            run_id = int(entry["run_id"])
            parent_id = entry.get("parent_run_id")
            parent = self.core.row_for_op(int(parent_id)) if parent_id is not None else None
            if entry.get("warm_start") and parent is not None:
                if parent.steps_done == 0 or not self.entries[parent.run_id].get("checkpoint"):
                    raise OpError(
                        f"run {parent.run_id} has no checkpoint yet to warm-start from; "
                        "clone it cold (warm_start=False) or wait for its first slice"
                    )
                # Copy the parent's checkpoint now: the parent trains on and replaces its own.
                source = self.entries[parent.run_id]["checkpoint"]
                target = os.path.join(
                    self.dir, "runs", str(run_id), "checkpoints", os.path.basename(source)
                )
                shutil.copytree(source, target, dirs_exist_ok=True)
                entry["checkpoint"] = target
                entry["steps_done"] = parent.steps_done
            plan = ChunkPlan.from_dict(entry["plan"])
            self.store.add_run(
                run_id, entry["params"], RunStatus.PENDING.value, plan.total_steps,
                plan.total_chunks, parent_id,
            )  # fmt: skip
            if entry.get("steps_done"):
                self.store.update_run(
                    run_id,
                    steps_done=entry["steps_done"],
                    chunks_done=plan.chunks_done(entry["steps_done"]),
                )
            self._register(entry)
            self.ops_applied += 1
            self.cond.notify_all()
            return {"run_id": run_id, "status": "pending", "seq": self.ops_applied}

    async def get_spec_blob(self, run_id: int) -> bytes:
        self.core.row_for_op(run_id)
        return bytes(self.entries[run_id]["spec_blob"])

    def _check_open(self) -> None:
        if self.finished:
            raise OpError(
                f"experiment {self.name!r} has finished; ops apply only while it runs "
                f"(resume it with `rf-ray resume {self.name}` or Experiment(...).resume())"
            )

    # ------------------------------------------------------------------ lifecycle
    async def wait_done(self) -> list[dict[str, Any]]:
        """Block until no run is live or in flight and every trial has wrapped up."""
        async with self.cond:
            await self.cond.wait_for(self.core.done)
            self.finished = True
        outcomes = await asyncio.gather(*(ref for _, _, ref in self.trials), return_exceptions=True)
        return [o if isinstance(o, dict) else {"error": repr(o)} for o in outcomes]

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

    async def snapshot(self) -> list[dict[str, Any]]:
        return self.core.snapshot()

    async def done(self) -> bool:
        return self.core.done()
