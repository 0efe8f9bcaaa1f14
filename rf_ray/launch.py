"""Starting, watching and stopping an experiment's actors on Ray.

``build_specs`` turns concrete run configs into ``RunSpec``s (building the TRL and PEFT config
objects, which validates them); ``start`` writes the experiment directory and starts the
scheduler, the executor(s) and one trial per run; ``wait`` blocks with a live view; ``stop``
releases them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.spec import RunSpec
from actors.store import Store
from policies.chunking import ChunkPlan
from policies.errors import ConfigError
from policies.pruning import Pruner
from policies.state import RunStatus
from rf_ray.config import RunConfig, build_lora_config, build_trl_config, describe

logger = logging.getLogger(__name__)
NAMESPACE = "rf_ray"


def scheduler_name(experiment: str) -> str:
    """The named-actor name under which other processes find a running experiment."""
    return f"rf_ray:{experiment}"


@dataclass
class Plan:
    """A validated experiment, ready to start; nothing has been written yet."""

    name: str
    dir: Path
    tracking_uri: str
    specs: list[RunSpec]
    create_model_fn: Callable[[Any], tuple[Any, Any]]
    train: Any
    eval: Any
    pruner: Pruner
    max_slice_steps: int | None
    fingerprint: str
    seed: int
    num_chunks: int
    differing: list[str] = field(default_factory=list)


@dataclass
class Session:
    """The actors of one running experiment."""

    plan: Plan
    scheduler: Any
    executors: list[Any]
    trials: dict[int, Any]
    refs: dict[int, Any]
    started_ray: bool
    start_time: float
    outcomes: dict[int, dict[str, Any]] = field(default_factory=dict)


def build_specs(
    runs: list[RunConfig],
    experiment_dir: Path,
    train_rows: int,
    num_chunks: int,
    seed: int,
    first_run_id: int = 1,
) -> list[RunSpec]:
    """One ``RunSpec`` per run, validating TRL/PEFT configs and the chunking of each."""
    specs = []
    for i, run in enumerate(runs):
        run_id = first_run_id + i
        training_args = dict(run.training_args)
        training_args.setdefault("seed", seed)
        concrete = RunConfig(**{**run.__dict__, "training_args": training_args})
        args = build_trl_config(concrete, str(experiment_dir / "runs" / str(run_id)), True)
        lora = build_lora_config(concrete)
        try:
            plan = ChunkPlan(
                num_examples=train_rows,
                batch_size=args.per_device_train_batch_size,
                grad_accum=args.gradient_accumulation_steps,
                num_chunks=num_chunks,
                num_train_epochs=float(args.num_train_epochs),
                max_steps=int(args.max_steps),
                drop_last=bool(args.dataloader_drop_last),
            )
        except ConfigError as e:
            raise ConfigError(f"run {run_id} ({describe(run)}): {e}") from e
        specs.append(
            RunSpec(
                run_id=run_id,
                model_key=concrete.model_key(),
                model_config=concrete,
                trainer_type=run.trainer_type,
                trl_args=args,
                lora_config=lora,
                plan=plan,
                seed=seed,
                params=concrete.flat_params(),
                formatting_func=run.formatting_func,
                compute_metrics=run.compute_metrics,
                reward_funcs=run.reward_funcs,
            )
        )
    return specs


def ensure_ray() -> bool:
    """Connect to a running Ray cluster (``RAY_ADDRESS``, a Ray Job, ``ray start``) or start a
    local one. Returns True when this call started it (so ``stop`` shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        return False
    ray.init(
        include_dashboard=False,
        object_store_memory=int(os.environ.get("RF_RAY_OBJECT_STORE_MB", "512")) * 2**20,
        logging_level=logging.WARNING,
    )
    return True


def start(plan: Plan, num_executors: int | None = None) -> Session:
    """Write the experiment directory and start all actors."""
    import cloudpickle
    import ray

    # Imported here, not at module level: they pull in torch, which the CLI does not need.
    from actors.base_model import BaseModelActor
    from actors.scheduler import SchedulerActor
    from actors.trial import TrialActor

    started = ensure_ray()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if num_executors is None:
        num_executors = max(gpus, 1)
    if gpus and num_executors > gpus:
        raise ConfigError(
            f"num_executors={num_executors} but the Ray cluster has {gpus} GPU(s); "
            f"use num_executors <= {gpus}"
        )

    plan.dir.mkdir(parents=True, exist_ok=True)
    store = Store(plan.dir)
    store.set_meta(
        name=plan.name,
        fingerprint=plan.fingerprint,
        seed=plan.seed,
        num_chunks=plan.num_chunks,
        pruner={
            "type": plan.pruner.to_dict()["type"],
            "metric": plan.pruner.metric,
            "mode": plan.pruner.mode,
        },
        tracking_uri=plan.tracking_uri,
        status="running",
    )
    for spec in plan.specs:
        store.add_run(
            spec.run_id, spec.params, RunStatus.PENDING.value, spec.plan.total_steps,
            spec.plan.total_chunks, spec.parent_run_id,
        )  # fmt: skip
    store.close()

    # The MLflow experiment is created here, once, before trials log to it concurrently.
    from actors.tracking import Tracker

    Tracker(plan.tracking_uri, plan.name)

    name = scheduler_name(plan.name)
    try:
        old = ray.get_actor(name, namespace=NAMESPACE)
        ray.kill(old)
    except ValueError:
        pass
    scheduler: Any = (
        ray.remote(SchedulerActor)
        .options(name=name, namespace=NAMESPACE, num_cpus=0, max_concurrency=10_000)
        .remote(
            str(plan.dir),
            plan.pruner.to_dict(),
            num_executors,
            plan.eval is not None,
            plan.max_slice_steps,
        )
    )
    train_ref = ray.put(plan.train)
    eval_ref = ray.put(plan.eval) if plan.eval is not None else None
    executor_cls = ray.remote(BaseModelActor)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    executors = [
        executor_cls.options(num_cpus=0 if gpus else 1, num_gpus=1 if gpus else 0).remote(
            plan.create_model_fn, train_ref, eval_ref, None, None if gpus else threads
        )
        for _ in range(num_executors)
    ]
    ray.get(scheduler.add_runs.remote({s.run_id: s.plan.to_dict() for s in plan.specs}))
    trial_cls: Any = ray.remote(TrialActor).options(num_cpus=0)
    trials, refs = {}, {}
    for spec in plan.specs:
        tags = {"rf_ray.experiment": plan.name, "rf_ray.run_id": str(spec.run_id)}
        if spec.parent_run_id is not None:
            tags["rf_ray.parent_run_id"] = str(spec.parent_run_id)
        trial = trial_cls.remote(
            spec.run_id, cloudpickle.dumps(spec), spec.params, tags, scheduler, executors,
            str(plan.dir), plan.tracking_uri, plan.name,
        )  # fmt: skip
        trials[spec.run_id] = trial
        refs[spec.run_id] = trial.run.remote()
    return Session(plan, scheduler, executors, trials, refs, started, time.perf_counter())


def wait(session: Session, live_view: bool = True, differing: list[str] | None = None) -> None:
    """Block until every run is over, refreshing the live view; then record the outcome."""
    import ray

    from rf_ray.live import LiveView

    view = LiveView(session.plan, differing or [], enabled=live_view)
    pending = dict(session.refs)
    with view:
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0.5)
            for ref in ready:
                run_id = next(r for r, x in pending.items() if x == ref)
                session.outcomes[run_id] = ray.get(ref)
                del pending[run_id]
            view.update(ray.get(session.scheduler.snapshot.remote()))
    _finish(session)


def _finish(session: Session) -> None:
    import ray

    wall = time.perf_counter() - session.start_time
    stats = ray.get([e.stats.remote() for e in session.executors])
    store = Store(session.plan.dir)
    for run_id, outcome in session.outcomes.items():
        store.update_run(
            run_id,
            mlflow_run_id=outcome.get("mlflow_run_id"),
            adapter_path=outcome.get("adapter_path"),
        )
    busy = sum(s["busy_seconds"] for s in stats)
    store.set_meta(
        status="finished",
        stats={
            "wall_seconds": wall,
            "executors": stats,
            "base_loads": sum(sum(s["base_loads"].values()) for s in stats),
            "busy_fraction": busy / max(wall * len(stats), 1e-9),
        },
    )
    store.close()


def stop(session: Session) -> None:
    """Kill the experiment's actors; shut Ray down if ``ensure_ray`` started it."""
    import ray

    for actor in [*session.trials.values(), *session.executors, session.scheduler]:
        try:
            ray.kill(actor)
        except Exception:  # already gone
            logger.debug("actor already gone", exc_info=True)
    if session.started_ray:
        ray.shutdown()
