"""Running an experiment on Ray: start, watch, resume and stop its actors.

``start`` (a new ``Plan`` from ``run_fit``) and ``resume`` (``Plan.from_store``) share one
path (``_start``). It first takes the experiment directory's lock (a running experiment is
refused before anything is written; one whose driver just crashed is waited for, bounded),
then makes a new plan durable before any actor runs (``rf_ray.plan.persist``: the store's runs
and settings, the datasets as Arrow files, each run's spec). It then starts the executor(s) and
the named scheduler, hands it the lock, and the scheduler starts one trial per run. A start or
resume that fails tears down what it started and puts the store back as it was. ``resume``
rebuilds all of it from the experiment directory after the driver died: every run restarts
from its last completed slice (its durable checkpoint), and the pruner from its stored state,
so the outcome equals an uninterrupted run with the same seed.

What is stored as what: tensors (checkpoints) in safetensors, state in JSON and SQLite, data in
Arrow, run configs in JSON; the user's functions (``create_model_fn``, formatting and reward
functions) by importable reference (``module:qualname``), cloudpickle only for closures and
lambdas (``rf_ray/spec_store.py``). Files are private to their owner (0600, directories 0700).
Opening an experiment directory imports the referenced modules and unpickles those functions:
open only directories you trust (docs/security.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.storage import lock as experiment_lock
from actors.storage.footprint import Footprint
from actors.storage.layout import ExperimentDir
from actors.storage.lock import LOCK_WAIT_SECONDS, wait_unlocked
from actors.storage.store import PRUNING_ERROR_KEY, Store
from policies.errors import ConfigError
from rf_ray.cluster import (
    NAMESPACE,
    clear_leftover_scheduler,
    driver_gone,
    ensure_ray,
    record_cluster,
    scheduler_name,
)
from rf_ray.plan import Plan, Undo, persist

logger = logging.getLogger(__name__)

SCHEDULER_UNAVAILABLE_RETRIES = 8
"""How often ``wait`` re-asks a scheduler that is alive but whose call failed in transit."""

EXECUTOR_RESTARTS = -1
"""Executor processes restart without a shared limit. What bounds restarts is the charge per run:
a run whose call was in flight when the executor died twice, with no slice of it recorded in
between, fails (``actors.scheduler``), and a run past its slice deadline fails at once, so one
run's code causes at most two restarts per slice of it and a finite experiment finitely many. A
shared, fixed budget is what let one bad run use up the restarts of every run (issue 12, item 3).
"""

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
            wait_unlocked(self.exp_dir)
        if self.ray:
            ray.shutdown()


def _start_actors(
    plan: Plan, num_executors: int, lock: Any, started: _Started
) -> tuple[Any, list[Any]]:
    """Start the executor(s) and the scheduler, handing the experiment lock to the scheduler.
    The executors come first: their start-up overlaps the driver's MLflow set-up."""
    import ray

    from actors.base_model_actor import BaseModelActor
    from actors.scheduler_actor import SchedulerActor
    from actors.storage.checkpoint import remove_partial_writes
    from actors.tracking import Tracker

    exp_dir = plan.dir
    gpus = int(ray.cluster_resources().get("GPU", 0))
    removed = remove_partial_writes(exp_dir)  # before an executor could write
    if removed:
        logger.info("removed %d interrupted checkpoint writes under %s", len(removed), exp_dir)
    clear_leftover_scheduler(exp_dir)  # refuses a scheduler another driver is starting now
    # Datasets travel as paths to the experiment's Arrow copy (see ``persist``).
    layout = ExperimentDir(exp_dir)
    train_ref = str(layout.train_data)
    eval_ref = str(layout.eval_data) if plan.settings.has_eval else None
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
            ).remote(
                plan.create_model_fn,
                train_ref,
                eval_ref,
                cpu_threads=None if gpus else threads,
                log_dir=str(exp_dir),
            )
        )
        started.actors.append(executors[-1])
    # While the executors start (a process, torch, the base model: the longest part of start-up)
    # the driver creates the MLflow experiment, once, before trials log to it concurrently.
    Tracker(plan.tracking_uri, plan.name).ensure_experiment()  # raises if MLflow is unreachable
    scheduler: Any = (
        ray.remote(SchedulerActor)
        .options(
            name=scheduler_name(exp_dir), namespace=NAMESPACE, num_cpus=0, max_concurrency=10_000
        )
        .remote(
            plan.name, str(exp_dir), plan.settings, executors, plan.tracking_uri, HANDOVER_SECONDS
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
    """Persist a new plan (``Experiment.run_fit``), start its actors and its runs. ``hold``: a
    token that keeps the experiment open, even with no live run, until
    ``scheduler.unhold(token)``."""
    return _start(plan.dir, lambda: plan, num_executors, hold, lock_wait_s)


def resume(
    exp_dir: Path, num_executors: int | None = None, lock_wait_s: float = LOCK_WAIT_SECONDS
) -> Session:
    """Restart a stopped driver's experiment from its directory (``Plan.from_store``, read once
    the lock is ours). Right after a crash, waits (bounded) for the dead driver's scheduler to
    release the lock."""
    if not Store.exists(exp_dir):
        raise ConfigError(f"experiment at {exp_dir} has nothing to resume (no store)")
    return _start(exp_dir, lambda: Plan.from_store(exp_dir), num_executors, None, lock_wait_s)


def _start(
    exp_dir: Path,
    make_plan: Callable[[], Plan],
    num_executors: int | None,
    hold: str | None,
    lock_wait_s: float,
) -> Session:
    """The one path of start and resume. The experiment's lock is taken before anything is
    written or read (a running experiment is refused, its store untouched); a start that fails
    tears down what it started and puts the store back as it was."""
    import ray

    started = _Started(ensure_ray(), exp_dir)
    footprint = Footprint.before_lock(exp_dir)  # a start that fails leaves nothing behind
    try:
        num_executors = executor_count(num_executors)  # checked before anything is written
        lock = experiment_lock.take(exp_dir, lambda: driver_gone(exp_dir), lock_wait_s)
    except BaseException:
        started.teardown()
        raise
    footprint.after_lock()
    undo: Undo | None = None
    try:
        plan = make_plan()
        # Recorded once the lock is ours: until then the record names the driver that holds it
        # (``take`` asks whether that one is gone).
        record_cluster(exp_dir)
        undo = Undo(plan)
        blobs = persist(plan) if plan.is_new else {}
        scheduler, executors = _start_actors(plan, num_executors, lock, started)
        entries = plan.registrations(blobs)
        ray.get(scheduler.add_runs.remote(entries))
        if hold is not None:  # before wait_done, which would see an empty experiment as done
            ray.get(scheduler.hold.remote(hold))
    except BaseException:
        started.teardown()
        if undo is not None:
            undo()
        footprint.restore(lock)
        raise
    finally:
        lock.close()
    session = Session(plan.name, exp_dir, scheduler, executors, started.ray, time.perf_counter())
    session.params = {e.run_id: e.params for e in entries}
    session.done_ref = scheduler.wait_done.remote()
    return session


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
        pruning_error = store.meta().get(PRUNING_ERROR_KEY)
        store.set_meta(
            status="finished",
            stats={
                "wall_seconds": wall,
                "executors": stats,
                "base_loads": sum(sum(s["base_loads"].values()) for s in stats),
                "busy_fraction": busy / max(wall * len(stats), 1e-9),
            },
        )
    if pruning_error:
        logger.error("experiment %s: %s", session.name, pruning_error)
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
        wait_unlocked(session.dir)
    # The experiment at rest: no lock file, no SQLite sidecars (none if another driver took
    # it meanwhile: then it is that one's).
    experiment_lock.tidy(session.dir, lambda: Store.put_to_rest(session.dir))
    if session.started_ray:
        ray.shutdown()
