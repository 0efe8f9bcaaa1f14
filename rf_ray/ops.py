"""Interactive control of a running experiment, from any process attached to its Ray cluster.

``Experiment`` methods, ``rf-ray ops`` and a Ray Job or Tune driver all go through these
functions: they find the experiment's named scheduler actor and send it an op, which it applies
at the run's next slice boundary. ``clone_modify`` builds and validates the clone's spec here, in
the caller's process (where the user's functions live), before the scheduler sees it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any

from actors.engine.evals.spec import is_pipeline
from actors.engine.spec import RunSpec
from actors.storage.store import Store
from policies.errors import ConfigError, OpError
from policies.redact import shown
from policies.settings import ExperimentSettings
from policies.state import OPS
from rf_ray import spec_store
from rf_ray.cluster import (
    NAMESPACE,
    ClusterUnreachableError,
    connect,
    recorded_cluster,
    scheduler_name,
)
from rf_ray.compat import check_requirements, warn_replaced
from rf_ray.fields import LORA_SHORTHAND, check_lora_field, check_trainer_field, is_callable_list
from rf_ray.knobs import is_knob
from rf_ray.legacy import warn_legacy
from rf_ray.metrics import FromComputeMetrics, split_compute_metrics
from rf_ray.plan import entry_for
from rf_ray.specs import RunConfig, build_specs
from rf_ray.steerable import check_steerable, is_running, not_running, starting


def attach(exp_dir: str | Path) -> Any:
    """The named scheduler actor of the experiment running from ``exp_dir``.

    First the directory says whether the experiment can take ops (``rf_ray.steerable``: no such
    experiment, finished, not running, starting), as an ``OpError`` and without touching Ray.
    Then this process connects to the experiment's Ray cluster if it is on none: ``RAY_ADDRESS``,
    else the cluster its driver recorded in ``cluster.json`` (``cluster.connect``), never a new
    one. It then lives only as long as that cluster: a long-lived process (the dashboard) sends
    ops from a child instead (``rf_ray.remote``), as ``rf-ray ops`` does.
    """
    import ray

    exp_dir = Path(exp_dir)
    check_steerable(exp_dir, probe=not ray.is_initialized())
    try:
        connect(exp_dir)
    except ClusterUnreachableError as e:
        raise OpError(str(e)) from None
    name = scheduler_name(exp_dir)
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    elsewhere = _elsewhere(exp_dir)
    if elsewhere:
        raise OpError(
            f"experiment {exp_dir.name!r} at {exp_dir} is not running on this Ray cluster "
            f"(no actor {name!r}){elsewhere}"
        )
    check_steerable(exp_dir, probe=False)  # it may have ended meanwhile: say so
    if is_running(exp_dir):
        raise starting(exp_dir.name, "its scheduler is not registered yet")
    raise not_running(exp_dir)


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


@functools.cache
def function_fields() -> dict[str, tuple[bool, bool]]:
    """The run fields that take functions, found from the config classes: the parameters of
    ``RFModelConfig`` annotated with ``Callable``. Each maps to (whether a clone may change it:
    it is a field of ``RunConfig``; whether it takes a list of functions). The others
    (``eval_metrics_fn``, ``eval_prompts_fn``) are set once for a whole search."""
    from rf_ray.configs import RFModelConfig

    run_fields = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}
    out = {}
    for name, param in inspect.signature(RFModelConfig.__init__).parameters.items():
        if "Callable" in str(param.annotation):
            in_run = name in run_fields
            out[name] = (in_run, in_run and run_fields[name].startswith("list["))
    return out


NOT_CLONABLE = ("model_name", "trainer_type", "eval_generations")
"""Params a clone keeps from its parent, besides ``function_fields`` (the base model and the
trainer are the experiment's; generation metrics are set once for a search)."""


def read_only_params() -> list[str]:
    """The params the dashboard's clone form shows read-only: functions (text cannot carry
    code) and what a clone keeps from its parent."""
    return [*NOT_CLONABLE, *function_fields()]


def check_function_changes(changes: dict[str, Any]) -> None:
    """Refuse, before any run is added, a change of a function field that is not a function
    (text from the command line or the page, a typo'd value) or of one a clone cannot change."""
    for key, value in changes.items():
        if key not in function_fields():
            continue
        clonable, many = function_fields()[key]
        if not clonable:
            raise ConfigError(
                f"changes[{key!r}]: a clone keeps its parent's {key} (set once for the whole "
                "search in RFModelConfig, so that all runs are scored alike); leave it out"
            )
        if is_callable_list(value) if many else (value is None or callable(value)):
            continue
        what, example = ("a non-empty list of functions", "[my_reward]") if many else (
            "a function (or None)", "my_function")  # fmt: skip
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise ConfigError(
            f"changes[{key!r}]={shown} is not {what}: {key} takes Python code, which text from "
            "the command line or the dashboard cannot carry; clone from Python instead, e.g. "
            f"exp.clone_modify(run_id, {{{key!r}: {example}}})"
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
    from rf_ray.configs import RFLoraConfig, TrainerKnobs

    out: dict[str, Any] = {}

    def put(key: str, value: Any, source: str) -> None:
        if key in out:
            raise ConfigError(f"changes sets {key!r} twice (again in {source}); give it once")
        out[key] = value

    for key, value in changes.items():
        if key in _SECTIONS and isinstance(value, (dict, RFLoraConfig, TrainerKnobs)):
            items = dict(value) if isinstance(value, dict) else dict(value.kwargs)
            if isinstance(value, TrainerKnobs):
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
    check_function_changes(changes)
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
            raise ConfigError(
                f"changes[{key!r}] is a knob ({shown(key, value)}); a clone takes one value"
            )
        section = key.split(".", 1)[0]
        if key in function_fields():
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
    if "compute_metrics" in fields:  # RapidFire's semantics with a generation_config
        own = run.generation_eval
        if own is not None and isinstance(own.metrics_fn, FromComputeMetrics):
            own = None  # the run's generation metric was its old compute_metrics: replaced
        fields["compute_metrics"], fields["generation_eval"] = split_compute_metrics(
            fields["compute_metrics"], kwargs.get("generation_config", run.generation_config),
            fields.get("generation_eval", own), "clone_modify",
        )  # fmt: skip
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

    if warm_start:
        check_warm_changes(changes)
    parent = cloudpickle.loads(_unwrap(lambda: ray.get(scheduler.get_spec_blob.remote(run_id))))
    if is_pipeline(parent):  # evals mode (rf_ray.evals.clone)
        return _clone_pipeline(scheduler, exp_dir, parent, changes, warm_start)
    new_run = modified(parent.model_config, changes)
    _, answer = _add_run(scheduler, exp_dir, _meta(exp_dir), new_run, parent, warm_start)
    return answer


def _clone_pipeline(
    scheduler: Any, exp_dir: Path, parent: Any, changes: dict[str, Any], warm_start: bool
) -> dict[str, Any]:
    """Clone an evals pipeline with ``changes`` (``rf_ray.evals.clone``), always cold."""
    import ray

    from rf_ray.evals.clone import modified_pipeline
    from rf_ray.evals.store import write_pipeline_spec

    if warm_start:
        raise ConfigError("an evals pipeline has no trained state to warm-start from; clone cold")
    modified_pipeline(parent, changes, parent.run_id)  # validate before reserving an id
    new_id = _unwrap(lambda: ray.get(scheduler.reserve_run_id.remote()))
    spec = modified_pipeline(parent, changes, new_id)
    blob = write_pipeline_spec(exp_dir, spec)
    entry = entry_for(spec, _meta(exp_dir)["name"], blob)
    return dict(_unwrap(lambda: ray.get(scheduler.add_clone.remote(entry))))


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
    warn_legacy([run.legacy], f"run added to {exp_dir.name!r}: ")
    warn_replaced(check_requirements([run]), f"run added to {exp_dir.name!r}: ")
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


WARM_KEEPS_LORA = ("r", "target_modules", "use_dora", "bias")
"""LoRA fields a warm-started clone keeps: they shape the adapter tensors it copies."""
WARM_KEEPS_PLAN = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "dataloader_drop_last", "generation_batch_size", "num_generations",
    "steps_per_generation", "num_iterations",
)  # fmt: skip
"""Trainer fields a warm-started clone keeps: they shape its chunk plan (its data position)."""


def check_warm_changes(changes: dict[str, Any]) -> None:
    """Refuse at once the changes a warm start cannot take (``_check_warm_start`` says the same
    of the built clone, later): the adapter's shape, the data plan, the base model."""
    for key in flat_changes(changes):
        lora = LORA_SHORTHAND.get(key) or (key[5:] if key.startswith("lora.") else None)
        if lora in WARM_KEEPS_LORA or key in WARM_KEEPS_PLAN or key.startswith("model_kwargs."):
            field = f"lora.{lora}" if lora in WARM_KEEPS_LORA else key
            raise ConfigError(
                f"changes[{key!r}] sets {field}: a warm-started clone copies its parent's "
                "adapter, optimizer "
                "and data position, so it keeps the adapter's shape (lora rank, target_modules, "
                "use_dora, bias), the data plan (batch size, accumulation, epochs, max_steps) and "
                f"the base model; clone cold (no --warm-start) to change {key}, or change "
                "other knobs (learning_rate, lora_alpha, lora_dropout, weight_decay, ...)"
            )


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
        if isinstance(e.cause, (OpError, ConfigError)):
            raise e.cause from None
        raise
