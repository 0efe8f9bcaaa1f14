"""``Plan``: an experiment's settings and runs, ready to start; the one meaning of "plan" here.

The settings are checked here too (``check_experiment_name``, ``check_settings``), before
anything is written or started.

(A run's ``ChunkPlan``, in ``policies.chunking``, is how its data is cut into chunks: another
thing, always called a chunk plan.)

A plan comes from one of two places, and ``rf_ray.session.start`` starts either the same way:

- ``Experiment.run_fit`` validates the user's arguments into a NEW plan: new runs, and the
  datasets to write. ``persist`` makes it durable (datasets as Arrow, ``create_model_fn`` and
  each run's spec through ``rf_ray.spec_store``, the store's rows and settings).
- ``Plan.from_store`` reads a STORED plan back from an experiment directory, with every run's
  progress (status, steps, metrics, checkpoint), so that a resumed scheduler's view equals the
  one it had when the driver died.

``registrations`` turns either into the scheduler's ``RunEntry`` records.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.engine.evals.spec import PipelineSpec, is_pipeline
from actors.engine.spec import RunSpec
from actors.messages import RunEntry
from actors.storage.durable import make_private_dir, resolve
from actors.storage.store import Store
from policies.chunking import ChunkPlan
from policies.errors import ConfigError
from policies.fusion import FusionPolicy
from policies.pruning import Pruner, pruner_from_dict
from policies.state import RunStatus
from rf_ray import spec_store
from rf_ray.evals import store as pipeline_store

DEFAULT_SLICE_TIMEOUT = 1800.0
"""Seconds one slice (or placing a run on an executor) may take before its run fails.

Why 30 minutes: a slice is one chunk of one run (or ``max_slice_steps`` optimizer steps of it),
so on the hardware rf-ray targets (one GPU node, LoRA on a base model that fits it) a healthy
slice takes seconds to a few minutes; 30 minutes is an order of magnitude above that and still
bounds a hung reward or formatting function to half an hour of a shared executor. A run whose
slices are legitimately longer should be cut finer (more ``num_chunks``, or ``max_slice_steps``)
rather than given a larger bound: shorter slices also make ops and pruning react sooner.
"""


def check_slice_timeout(slice_timeout: Any) -> float | None:
    """``slice_timeout`` as a float number of seconds > 0, or None (no deadline); else
    ``ConfigError`` naming the value."""
    if slice_timeout is None:
        return None
    if (
        isinstance(slice_timeout, bool)
        or not isinstance(slice_timeout, (int, float))
        or not math.isfinite(slice_timeout)
        or slice_timeout <= 0
    ):
        raise ConfigError(
            f"slice_timeout must be a number of seconds > 0 or None (no deadline), got "
            f"slice_timeout={slice_timeout!r}; the default is {DEFAULT_SLICE_TIMEOUT:g} s. For "
            "slices that legitimately take longer, use more num_chunks or max_slice_steps"
        )
    return float(slice_timeout)


NAME_MAX_LEN = 100
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + "._-")


def check_experiment_name(name: Any) -> str:
    """An experiment name is a directory name, part of actor names and of the store's read-only
    SQLite URI, so it is limited to a safe set: letters, digits, ``.``, ``_`` and ``-``, the first
    character a letter or digit, at most 100 characters. (``#``, ``?`` and ``%`` would change
    the meaning of the ``file:`` URI; ``/`` and ``..`` would leave the experiments root.)"""
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"experiment_name must be a non-empty str, got experiment_name={name!r}; use "
            "letters, digits, '.', '_' and '-', e.g. 'lr-sweep'"
        )
    safe = "letters, digits, '.', '_' and '-'"
    bad = next((c for c in name if c not in _NAME_CHARS), None)
    if bad is not None:
        hint = (
            "; use experiment_path to choose where it is stored" if bad in "/\\" else
            f"; replace it, e.g. experiment_name={_suggest(name)!r}"
        )  # fmt: skip
        raise ConfigError(
            f"experiment_name={name!r} contains {bad!r}, which is not allowed: an experiment "
            f"name may only use {safe}{hint}"
        )
    if not name[0].isalnum():
        raise ConfigError(
            f"experiment_name={name!r} must start with a letter or digit (it may then use "
            f"{safe}); e.g. experiment_name={_suggest(name)!r}"
        )
    if len(name) > NAME_MAX_LEN:
        raise ConfigError(
            f"experiment_name has {len(name)} characters ({name[:20]!r}...); the limit is "
            f"{NAME_MAX_LEN}: use a shorter name"
        )
    return name


def _suggest(name: str) -> str:
    """``name`` with every character outside the safe set replaced by ``-``."""
    fixed = "".join(c if c in _NAME_CHARS else "-" for c in name).lstrip("._-")
    return fixed[:NAME_MAX_LEN] or "my-experiment"


def check_settings(
    num_chunks: Any,
    seed: Any,
    max_slice_steps: Any,
    fusion: Any,
    pruner: Any,
    slice_timeout: Any,
) -> float | None:
    """Check ``run_fit``'s settings, each error naming the argument and its value; returns
    ``slice_timeout`` as a float (or None)."""
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
        raise ConfigError(f"num_chunks must be an int >= 1, got num_chunks={num_chunks!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got seed={seed!r}")
    if max_slice_steps is not None and (
        not isinstance(max_slice_steps, int) or max_slice_steps < 1
    ):
        raise ConfigError(f"max_slice_steps must be None or an int >= 1, got {max_slice_steps!r}")
    if not isinstance(fusion, (bool, FusionPolicy)):
        raise ConfigError(
            f"fusion must be True, False or a FusionPolicy(max_runs=..., max_tokens=...), "
            f"got fusion={fusion!r}"
        )
    if pruner is not None and not isinstance(pruner, Pruner):
        raise ConfigError(
            f"pruner must be a pruner such as SuccessiveHalving(), ASHA() or NoPruning(), "
            f"got {pruner!r}"
        )
    return check_slice_timeout(slice_timeout)


@dataclass
class Plan:
    """A validated experiment, ready to start (nothing is written until ``persist``)."""

    name: str
    dir: Path
    tracking_uri: str
    specs: list[Any]
    """Each run's ``RunSpec`` (fit) or ``PipelineSpec`` (evals)."""
    create_model_fn: Callable[[Any], tuple[Any, Any]]
    pruner: Pruner
    max_slice_steps: int | None
    fusion: FusionPolicy | None
    fingerprint: str
    seed: int
    num_chunks: int
    has_eval: bool
    train: Any = None
    """A new plan's training dataset, to write; None for a stored plan (already on disk)."""
    eval: Any = None
    """A new plan's eval dataset, to write, or None."""
    differing: list[str] = field(default_factory=list)
    """Flat param keys whose values differ between the runs (the live view's columns)."""
    slice_timeout: float | None = DEFAULT_SLICE_TIMEOUT
    """Wall-clock bound of one slice in seconds (``None``: none); see ``Grant.deadline_s``."""
    stored: dict[int, RunEntry] = field(default_factory=dict)
    """A stored plan's registrations, with each run's progress, by run id (empty when new)."""

    @property
    def is_new(self) -> bool:
        """True for a plan from ``run_fit`` (its runs and data are still to be written)."""
        return not self.stored

    @classmethod
    def from_store(cls, exp_dir: Path) -> Plan:
        """The stored plan of ``exp_dir``, every run with its progress (what a resume starts).
        Call with the experiment's lock held. Imports the modules the runs' functions come from
        and unpickles the pickled ones (``rf_ray.spec_store``)."""
        with Store(exp_dir) as store:
            meta, runs = store.meta(), store.runs()
            steps = {row["run_id"]: store.step_metrics(row["run_id"]) for row in runs}
        if not runs:
            raise ConfigError(f"experiment at {exp_dir} has no runs to resume")
        specs, stored = [], {}
        for row in runs:
            rid = row["run_id"]
            spec, blob = (
                pipeline_store.read_pipeline_spec(exp_dir, rid)
                if pipeline_store.has_pipeline_spec(exp_dir, rid)
                else spec_store.read_spec(exp_dir, rid)
            )
            specs.append(spec)
            entry = entry_for(spec, meta["name"], blob)
            stored[spec.run_id] = _with_progress(exp_dir, entry, row, steps[row["run_id"]])
        fusion = meta.get("fusion")
        return cls(
            name=meta["name"],
            dir=exp_dir,
            tracking_uri=meta["tracking_uri"],
            specs=specs,
            create_model_fn=spec_store.read_create_model_fn(exp_dir),
            pruner=pruner_from_dict(meta["pruner_state"]),
            max_slice_steps=meta.get("max_slice_steps"),
            fusion=FusionPolicy.from_dict(fusion) if fusion is not None else None,
            fingerprint=meta.get("fingerprint", ""),
            seed=meta["seed"],
            num_chunks=meta["num_chunks"],
            has_eval=bool(meta["has_eval"]),
            slice_timeout=meta.get("slice_timeout", DEFAULT_SLICE_TIMEOUT),
            stored=stored,
        )

    def registrations(self, blobs: dict[int, bytes]) -> list[RunEntry]:
        """The scheduler's records of this plan's runs: a stored run's with its progress, a new
        run's from its spec and ``blobs`` (what ``persist`` returned)."""
        return [
            self.stored[s.run_id] if s.run_id in self.stored
            else entry_for(s, self.name, blobs[s.run_id])
            for s in self.specs
        ]  # fmt: skip


class Undo:
    """Puts the store and the run directories back as they were before a new plan's
    ``persist`` (only what that persist added goes)."""

    def __init__(self, plan: Plan) -> None:
        self.dir = plan.dir
        self.added: list[int] = []
        self.new_dirs: list[Path] = []
        if not plan.is_new:
            return  # a stored plan writes nothing
        with Store(plan.dir) as store:
            self.meta_before, existing = store.meta(), {r["run_id"] for r in store.runs()}
        self.added = [s.run_id for s in plan.specs if s.run_id not in existing]
        new_dirs = [spec_store.run_dir(plan.dir, i) for i in self.added]
        self.new_dirs = [d for d in new_dirs if not d.exists()]

    def __call__(self) -> None:
        if not self.added:
            return
        with Store(self.dir) as store:
            store.undo_start(self.added, self.meta_before)
        for run_dir in self.new_dirs:  # and the spec files it wrote for those runs
            shutil.rmtree(run_dir, ignore_errors=True)


def persist(plan: Plan) -> dict[int, bytes]:
    """Write what a resume needs: datasets, create_model_fn, specs (never overwriting a run's
    files), store rows and settings. Returns each new run's spec blob. Call with the
    experiment's lock held."""
    ids = [s.run_id for s in plan.specs]
    with Store(plan.dir) as store:
        first_free = store.next_run_id()
        taken = sorted(i for i in ids if i < first_free)
        if taken:
            raise ConfigError(
                f"run ids {taken} are taken in experiment {plan.name!r} (the first free id is "
                f"{first_free}); take new ids from Store.next_run_id()"
            )
    _write_datasets(plan)
    spec_store.write_create_model_fn(plan.dir, plan.create_model_fn)
    blobs = {spec.run_id: _write_spec(plan.dir, spec) for spec in plan.specs}
    with Store(plan.dir) as store:
        store.set_meta(
            name=plan.name,
            fingerprint=plan.fingerprint,
            seed=plan.seed,
            num_chunks=plan.num_chunks,
            train_rows=len(plan.train),
            has_eval=plan.has_eval,
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


def _write_spec(exp_dir: Path, spec: Any) -> bytes:
    """A fit run's spec (``spec_store``) or an evals pipeline's (``rf_ray.evals.store``)."""
    if is_pipeline(spec):
        return pipeline_store.write_pipeline_spec(exp_dir, spec)
    return spec_store.write_spec(exp_dir, spec)


def _write_datasets(plan: Plan) -> None:
    """The experiment's Arrow copy of its datasets (once: a later run_fit reuses it)."""
    import datasets

    data = make_private_dir(plan.dir / "data")
    if (data / "train").exists():
        return
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        plan.train.save_to_disk(str(data / "train"))
        if plan.eval is not None:
            plan.eval.save_to_disk(str(data / "eval"))
    finally:
        if bars:
            datasets.enable_progress_bars()


def entry_for(
    spec: RunSpec | PipelineSpec,
    name: str,
    spec_blob: bytes | None = None,
    warm_start: bool = False,
) -> RunEntry:
    """The scheduler's registration record of a new run (see ``SchedulerActor.add_runs``); a
    clone names its parent in ``spec.parent_run_id``."""
    tags = {"rf_ray.experiment": name, "rf_ray.run_id": str(spec.run_id)}
    if spec.parent_run_id is not None:
        tags["rf_ray.parent_run_id"] = str(spec.parent_run_id)
    return RunEntry(
        run_id=spec.run_id,
        plan=spec.plan.to_dict(),
        spec_blob=spec_blob if spec_blob is not None else spec_store.spec_blob(spec),
        params=spec.params,
        tags=tags,
        fusion_key=spec.fusion_key,
        fusion_tokens=spec.fusion_tokens,
        parent_run_id=spec.parent_run_id,
        warm_start=warm_start,
        exclusive=spec.exclusive if isinstance(spec, PipelineSpec) else True,
    )


def _with_progress(
    exp_dir: Path, entry: RunEntry, row: dict[str, Any], steps: list[tuple[int, dict[str, float]]]
) -> RunEntry:
    """A stored run's registration with its progress: status, steps, metrics, the step metrics
    of its partial chunk and its charged executor deaths. ``params`` are the stored ones (what
    the run was logged with)."""
    chunks = ChunkPlan.from_dict(entry.plan)
    done = int(row["steps_done"])
    chunk_steps: list[dict[str, float]] = []
    if chunks.chunks_done(done) < chunks.total_chunks:
        start, _ = chunks.chunk_bounds(chunks.chunks_done(done))
        chunk_steps = [m for _, m in steps if start < int(m["step"]) <= done]
    return dataclasses.replace(
        entry,
        params=row["params"],
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


__all__ = [
    "DEFAULT_SLICE_TIMEOUT",
    "Plan",
    "Undo",
    "check_experiment_name",
    "check_settings",
    "check_slice_timeout",
    "entry_for",
    "persist",
]
