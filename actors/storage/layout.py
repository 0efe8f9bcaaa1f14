"""The experiment directory's layout: the one place that spells its paths.

    <experiment dir>/                    ExperimentDir(root)
        rf_ray.db                        .store          the SQLite store (actors.storage.store)
        rf_ray.db-wal, rf_ray.db-shm     .store_sidecars SQLite's, while the store is open
        scheduler.lock                   .lock_file      the experiment's lock (actors.storage.lock)
        cluster.json                     .cluster_file   how to reach the driver's Ray cluster
        rf_ray.log                       .log_file       the driver's log
        mlflow.db                        .mlflow_db      the embedded MLflow store
        create_model_fn.json             .model_fn_file  (+ functions/create_model_fn.cloudpickle)
        functions/<name>.cloudpickle     .functions_dir, function_file(root, name)
        data/train, data/eval            .train_data, .eval_data   the datasets (Arrow)
        tune/                            .tune_dir       Ray Tune's results (rf_ray.tune)
        corpora/<key>.jsonl              .corpus_file(key)  evals: each document corpus, once
        runs/                            .runs_dir
            <id>/                        .run(id) -> RunDir
                spec.json                .spec_file      (spec.cloudpickle: .legacy_spec_file)
                functions/<name>.cloudpickle  function_file(path, name): the run's functions
                checkpoints/step-<N>/    .checkpoint(N)  (actors.storage.checkpoint)
                adapter/                 .adapter_dir    the exported final adapter
                samples.json             .samples_file   generation samples (actors.engine.gen_eval)
                pipeline.json            .pipeline_file  evals: a pipeline (+ .pipeline_pickle)
                evals_state-<rows>.json  .evals_state(rows)  evals: the pipeline after a shard

Plain paths only: nothing here reads or writes (except ``run_ids_on_disk``, which lists). The
modules that own each file (store, lock, checkpoints, specs) ask this one where it lives.

The MLflow tracking URI is stored relative to the directory when it is the embedded store
(``EMBEDDED_TRACKING_URI``), so a copied or moved experiment still finds its own ``mlflow.db``:
``stored_tracking_uri`` writes it, ``tracking_uri_from`` reads it back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

STORE_FILE = "rf_ray.db"
LOCK_FILE = "scheduler.lock"
CLUSTER_FILE = "cluster.json"
LOG_FILE = "rf_ray.log"
MLFLOW_DB = "mlflow.db"
MODEL_FN_FILE = "create_model_fn.json"
LEGACY_MODEL_FN_FILE = "create_model_fn.cloudpickle"
"""``create_model_fn`` as written before spec format 1 (cloudpickled); still readable."""
FUNCTIONS_DIR = "functions"
SPEC_FILE = "spec.json"
LEGACY_SPEC_FILE = "spec.cloudpickle"
PIPELINE_FILE = "pipeline.json"
PIPELINE_PICKLE = "pipeline.cloudpickle"
"""Specs written before spec format 1 (the whole RunSpec cloudpickled); still readable."""
SAMPLES_FILE = "samples.json"
EVALS_STATE_PREFIX = "evals_state-"
STEP_PREFIX = "step-"

EMBEDDED_TRACKING_URI = "sqlite:///<experiment dir>/mlflow.db"
"""What the store keeps as ``tracking_uri`` for the experiment's own ``mlflow.db``: resolved
against the directory it is read from (never a usable URI by itself, so nothing can write to it
by mistake)."""

_STEP = re.compile(rf"^{STEP_PREFIX}(\d+)$")


@dataclass(frozen=True)
class RunDir:
    """``<experiment dir>/runs/<id>``: one run's files (``ExperimentDir.run``), or the same
    layout under any directory (``RunDir(path)``: tests, a run's own ``output_dir``)."""

    path: Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def spec_file(self) -> Path:
        return self.path / SPEC_FILE

    @property
    def legacy_spec_file(self) -> Path:
        return self.path / LEGACY_SPEC_FILE

    @property
    def functions_dir(self) -> Path:
        return self.path / FUNCTIONS_DIR

    @property
    def pipeline_file(self) -> Path:
        """An evals pipeline's settings as data (``rf_ray.evals.store``)."""
        return self.path / PIPELINE_FILE

    @property
    def pipeline_pickle(self) -> Path:
        """An evals pipeline's whole spec, cloudpickled (LangChain objects, user functions)."""
        return self.path / PIPELINE_PICKLE

    def evals_state(self, rows_done: int) -> Path:
        """An evals pipeline's state once ``rows_done`` rows of the eval set are done (its
        metrics, results and sampling RNG: ``actors.engine.evals.engine``)."""
        return self.path / f"{EVALS_STATE_PREFIX}{int(rows_done):08d}.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, step: int) -> Path:
        """The checkpoint taken after optimizer step ``step``."""
        return self.checkpoints_dir / f"{STEP_PREFIX}{int(step):08d}"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def samples_file(self) -> Path:
        return self.path / SAMPLES_FILE


@dataclass(frozen=True)
class ExperimentDir:
    """An experiment directory and the paths in it (module docstring). ``root`` is kept as
    given (``Experiment`` resolves it; a relative one stays relative)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str]) -> None:
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_run_dir(cls, run_dir: str | os.PathLike[str]) -> ExperimentDir:
        """The experiment directory holding ``runs/<id>`` directory ``run_dir``."""
        return cls(Path(run_dir).parent.parent)

    @property
    def name(self) -> str:
        return self.root.name

    # ------------------------------------------------------------------ top-level files
    @property
    def store(self) -> Path:
        return self.root / STORE_FILE

    @property
    def store_sidecars(self) -> tuple[Path, Path]:
        """SQLite's write-ahead log and its index, beside the store while it is in WAL mode."""
        return self.root / f"{STORE_FILE}-wal", self.root / f"{STORE_FILE}-shm"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def cluster_file(self) -> Path:
        return self.root / CLUSTER_FILE

    @property
    def log_file(self) -> Path:
        return self.root / LOG_FILE

    @property
    def mlflow_db(self) -> Path:
        return self.root / MLFLOW_DB

    @property
    def model_fn_file(self) -> Path:
        return self.root / MODEL_FN_FILE

    @property
    def legacy_model_fn_file(self) -> Path:
        return self.root / LEGACY_MODEL_FN_FILE

    @property
    def functions_dir(self) -> Path:
        return self.root / FUNCTIONS_DIR

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def train_data(self) -> Path:
        return self.data_dir / "train"

    @property
    def eval_data(self) -> Path:
        return self.data_dir / "eval"

    @property
    def corpora_dir(self) -> Path:
        """Evals mode: each distinct document corpus, once (``actors.engine.evals.corpus``)."""
        return self.root / "corpora"

    def corpus_file(self, key: str) -> Path:
        """The corpus ``key`` (a hash of its content), as JSON lines."""
        return self.corpora_dir / f"{key}.jsonl"

    @property
    def tune_dir(self) -> Path:
        """Where Ray Tune keeps its results for this experiment."""
        return self.root / "tune"

    # ------------------------------------------------------------------ runs
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: int) -> RunDir:
        return RunDir(self.runs_dir / str(int(run_id)))

    def own_path(self, run_id: int, recorded: str | os.PathLike[str]) -> Path:
        """A path the store recorded for run ``run_id`` (a checkpoint, an evals state), in this
        directory: the store keeps absolute paths, so in a copied or moved experiment they name
        the original's files. A path outside any ``runs/<run_id>/`` (an older rf-ray's) stays."""
        parts = Path(recorded).parts
        for i in range(len(parts) - 2, -1, -1):
            if parts[i] == self.runs_dir.name and parts[i + 1] == str(int(run_id)):
                return self.run(run_id).path.joinpath(*parts[i + 2 :])
        return Path(recorded)

    def run_ids_on_disk(self) -> list[int]:
        """Ids of the ``runs/<id>`` directories present, sorted."""
        if not self.runs_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.runs_dir.iterdir() if p.name.isdigit())

    # ------------------------------------------------------------------ MLflow
    def embedded_tracking_uri(self) -> str:
        """The SQLite tracking URI of this directory's own ``mlflow.db`` (absolute)."""
        return f"sqlite:///{self.mlflow_db.resolve()}"

    def stored_tracking_uri(self, uri: str) -> str:
        """``uri`` as the store keeps it: the embedded store relative to the directory."""
        return EMBEDDED_TRACKING_URI if uri == self.embedded_tracking_uri() else uri

    def tracking_uri_from(self, stored: str) -> str:
        """The tracking URI a stored value means for this directory: the embedded store is
        this directory's ``mlflow.db``. An absolute embedded URI written by an older rf-ray
        whose file is gone (the directory was moved or copied) also means this one's."""
        if stored == EMBEDDED_TRACKING_URI:
            return self.embedded_tracking_uri()
        prefix = "sqlite:///"
        old = Path(stored[len(prefix) :]) if stored.startswith(prefix) else None
        if (
            old is not None
            and old.name == MLFLOW_DB
            and not old.exists()
            and self.mlflow_db.exists()
        ):
            return self.embedded_tracking_uri()
        return stored


def functions_dir(base: str | os.PathLike[str]) -> Path:
    """The directory of the cloudpickled functions kept under ``base`` (see ``function_file``)."""
    return Path(base) / FUNCTIONS_DIR


def function_file(base: str | os.PathLike[str], name: str) -> Path:
    """Where a cloudpickled function named ``name`` is kept under ``base``, a run's directory
    (its formatting, reward and metric functions) or the experiment directory
    (``create_model_fn``): ``<base>/functions/<name>.cloudpickle``."""
    return functions_dir(base) / f"{name}.cloudpickle"


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The step in a checkpoint directory's name (``step-00000012`` -> 12), else None."""
    found = _STEP.match(Path(path).name)
    return int(found.group(1)) if found else None


__all__ = [
    "CLUSTER_FILE",
    "EMBEDDED_TRACKING_URI",
    "LOCK_FILE",
    "PIPELINE_FILE",
    "PIPELINE_PICKLE",
    "ExperimentDir",
    "RunDir",
    "checkpoint_step",
    "function_file",
    "functions_dir",
]
