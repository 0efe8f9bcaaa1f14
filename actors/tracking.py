"""MLflow tracking: one MLflow experiment per rf-ray experiment, one MLflow run per run.

The default store is SQLite inside the experiment directory (MLflow 3's file store raises);
``MLFLOW_TRACKING_URI`` or an explicit URI points it elsewhere. Trials log through
``MlflowClient`` (no global active-run state, so many runs can be logged from one process).
SQLite allows one writer at a time: writes retry briefly on "database is locked".
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_BAD_KEY = re.compile(r"[^\w\-. /:]")


def default_tracking_uri(experiment_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<experiment dir>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(experiment_dir).resolve() / 'mlflow.db'}"


def _retry(fn: Callable[[], T], attempts: int = 20) -> T:
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MLflow wraps sqlite's OperationalError in its own types
            if "locked" not in str(exc).lower() or i == attempts - 1:
                raise
            time.sleep(0.05 * (i + 1))
    raise AssertionError("unreachable")


class Tracker:
    """A small facade over ``MlflowClient`` for one rf-ray experiment."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = _retry(lambda: self.client.get_experiment_by_name(experiment_name))
        if exp is None:
            self.experiment_id = _retry(lambda: self.client.create_experiment(experiment_name))
        else:
            self.experiment_id = exp.experiment_id

    def start_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        from mlflow.entities import Param, RunTag

        run = _retry(
            lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        )
        run_id = run.info.run_id
        batch = [Param(k[:250], str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):
            _retry(functools.partial(self.client.log_batch, run_id, params=batch[i : i + 100]))
        _retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))
        return run_id

    def log_metrics(self, mlflow_run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Log ``(step, {name: value})`` rows; non-finite and non-numeric values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(_key(k), float(v), now, step)
            for step, values in rows
            for k, v in values.items()
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for i in range(0, len(metrics), 500):
            chunk = metrics[i : i + 500]
            _retry(functools.partial(self.client.log_batch, mlflow_run_id, metrics=chunk))

    def set_tags(self, mlflow_run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        rows = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(mlflow_run_id, tags=rows))

    def reopen(self, mlflow_run_id: str) -> None:
        """Mark a resumed run's MLflow run as running again."""
        _retry(lambda: self.client.update_run(mlflow_run_id, status="RUNNING"))

    def finish(self, mlflow_run_id: str, status: str) -> None:
        """Close the MLflow run: FINISHED, FAILED or KILLED (stopped/pruned/deleted)."""
        _retry(lambda: self.client.set_terminated(mlflow_run_id, status=status))


def _key(name: str) -> str:
    return _BAD_KEY.sub("_", name)
