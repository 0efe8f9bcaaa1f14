"""Interactive control of a running experiment, from any process attached to its Ray cluster.

``Experiment`` methods, ``rf-ray ops`` and a Ray Job or Tune driver all go through these
functions: they find the experiment's named scheduler actor and send it an op, which it applies
at the run's next slice boundary. ``clone_modify`` builds and validates the clone's spec here, in
the caller's process (where the user's functions live), before the scheduler sees it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from actors.engine.spec import RunSpec
from actors.storage.store import Store
from policies.errors import ConfigError, OpError
from policies.settings import ExperimentSettings
from policies.state import OPS
from rf_ray import spec_store
from rf_ray.cluster import (
    NAMESPACE,
    ClusterUnreachableError,
    ensure_ray,
    recorded_cluster,
    scheduler_name,
)
from rf_ray.fields import LORA_SHORTHAND, check_lora_field, check_trainer_field
from rf_ray.knobs import is_knob
from rf_ray.plan import entry_for
from rf_ray.specs import RunConfig, build_specs

_CALLABLE_FIELDS = ("formatting_func", "compute_metrics", "reward_funcs")


def attach(exp_dir: str | Path) -> Any:
    """The named scheduler actor of the experiment running from ``exp_dir``, connecting to Ray
    if needed: to ``RAY_ADDRESS``, else to the cluster the experiment's driver recorded in
    ``exp_dir`` (so a script's private cluster is reachable from another terminal), else to a
    ``ray start`` head (see ``cluster.ensure_ray``)."""
    import ray

    try:
        ensure_ray(exp_dir)
    except ClusterUnreachableError as e:
        raise OpError(str(e)) from None
    name = scheduler_name(exp_dir)
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise OpError(
            f"experiment {Path(exp_dir).name!r} at {exp_dir} is not running on this Ray cluster "
            f"(no actor {name!r}){_elsewhere(exp_dir)}; start it with run_fit, or resume it"
        ) from None


def _elsewhere(exp_dir: str | Path) -> str:
    """A hint when the experiment's driver recorded another cluster than the one this process
    is connected to (e.g. a notebook already attached to a cluster of its own)."""
    import ray

    record = recorded_cluster(exp_dir)
    here = ray.get_runtime_context().gcs_address
    if record is None or record.get("address") in (None, here):
        return ""
    return (
        f"; its driver recorded the cluster at {record['address']} but this process is "
        f"connected to {here}: run this from a fresh process (e.g. `rf-ray ops`), or "
        "ray.shutdown() first"
    )


def apply(scheduler: Any, op: str, run_id: int) -> dict[str, Any]:
    """Send stop/resume/delete/prune for ``run_id``; raise ``OpError`` if it cannot apply."""
    import ray

    if op not in OPS:
        raise OpError(f"unknown op {op!r}; ops are: {', '.join(OPS)}, clone_modify")
    if isinstance(run_id, bool) or not isinstance(run_id, int):
        raise OpError(f"run id must be an int, got {run_id!r}")
    return _unwrap(lambda: ray.get(scheduler.op.remote(op, run_id)))


# RapidFire-shaped change sections -> the flat key prefix they stand for.
_SECTIONS = {
    "training_args": "",
    "peft_config": "lora.",
    "model_kwargs": "model_kwargs.",
    "tokenizer_kwargs": "tokenizer_kwargs.",
    "generation_config": "generation_config.",
}


def flat_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """RapidFire's nested form (``{"training_args": {"learning_rate": 1e-4}, "peft_config":
    {"r": 32}}``, or an ``RFLoraConfig`` / ``RFSFTConfig`` as the value) as flat knob names
    (``{"learning_rate": 1e-4, "lora.r": 32}``); flat keys pass through. Raises
    ``ConfigError`` naming a key given twice."""
    from rf_ray.configs import RFLoraConfig, _TrainerKnobs

    out: dict[str, Any] = {}

    def put(key: str, value: Any, source: str) -> None:
        if key in out:
            raise ConfigError(f"changes sets {key!r} twice (again in {source}); give it once")
        out[key] = value

    for key, value in changes.items():
        if key in _SECTIONS and isinstance(value, (dict, RFLoraConfig, _TrainerKnobs)):
            items = dict(value) if isinstance(value, dict) else dict(value.kwargs)
            if isinstance(value, _TrainerKnobs):
                items.update(value.lora_kwargs)
            for name, v in items.items():
                if not isinstance(name, str):
                    raise ConfigError(f"changes[{key!r}] keys must be str, got {name!r}")
                put(_SECTIONS[key] + name, v, f"changes[{key!r}]")
        elif key in _SECTIONS:
            raise ConfigError(
                f"changes[{key!r}]={value!r} must be a dict of field -> value, e.g. "
                f"{{{key!r}: {{'learning_rate': 1e-4}}}}, or flat names such as 'lora.r'"
            )
        else:
            put(key, value, "changes")
    return out


def modified(run: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """``run`` with ``changes`` applied: TRL fields, LoRA fields (``lora_rank`` or ``lora.r``
    style), ``model_kwargs.x`` / ``tokenizer_kwargs.x`` / ``generation_config.x``, or the
    functions; or the same in RapidFire's nested shape (``flat_changes``). Raises
    ``ConfigError`` naming a bad knob."""
    if not isinstance(changes, dict) or not changes:
        raise ConfigError(f"changes must be a non-empty dict of knob -> value, got {changes!r}")
    changes = flat_changes(changes)
    training_args, lora = dict(run.training_args), dict(run.lora)
    kwargs: dict[str, Any] = {
        "model_kwargs": dict(run.model_kwargs),
        "tokenizer_kwargs": dict(run.tokenizer_kwargs),
        "generation_config": dict(run.generation_config or {}),
    }
    touched: set[str] = set()
    fields: dict[str, Any] = {}
    for key, value in changes.items():
        if is_knob(value):
            raise ConfigError(f"changes[{key!r}] is a knob ({value!r}); a clone takes one value")
        section = key.split(".", 1)[0]
        if key in _CALLABLE_FIELDS:
            fields[key] = value
        elif key in LORA_SHORTHAND or key.startswith("lora."):
            name = LORA_SHORTHAND.get(key, key.removeprefix("lora."))
            check_lora_field(name, f"changes[{key!r}]")
            lora[name] = value
        elif "." in key and section in kwargs:
            kwargs[section][key.removeprefix(section + ".")] = value
            touched.add(section)
        else:
            check_trainer_field(run.trainer_type, key, f"changes[{key!r}]")
            training_args[key] = value
    if "generation_config" not in touched:
        kwargs.pop("generation_config")  # keep None when the run had none
    # RunConfig validates names and values; build_specs validates TRL/PEFT construction.
    return dataclasses.replace(run, training_args=training_args, lora=lora, **kwargs, **fields)


def clone_modify(
    scheduler: Any,
    exp_dir: Path,
    run_id: int,
    changes: dict[str, Any],
    warm_start: bool = False,
) -> dict[str, Any]:
    """Clone a run with ``changes``; warm start copies its adapter, optimizer, LR schedule and
    data position. Returns ``{"run_id": new_id, ...}``."""
    import cloudpickle
    import ray

    parent = cloudpickle.loads(_unwrap(lambda: ray.get(scheduler.get_spec_blob.remote(run_id))))
    new_run = modified(parent.model_config, changes)
    _, answer = _add_run(scheduler, exp_dir, _meta(exp_dir), new_run, parent, warm_start)
    return answer


def add_runs(scheduler: Any, exp_dir: Path, runs: list[RunConfig]) -> list[int]:
    """Add new concrete runs to a running experiment (e.g. a search algorithm's suggestions).
    Each is validated here first; returns their run ids."""
    meta = _meta(exp_dir)
    return [_add_run(scheduler, exp_dir, meta, run)[0] for run in runs]


def _add_run(
    scheduler: Any,
    exp_dir: Path,
    meta: dict[str, Any],
    run: RunConfig,
    parent: RunSpec | None = None,
    warm_start: bool = False,
) -> tuple[int, dict[str, Any]]:
    """The one path of ``add_runs`` and ``clone_modify``: reserve a run id, build (so validate)
    the run's spec, check a warm start against its ``parent``, write the spec and register the
    run with the scheduler. Returns the new id and the scheduler's answer."""
    import ray

    settings = ExperimentSettings.from_meta(meta)
    if settings is None:
        raise OpError(f"experiment at {exp_dir} has no settings yet: it is starting; retry")
    new_id = _unwrap(lambda: ray.get(scheduler.reserve_run_id.remote()))
    # The experiment's rows, not parent.plan.num_examples: for GRPO that counts sampler samples.
    (spec,) = build_specs(
        [run], exp_dir, train_rows=meta["train_rows"], num_chunks=settings.num_chunks,
        seed=settings.seed, first_run_id=new_id,
    )  # fmt: skip
    if parent is not None:
        spec.parent_run_id = parent.run_id
        if warm_start:
            _check_warm_start(parent, spec)
    blob = spec_store.write_spec(exp_dir, spec)
    entry = entry_for(spec, meta["name"], blob, warm_start=warm_start)
    return new_id, _unwrap(lambda: ray.get(scheduler.add_clone.remote(entry)))


def _meta(exp_dir: Path) -> dict[str, Any]:
    """The experiment's stored settings (read-only)."""
    store = Store(exp_dir, readonly=True)
    try:
        return store.meta()
    finally:
        store.close()


def _check_warm_start(parent: RunSpec, clone: RunSpec) -> None:
    """A warm start reuses the parent's tensors and data position: shapes, chunk plan must match."""
    if parent.model_key != clone.model_key:
        raise ConfigError("a warm-started clone must keep the parent's base model; clone cold")
    if parent.plan != clone.plan:
        raise ConfigError(
            "a warm-started clone must keep the parent's chunk plan (batch size, gradient "
            f"accumulation, epochs, max_steps): {parent.plan} != {clone.plan}; clone cold"
        )
    for key in ("r", "target_modules", "use_dora", "bias"):
        if getattr(parent.lora_config, key, None) != getattr(clone.lora_config, key, None):
            raise ConfigError(
                f"a warm-started clone must keep the adapter's shape: lora.{key} "
                f"{getattr(parent.lora_config, key, None)!r} -> "
                f"{getattr(clone.lora_config, key, None)!r}; clone cold"
            )


def _unwrap(call: Any) -> Any:
    """Re-raise an ``OpError`` raised inside the scheduler actor as itself."""
    from ray.exceptions import RayTaskError

    try:
        return call()
    except RayTaskError as e:
        cause = e.cause if hasattr(e, "cause") else None
        if isinstance(cause, (OpError, ConfigError)):
            raise cause from None
        raise
