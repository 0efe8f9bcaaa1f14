"""``Plan``: an experiment's settings and runs, ready to start; the one meaning of "plan" here.

The experiment's name is checked here too (``check_experiment_name``), before anything is
written or started; its settings are one value, ``policies.settings.ExperimentSettings``.

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

import logging
import shutil
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.engine.evals.spec import PipelineSpec, is_pipeline
from actors.engine.spec import RunSpec
from actors.messages import RunEntry
from actors.storage import checkpoint
from actors.storage.durable import make_private_dir, make_private_tree, resolve
from actors.storage.layout import ExperimentDir
from actors.storage.store import PRUNING_ERROR_KEY, Store
from policies.errors import ConfigError, DamagedFileError, IllegalTransitionError
from policies.settings import DEFAULT_SLICE_TIMEOUT, SETTINGS_KEY, ExperimentSettings
from policies.state import RunStatus, transition
from rf_ray import spec_store
from rf_ray.evals import store as pipeline_store

logger = logging.getLogger(__name__)

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


@dataclass
class Plan:
    """A validated experiment, ready to start (nothing is written until ``persist``)."""

    name: str
    dir: Path
    tracking_uri: str
    specs: list[Any]
    """Each run's ``RunSpec`` (fit) or ``PipelineSpec`` (evals)."""
    create_model_fn: Callable[[Any], tuple[Any, Any]]
    settings: ExperimentSettings
    """How the experiment trains (chunks, seed, pruner, fusion, slice bounds), resolved."""
    fingerprint: str
    train: Any = None
    """A new plan's training dataset, to write; None for a stored plan (already on disk)."""
    eval: Any = None
    """A new plan's eval dataset, to write, or None."""
    differing: list[str] = field(default_factory=list)
    """Flat param keys whose values differ between the runs (the live view's columns)."""
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
            _revive_infrastructure_failures(store)
            meta, runs = store.meta(), store.runs()
            steps = {row["run_id"]: store.step_metrics(row["run_id"]) for row in runs}
        settings = ExperimentSettings.from_meta(meta)
        if not runs or settings is None:
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
        return cls(
            name=meta["name"],
            dir=exp_dir,
            tracking_uri=ExperimentDir(exp_dir).tracking_uri_from(meta["tracking_uri"]),
            specs=specs,
            create_model_fn=spec_store.read_create_model_fn(exp_dir),
            settings=settings,
            fingerprint=meta.get("fingerprint", ""),
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
        new_dirs = [ExperimentDir(plan.dir).run(i).path for i in self.added]
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
            train_rows=len(plan.train),
            tracking_uri=ExperimentDir(plan.dir).stored_tracking_uri(plan.tracking_uri),
            status="running",
            # The pruner's state starts fresh; the scheduler reads it back and keeps it current.
            pruner_state=plan.settings.new_pruner().to_dict(),
            **{PRUNING_ERROR_KEY: None},
            **{SETTINGS_KEY: plan.settings.to_dict()},
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

    layout = ExperimentDir(plan.dir)
    data = make_private_dir(layout.data_dir)
    if layout.train_data.exists():
        return
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        plan.train.save_to_disk(str(layout.train_data))
        if plan.eval is not None:
            plan.eval.save_to_disk(str(layout.eval_data))
        make_private_tree(data)  # datasets writes with the process's umask
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
        plan=spec.plan,
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
    chunks = entry.plan
    done, resume_from = _resume_point(exp_dir, row, steps)
    chunk_steps: list[dict[str, float]] = []
    if chunks.chunks_done(done) < chunks.total_chunks:
        start, _ = chunks.chunk_bounds(chunks.chunks_done(done))
        chunk_steps = [m for _, m in steps if start < int(m["step"]) <= done]
    return entry.with_columns(
        row,
        params=row["params"],
        steps_done=done,
        checkpoint=resume_from,
        chunk_steps=chunk_steps,
    )


def _revive_infrastructure_failures(store: Store) -> None:
    """Runs failed by the infrastructure (a checkpoint that could not be written or read) run
    again on resume, from their last durable checkpoint; runs failed by their own code stay
    failed. Written with the lock held, as any live run's row: a resume that fails later leaves
    them live, and the next resume continues them."""
    for row in store.runs():
        if row["status"] != RunStatus.FAILED.value or row.get("failed_by") is None:
            continue
        try:
            transition(RunStatus.FAILED, RunStatus.RUNNING, row["run_id"], row["failed_by"])
        except IllegalTransitionError:
            continue  # its own code failed it
        logger.warning(
            "run %s failed by the infrastructure (%s); it continues from its last durable "
            "checkpoint", row["run_id"], row["error"],
        )  # fmt: skip
        store.update_run(row["run_id"], status=RunStatus.RUNNING.value, error=None, failed_by=None)


_DONE = frozenset({RunStatus.COMPLETED.value, RunStatus.DELETED.value, RunStatus.FAILED.value})


def _resume_point(
    exp_dir: Path, row: dict[str, Any], steps: list[tuple[int, dict[str, float]]]
) -> tuple[int, str | None]:
    """Where a stored run goes on from: the step and checkpoint of its last recorded slice (a
    newer checkpoint may exist if the driver died between the executor writing it and the
    scheduler recording the slice). If that checkpoint is damaged, the newest older one that
    reads whole, and the slices after it train again; with none left, a run that began at
    step 0 starts over. Runs that will not train again are taken as recorded."""
    done, recorded = int(row["steps_done"]), row["checkpoint"]
    run = ExperimentDir(exp_dir).run(row["run_id"])
    path = run.checkpoint(done)
    if recorded:  # the store's absolute path, in this (possibly copied or moved) directory
        recorded = str(ExperimentDir(exp_dir).own_path(row["run_id"], recorded))
    if not done:
        return 0, None
    state = run.evals_state(done)
    if state.exists():  # an evals pipeline: its state after the shard, here (moved or not)
        return done, str(state)
    if row["status"] in _DONE:
        return done, str(path) if resolve(path).exists() else recorded
    if not resolve(path).exists() and recorded and resolve(recorded).exists():
        return done, recorded  # where an older rf-ray kept it
    intact, damaged = checkpoint.newest_intact(run.path, done)
    step = 0 if intact is None else checkpoint.steps_done(intact)
    if step == done:
        return done, str(intact)
    first = min((int(m["step"]) for _, m in steps), default=1)
    if intact is None and first > 1:  # a warm clone began at its parent's step: no start
        raise DamagedFileError(
            path, f"run {row['run_id']} has no checkpoint left that reads ({'; '.join(damaged)}); "
            "restore its checkpoints from a backup, or delete the run and clone its parent again",
        )  # fmt: skip
    logger.warning(
        "run %s: resuming from step %s, not %s: %s", row["run_id"], step, done,
        "; ".join(damaged) or f"{path} is missing",
    )  # fmt: skip
    return step, None if intact is None else str(intact)


__all__ = [
    "DEFAULT_SLICE_TIMEOUT",
    "Plan",
    "Undo",
    "check_experiment_name",
    "entry_for",
    "persist",
]
