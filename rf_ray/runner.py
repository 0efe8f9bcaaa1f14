"""Running an experiment on Ray: start, watch, resume and stop its actors.

``start`` first takes the experiment directory's lock (a running experiment is refused before
anything is written; one whose driver just crashed is waited for, bounded), then makes the
experiment durable before any actor runs: the store (runs, settings), the datasets (Arrow files,
``datasets.save_to_disk``), and each run's spec. It then starts the executor(s) and the named
scheduler, hands it the lock, and the scheduler starts one trial per run. A start or resume that
fails tears down what it started and puts the store back as it was. ``resume`` rebuilds all of
it from the experiment directory after the driver died: every run restarts from its last
completed slice (its durable checkpoint), and the pruner from its stored state, so the outcome
equals an uninterrupted run with the same seed.

What is stored as what: tensors (checkpoints) in safetensors, state in JSON and SQLite, data in
Arrow, run configs in JSON; the user's functions (``create_model_fn``, formatting and reward
functions) by importable reference (``module:qualname``), cloudpickle only for closures and
lambdas (``rf_ray/specfiles.py``). Files are private to their owner (0600, directories 0700).
Opening an experiment directory imports the referenced modules and unpickles those functions:
open only directories you trust (docs/security.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.durable import make_private_dir, resolve
from actors.messages import RunEntry
from actors.store import Store
from policies.errors import ConfigError, OpError
from policies.pruning import pruner_from_dict
from policies.state import RunStatus
from rf_ray import launch, specfiles
from rf_ray.launch import NAMESPACE, Plan, ensure_ray, scheduler_name

logger = logging.getLogger(__name__)

SCHEDULER_UNAVAILABLE_RETRIES = 8
"""How often ``wait`` re-asks a scheduler that is alive but whose call failed in transit."""

EXECUTOR_RESTARTS = -1
"""Executor processes restart without a shared limit. What bounds restarts is the charge per run:
a run whose call was in flight when the executor died twice fails (``actors.scheduler``), and a
run past its slice deadline fails at once, so one run's code causes at most two restarts and a
finite experiment causes finitely many. A shared, fixed budget is what let one bad run use up
the restarts of every run (issue 12, item 3)."""

LOCK_WAIT_SECONDS = 60.0
"""How long a start or resume waits for the lock of an experiment whose driver is gone (its
actors take a few seconds to wind down and release it)."""

HANDOVER_SECONDS = 30.0
"""How long the new scheduler waits for the driver to hand it the experiment lock."""

SCHEDULER_UP_SECONDS = 120.0
"""Bound on the scheduler actor coming up (it imports the actors' modules and opens the store)."""


@dataclass
class Session:
    """The actors of one running experiment, as seen by the driver that started them."""

    name: str
    dir: Path
    scheduler: Any
    executors: list[Any]
    started_ray: bool
    start_time: float
    params: dict[int, dict[str, Any]] = field(default_factory=dict)
    done_ref: Any = None
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    stopped: bool = False


# ---------------------------------------------------------------------------- persistence
def persist(plan: Plan) -> dict[int, bytes]:
    """Write what a resume needs: datasets, create_model_fn, specs (never overwriting a run's
    files), store rows and settings. Returns each new run's spec blob. Call with the
    experiment's lock held."""
    import datasets

    ids = [s.run_id for s in plan.specs]
    with Store(plan.dir) as store:
        first_free = store.next_run_id()
        taken = sorted(i for i in ids if i < first_free)
        if taken:
            raise ConfigError(
                f"run ids {taken} are taken in experiment {plan.name!r} (the first free id is "
                f"{first_free}); take new ids from Store.next_run_id()"
            )
    data = make_private_dir(plan.dir / "data")
    if not (data / "train").exists():
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            plan.train.save_to_disk(str(data / "train"))
            if plan.eval is not None:
                plan.eval.save_to_disk(str(data / "eval"))
        finally:
            if bars:
                datasets.enable_progress_bars()
    specfiles.write_create_model_fn(plan.dir, plan.create_model_fn)
    blobs = {spec.run_id: specfiles.write_spec(plan.dir, spec) for spec in plan.specs}
    with Store(plan.dir) as store:
        store.set_meta(
            name=plan.name,
            fingerprint=plan.fingerprint,
            seed=plan.seed,
            num_chunks=plan.num_chunks,
            train_rows=len(plan.train),
            has_eval=plan.eval is not None,
            max_slice_steps=plan.max_slice_steps,
            fusion=plan.fusion.to_dict() if plan.fusion is not None else None,
            pruner={
                "type": plan.pruner.to_dict()["type"],
                "metric": plan.pruner.metric,
                "mode": plan.pruner.mode,
            },
            pruner_state=plan.pruner.to_dict(),
            tracking_uri=plan.tracking_uri,
            slice_timeout=plan.slice_timeout,
            status="running",
        )
        for spec in plan.specs:
            store.add_run(
                spec.run_id, spec.params, RunStatus.PENDING.value, spec.plan.total_steps,
                spec.plan.total_chunks, spec.parent_run_id,
            )  # fmt: skip
    return blobs


def entry_for(
    spec: Any, name: str, spec_blob: bytes | None = None, warm_start: bool = False
) -> RunEntry:
    """The scheduler's registration record of a new run (see ``SchedulerActor.add_runs``); a
    clone names its parent in ``spec.parent_run_id``."""
    tags = {"rf_ray.experiment": name, "rf_ray.run_id": str(spec.run_id)}
    if spec.parent_run_id is not None:
        tags["rf_ray.parent_run_id"] = str(spec.parent_run_id)
    return RunEntry(
        run_id=spec.run_id,
        plan=spec.plan.to_dict(),
        spec_blob=spec_blob if spec_blob is not None else specfiles.spec_blob(spec),
        params=spec.params,
        tags=tags,
        fusion_key=spec.fusion_key,
        fusion_tokens=spec.fusion_tokens,
        parent_run_id=spec.parent_run_id,
        warm_start=warm_start,
    )


# ---------------------------------------------------------------------------- the lock
def take_lock(exp_dir: Path, wait_s: float = LOCK_WAIT_SECONDS) -> Any:
    """Hold the experiment's lock (before anything is written). Held by a live driver's
    scheduler: refused. Held while the recorded driver is gone (it crashed, its actors are
    winding down): wait for it, at most ``wait_s`` seconds, then take it."""
    from actors.scheduler_actor import LOCK_FILE, hold_experiment_lock

    try:
        return hold_experiment_lock(str(exp_dir))
    except OpError:
        if not launch.driver_gone(exp_dir):
            raise ConfigError(
                f"experiment at {exp_dir} is already running (its scheduler holds {LOCK_FILE} "
                "and its driver is alive): steer it with `rf-ray ops`, or wait for it to finish"
            ) from None
    logger.warning(
        "experiment at %s: its driver is gone but its scheduler still holds %s; waiting up to "
        "%g s for it to wind down",
        exp_dir, LOCK_FILE, wait_s,
    )  # fmt: skip
    try:
        return hold_experiment_lock(str(exp_dir), wait_s=wait_s)
    except OpError:
        raise ConfigError(
            f"experiment at {exp_dir}: its driver is gone, but its scheduler still held "
            f"{LOCK_FILE} after {wait_s:g} s; stop its Ray actors (or the Ray cluster) and retry"
        ) from None


def _clear_leftover_scheduler(exp_dir: Path) -> None:
    """With the lock held, a scheduler registered under the experiment's name is a finished
    or dead one (kill it: its name is needed), or one another driver is starting right now
    (refuse)."""
    import ray

    try:
        old = ray.get_actor(scheduler_name(exp_dir), namespace=NAMESPACE)
    except ValueError:
        return
    from ray.exceptions import GetTimeoutError, RayActorError

    try:
        finished = ray.get(old.is_finished.remote(), timeout=10)
    except GetTimeoutError:  # still in its constructor, waiting for the lock we hold
        finished = False
    except RayActorError:  # dead or dying: it cannot be running the experiment
        finished = True
    if not finished:
        raise ConfigError(
            f"experiment at {exp_dir} is being started by another driver right now; steer it "
            "with `rf-ray ops` once it runs"
        )
    with contextlib.suppress(Exception):
        ray.kill(old)


# ---------------------------------------------------------------------------- actors
@dataclass
class _Started:
    """What a start or resume has started so far (torn down if it fails)."""

    ray: bool
    exp_dir: Path
    actors: list[Any] = field(default_factory=list)

    def teardown(self) -> None:
        import ray

        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)
        if self.actors:
            _wait_unlocked(self.exp_dir)
        if self.ray:
            ray.shutdown()


def _wait_unlocked(exp_dir: Path, wait_s: float = LOCK_WAIT_SECONDS) -> None:
    """Wait (bounded) until a scheduler just killed has let go of the experiment's lock, so that
    the next start in this process is not refused by a scheduler that is still dying."""
    from actors.scheduler_actor import hold_experiment_lock

    try:
        hold_experiment_lock(str(exp_dir), wait_s=wait_s).close()
    except OpError:
        logger.warning(
            "experiment at %s: still locked %g s after its actors were killed", exp_dir, wait_s
        )


def _start_actors(
    name: str,
    exp_dir: Path,
    tracking_uri: str,
    create_model_fn: Any,
    has_eval: bool,
    pruner_state: dict[str, Any],
    max_slice_steps: int | None,
    num_executors: int,
    fusion: dict[str, Any] | None,
    slice_timeout: float | None,
    lock: Any,
    started: _Started,
) -> tuple[Any, list[Any]]:
    """Start the executor(s) and the scheduler, handing the experiment lock to the scheduler."""
    import ray

    from actors.base_model import BaseModelActor
    from actors.checkpoint import remove_partial_writes
    from actors.scheduler_actor import SchedulerActor
    from actors.tracking import Tracker

    gpus = int(ray.cluster_resources().get("GPU", 0))
    removed = remove_partial_writes(exp_dir)  # before an executor could write
    if removed:
        logger.info("removed %d interrupted checkpoint writes under %s", len(removed), exp_dir)
    # The MLflow experiment is created here, once, before trials log to it concurrently.
    Tracker(tracking_uri, name).ensure_experiment()  # raises now if MLflow is unreachable
    _clear_leftover_scheduler(exp_dir)
    # Datasets travel as paths to the experiment's Arrow copy (see ``persist``).
    train_ref = str(exp_dir / "data" / "train")
    eval_ref = str(exp_dir / "data" / "eval") if has_eval else None
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    executor_cls: Any = ray.remote(BaseModelActor)
    executors = []
    for _ in range(num_executors):
        executors.append(
            executor_cls.options(
                num_cpus=0 if gpus else 1,
                num_gpus=1 if gpus else 0,
                max_restarts=EXECUTOR_RESTARTS,
                max_task_retries=0,  # a lost slice is re-run by its trial, from the checkpoint
            ).remote(create_model_fn, train_ref, eval_ref, None, None if gpus else threads)
        )
        started.actors.append(executors[-1])
    scheduler: Any = (
        ray.remote(SchedulerActor)
        .options(
            name=scheduler_name(exp_dir), namespace=NAMESPACE, num_cpus=0, max_concurrency=10_000
        )
        .remote(
            name,
            str(exp_dir),
            pruner_state,
            executors,
            has_eval,
            max_slice_steps,
            tracking_uri,
            fusion,
            slice_timeout,
            HANDOVER_SECONDS,
        )
    )
    started.actors.append(scheduler)
    lock.close()  # hand the lock over: the scheduler takes it as it comes up
    ray.get(scheduler.ready.remote(), timeout=SCHEDULER_UP_SECONDS)
    return scheduler, executors


def executor_count(num_executors: int | None) -> int:
    """One executor per GPU of the cluster (one on the CPU without GPUs); a request for more
    GPUs than the cluster has is refused before anything starts."""
    import ray

    if num_executors is not None and (
        isinstance(num_executors, bool) or not isinstance(num_executors, int) or num_executors < 1
    ):
        raise ConfigError(f"num_executors must be None or an int >= 1, got {num_executors!r}")
    ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if num_executors is None:
        return max(gpus, 1)
    if num_executors > max(gpus, 1):
        raise ConfigError(
            f"num_executors={num_executors} but the Ray cluster has {gpus} GPU(s); use "
            f"num_executors <= {max(gpus, 1)} (one executor per GPU, or one on the CPU)"
        )
    return num_executors


def start(
    plan: Plan,
    num_executors: int | None = None,
    hold: str | None = None,
    lock_wait_s: float = LOCK_WAIT_SECONDS,
) -> Session:
    """Persist the experiment, start its actors and its runs. ``hold``: a token that keeps the
    experiment open, even with no live run, until ``scheduler.unhold(token)``.

    The experiment's lock is taken before anything is written (a running experiment is refused,
    its store untouched); a start that fails tears down what it started and puts the store
    back as it was."""
    import ray

    started = _Started(ensure_ray(), plan.dir)
    try:
        num_executors = executor_count(num_executors)  # checked before anything is written
        lock = take_lock(plan.dir, lock_wait_s)
    except BaseException:
        started.teardown()
        raise
    added: list[int] = []
    new_dirs: list[Path] = []
    try:
        # Recorded once the lock is ours: until then the record names the driver that holds it
        # (``take_lock`` asks whether that one is gone).
        launch.record_cluster(plan.dir)
        with Store(plan.dir) as store:
            meta_before, existing = store.meta(), {r["run_id"] for r in store.runs()}
        added = [s.run_id for s in plan.specs if s.run_id not in existing]
        new_dirs = [plan.dir / "runs" / str(i) for i in added]
        new_dirs = [d for d in new_dirs if not d.exists()]
        blobs = persist(plan)
        scheduler, executors = _start_actors(
            plan.name, plan.dir, plan.tracking_uri, plan.create_model_fn, plan.eval is not None,
            plan.pruner.to_dict(), plan.max_slice_steps, num_executors,
            plan.fusion.to_dict() if plan.fusion is not None else None, plan.slice_timeout,
            lock, started,
        )  # fmt: skip
        entries = [entry_for(s, plan.name, blobs[s.run_id]) for s in plan.specs]
        ray.get(scheduler.add_runs.remote(entries))
        if hold is not None:  # before wait_done, which would see an empty experiment as done
            ray.get(scheduler.hold.remote(hold))
    except BaseException:
        started.teardown()
        if added:  # put the store back as it was (only what this start added goes)
            with Store(plan.dir) as store:
                store.undo_start(added, meta_before)
            for run_dir in new_dirs:  # and the spec files it wrote for those runs
                shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.close()
    session = Session(plan.name, plan.dir, scheduler, executors, started.ray, time.perf_counter())
    session.params = {s.run_id: s.params for s in plan.specs}
    session.done_ref = scheduler.wait_done.remote()
    return session


def resume(
    exp_dir: Path, num_executors: int | None = None, lock_wait_s: float = LOCK_WAIT_SECONDS
) -> Session:
    """Restart a stopped driver's experiment from its directory (see module docstring). Right
    after a crash, waits (bounded) for the dead driver's scheduler to release the lock."""
    import ray

    if not Store.exists(exp_dir):
        raise ConfigError(f"experiment at {exp_dir} has nothing to resume (no store)")
    started = _Started(ensure_ray(), exp_dir)
    try:
        num_executors = executor_count(num_executors)
        lock = take_lock(exp_dir, lock_wait_s)
    except BaseException:
        started.teardown()
        raise
    try:
        with Store(exp_dir) as store:
            meta, runs = store.meta(), store.runs()
            steps = {row["run_id"]: store.step_metrics(row["run_id"]) for row in runs}
        if not runs:
            raise ConfigError(f"experiment at {exp_dir} has no runs to resume")
        launch.record_cluster(exp_dir)
        name = meta["name"]
        entries, params = [], {}
        for row in runs:
            spec, blob = specfiles.read_spec(exp_dir, row["run_id"])
            entries.append(_resumed_entry(exp_dir, entry_for(spec, name, blob), row, steps))
            params[row["run_id"]] = row["params"]
        pruner = pruner_from_dict(meta["pruner_state"])
        scheduler, executors = _start_actors(
            name, exp_dir, meta["tracking_uri"], specfiles.read_create_model_fn(exp_dir),
            bool(meta["has_eval"]), pruner.to_dict(), meta.get("max_slice_steps"),
            num_executors, meta.get("fusion"),
            meta.get("slice_timeout", launch.DEFAULT_SLICE_TIMEOUT), lock, started,
        )  # fmt: skip
        ray.get(scheduler.add_runs.remote(entries))
    except BaseException:
        started.teardown()  # the store is as it was: nothing above wrote to it
        raise
    finally:
        lock.close()
    session = Session(name, exp_dir, scheduler, executors, started.ray, time.perf_counter())
    session.params = params
    session.done_ref = scheduler.wait_done.remote()
    return session


def _resumed_entry(
    exp_dir: Path,
    entry: RunEntry,
    row: dict[str, Any],
    steps: dict[int, list[tuple[int, dict[str, float]]]],
) -> RunEntry:
    """A stored run's registration with its progress: status, steps, metrics, the step metrics
    of its partial chunk and its charged executor deaths, so that the resumed scheduler's view
    equals the one it had when the driver died."""
    import dataclasses

    from policies.chunking import ChunkPlan

    plan = ChunkPlan.from_dict(entry.plan)
    done = int(row["steps_done"])
    chunk_steps: list[dict[str, float]] = []
    if plan.chunks_done(done) < plan.total_chunks:
        start, _ = plan.chunk_bounds(plan.chunks_done(done))
        chunk_steps = [m for _, m in steps[row["run_id"]] if start < int(m["step"]) <= done]
    return dataclasses.replace(
        entry,
        status=row["status"],
        steps_done=done,
        pruned_at=row["pruned_at"],
        checkpoint=_checkpoint_at(exp_dir, row),
        mlflow_run_id=row["mlflow_run_id"],
        last_metric=row["last_metric"],
        best_metric=row["best_metric"],
        chunk_steps=chunk_steps,
        failures=int(row.get("failures") or 0),
    )


def _checkpoint_at(exp_dir: Path, row: dict[str, Any]) -> str | None:
    """The checkpoint of the run's last recorded slice (a newer one may exist if the driver
    died between the executor writing it and the scheduler recording the slice)."""
    if not row["steps_done"]:
        return None
    path = exp_dir / "runs" / str(row["run_id"]) / "checkpoints" / f"step-{row['steps_done']:08d}"
    return str(path) if resolve(path).exists() else row["checkpoint"]


# ---------------------------------------------------------------------------- waiting
def wait(session: Session, live_view: bool = True, differing: list[str] | None = None) -> None:
    """Block until every run is over, refreshing the live view; then record the outcome."""
    import ray

    from rf_ray.live import LiveView

    if session.finished:
        return
    from ray.exceptions import ActorUnavailableError

    view = LiveView(
        session.name, session.params, differing or [], enabled=live_view, exp_dir=session.dir
    )
    lost = 0
    with view:
        while True:
            ready, _ = ray.wait([session.done_ref], timeout=0.5)
            try:
                view.update(ray.get(session.scheduler.snapshot.remote()))
                if ready:
                    session.outcomes = ray.get(session.done_ref)
                    break
            except ActorUnavailableError as exc:
                # The scheduler is alive but a call to it failed in transit (seen: a connection
                # reset under load). The experiment goes on without us; ask again. A dead
                # scheduler raises ActorDiedError instead, which is not caught.
                lost += 1
                if lost > SCHEDULER_UNAVAILABLE_RETRIES:
                    raise
                logger.warning("scheduler unavailable (%s); waiting again", exc)
                time.sleep(min(2.0**lost, 30.0))
                session.done_ref = session.scheduler.wait_done.remote()  # idempotent
    _finish(session)


def _finish(session: Session) -> None:
    import ray

    wall = time.perf_counter() - session.start_time
    stats = ray.get([e.stats.remote() for e in session.executors])
    busy = sum(s["busy_seconds"] for s in stats)
    with Store(session.dir) as store:
        store.set_meta(
            status="finished",
            stats={
                "wall_seconds": wall,
                "executors": stats,
                "base_loads": sum(sum(s["base_loads"].values()) for s in stats),
                "busy_fraction": busy / max(wall * len(stats), 1e-9),
            },
        )
    session.finished = True


def stop(session: Session) -> None:
    """Kill the experiment's actors; shut Ray down if this driver started it. Safe to call
    again (the second call does nothing)."""
    import ray

    if session.stopped:
        return
    session.stopped = True
    if not ray.is_initialized():
        return
    for actor in [*session.executors, session.scheduler]:
        try:
            ray.kill(actor)
        except Exception:  # already gone
            logger.debug("actor already gone", exc_info=True)
    if not session.finished:  # a killed scheduler lets go of the lock as its process ends
        _wait_unlocked(session.dir)
    if session.started_ray:
        ray.shutdown()
