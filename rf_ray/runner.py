"""Running an experiment on Ray: start, watch, resume and stop its actors.

``start`` makes the experiment durable before any actor runs: the store (runs, settings), the
datasets (Arrow files, ``datasets.save_to_disk``), and each run's spec. It then starts the
executor(s) and the named scheduler, which starts one trial per run. ``resume`` rebuilds all of
it from the experiment directory after the driver died: every run restarts from its last
completed slice (its durable checkpoint), and the pruner from its stored state, so the outcome
equals an uninterrupted run with the same seed.

What is stored as what: tensors (checkpoints) in safetensors, state in JSON and SQLite, data in
Arrow; the user's code (``create_model_fn``, formatting and reward functions, inside the run
specs) is stored with ``cloudpickle``, as Ray itself ships functions. Open only experiment
directories you created.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.store import Store
from policies.errors import ConfigError
from policies.pruning import pruner_from_dict
from policies.state import RunStatus
from rf_ray import specfiles
from rf_ray.launch import NAMESPACE, Plan, ensure_ray, scheduler_name

logger = logging.getLogger(__name__)

SCHEDULER_UNAVAILABLE_RETRIES = 8
"""How often ``wait`` re-asks a scheduler that is alive but whose call failed in transit."""

EXECUTOR_RESTARTS = 3
"""A killed executor process is restarted this many times; it reloads the base model once."""


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


# ---------------------------------------------------------------------------- persistence
def persist(plan: Plan) -> None:
    """Write what a resume needs, atomically: datasets, create_model_fn, specs, store rows."""

    plan.dir.mkdir(parents=True, exist_ok=True)
    import datasets

    data = plan.dir / "data"
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
    store = Store(plan.dir)
    try:
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
            status="running",
        )
        for spec in plan.specs:
            specfiles.write_spec(plan.dir, spec)
            store.add_run(
                spec.run_id, spec.params, RunStatus.PENDING.value, spec.plan.total_steps,
                spec.plan.total_chunks, spec.parent_run_id,
            )  # fmt: skip
    finally:
        store.close()


def entry_for(spec: Any, name: str, spec_blob: bytes | None = None) -> dict[str, Any]:
    """The scheduler's record of a run (see ``SchedulerActor.add_runs``)."""
    import cloudpickle

    tags = {"rf_ray.experiment": name, "rf_ray.run_id": str(spec.run_id)}
    if spec.parent_run_id is not None:
        tags["rf_ray.parent_run_id"] = str(spec.parent_run_id)
    return {
        "run_id": spec.run_id,
        "plan": spec.plan.to_dict(),
        "spec_blob": spec_blob or cloudpickle.dumps(spec),
        "params": spec.params,
        "tags": tags,
        "fusion_key": spec.fusion_key,
        "fusion_tokens": spec.fusion_tokens,
    }


# ---------------------------------------------------------------------------- actors
def _start_actors(
    name: str,
    exp_dir: Path,
    tracking_uri: str,
    create_model_fn: Any,
    train: Any,
    evals: Any,
    pruner_state: dict[str, Any],
    max_slice_steps: int | None,
    num_executors: int | None,
    fusion: dict[str, Any] | None = None,
) -> tuple[Any, list[Any], bool]:
    import ray

    from actors.base_model import BaseModelActor
    from actors.scheduler_actor import SchedulerActor
    from actors.tracking import Tracker

    started = ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    num_executors = executor_count(num_executors)
    # The MLflow experiment is created here, once, before trials log to it concurrently.
    Tracker(tracking_uri, name)
    actor_name = scheduler_name(exp_dir)
    with contextlib.suppress(ValueError):  # no leftover scheduler of that name
        ray.kill(ray.get_actor(actor_name, namespace=NAMESPACE))
    # Datasets travel as paths to the experiment's Arrow copy (see ``persist``).
    train_ref = str(exp_dir / "data" / "train")
    eval_ref = str(exp_dir / "data" / "eval") if evals is not None else None
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    executor_cls: Any = ray.remote(BaseModelActor)
    executors = [
        executor_cls.options(
            num_cpus=0 if gpus else 1,
            num_gpus=1 if gpus else 0,
            max_restarts=EXECUTOR_RESTARTS,
            max_task_retries=0,  # a lost slice is re-run by its trial, from the checkpoint
        ).remote(create_model_fn, train_ref, eval_ref, None, None if gpus else threads)
        for _ in range(num_executors)
    ]
    scheduler: Any = (
        ray.remote(SchedulerActor)
        .options(name=actor_name, namespace=NAMESPACE, num_cpus=0, max_concurrency=10_000)
        .remote(
            name,
            str(exp_dir),
            pruner_state,
            executors,
            evals is not None,
            max_slice_steps,
            tracking_uri,
            fusion,
        )
    )
    return scheduler, executors, started


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


def start(plan: Plan, num_executors: int | None = None, hold: str | None = None) -> Session:
    """Persist the experiment, start its actors and its runs. ``hold``: a token that keeps the
    experiment open, even with no live run, until ``scheduler.unhold(token)``."""
    import ray

    num_executors = executor_count(num_executors)  # checked before anything is written
    persist(plan)
    scheduler, executors, started = _start_actors(
        plan.name, plan.dir, plan.tracking_uri, plan.create_model_fn, plan.train, plan.eval,
        plan.pruner.to_dict(), plan.max_slice_steps, num_executors,
        plan.fusion.to_dict() if plan.fusion is not None else None,
    )  # fmt: skip
    entries = [entry_for(s, plan.name) for s in plan.specs]
    ray.get(scheduler.add_runs.remote(entries))
    if hold is not None:  # before wait_done, which would see an empty experiment as done
        ray.get(scheduler.hold.remote(hold))
    session = Session(plan.name, plan.dir, scheduler, executors, started, time.perf_counter())
    session.params = {s.run_id: s.params for s in plan.specs}
    session.done_ref = scheduler.wait_done.remote()
    return session


def resume(exp_dir: Path, num_executors: int | None = None) -> Session:
    """Restart a stopped driver's experiment from its directory (see module docstring)."""
    import datasets
    import ray

    from actors.scheduler_actor import experiment_locked

    if experiment_locked(str(exp_dir)):
        raise ConfigError(
            f"experiment at {exp_dir} is still running (its scheduler holds the lock): steer it "
            "with `rf-ray ops`; resume only an experiment whose driver is gone"
        )
    store = Store(exp_dir)
    try:
        meta, runs = store.meta(), store.runs()
    finally:
        store.close()
    if not runs:
        raise ConfigError(f"experiment at {exp_dir} has no runs to resume")
    name = meta["name"]
    train = datasets.load_from_disk(str(exp_dir / "data" / "train"))
    evals = datasets.load_from_disk(str(exp_dir / "data" / "eval")) if meta["has_eval"] else None
    create_model_fn = specfiles.read_create_model_fn(exp_dir)
    pruner = pruner_from_dict(meta["pruner_state"])
    scheduler, executors, started = _start_actors(
        name, exp_dir, meta["tracking_uri"], create_model_fn, train, evals, pruner.to_dict(),
        meta.get("max_slice_steps"), num_executors, meta.get("fusion"),
    )  # fmt: skip
    entries, params = [], {}
    for row in runs:
        spec, blob = specfiles.read_spec(exp_dir, row["run_id"])
        entry = entry_for(spec, name, blob)
        entry.update(
            status=row["status"],
            steps_done=row["steps_done"],
            pruned_at=row["pruned_at"],
            checkpoint=_checkpoint_at(exp_dir, row),
            mlflow_run_id=row["mlflow_run_id"],
        )
        entries.append(entry)
        params[row["run_id"]] = row["params"]
    ray.get(scheduler.add_runs.remote(entries))
    store = Store(exp_dir)
    store.set_meta(status="running")
    store.close()
    session = Session(name, exp_dir, scheduler, executors, started, time.perf_counter())
    session.params = params
    session.done_ref = scheduler.wait_done.remote()
    return session


def _checkpoint_at(exp_dir: Path, row: dict[str, Any]) -> str | None:
    """The checkpoint of the run's last recorded slice (a newer one may exist if the driver
    died between the executor writing it and the scheduler recording the slice)."""
    if not row["steps_done"]:
        return None
    path = exp_dir / "runs" / str(row["run_id"]) / "checkpoints" / f"step-{row['steps_done']:08d}"
    return str(path) if path.exists() else row["checkpoint"]


# ---------------------------------------------------------------------------- waiting
def wait(session: Session, live_view: bool = True, differing: list[str] | None = None) -> None:
    """Block until every run is over, refreshing the live view; then record the outcome."""
    import ray

    from rf_ray.live import LiveView

    if session.finished:
        return
    from ray.exceptions import ActorUnavailableError

    view = LiveView(session.name, session.params, differing or [], enabled=live_view)
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
    store = Store(session.dir)
    try:
        store.set_meta(
            status="finished",
            stats={
                "wall_seconds": wall,
                "executors": stats,
                "base_loads": sum(sum(s["base_loads"].values()) for s in stats),
                "busy_fraction": busy / max(wall * len(stats), 1e-9),
            },
        )
    finally:
        store.close()
    session.finished = True


def stop(session: Session) -> None:
    """Kill the experiment's actors; shut Ray down if this driver started it."""
    import ray

    for actor in [*session.executors, session.scheduler]:
        try:
            ray.kill(actor)
        except Exception:  # already gone
            logger.debug("actor already gone", exc_info=True)
    if session.started_ray:
        ray.shutdown()
