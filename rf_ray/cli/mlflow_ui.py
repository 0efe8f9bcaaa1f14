"""The MLflow UI over one experiment's ``mlflow.db``: what ``rf-ray dashboard --mlflow`` starts
beside the web dashboard (``rf_ray/dashboard/``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from actors.storage.layout import MLFLOW_DB, ExperimentDir
from actors.storage.store import Store
from policies.errors import ConfigError
from rf_ray.experiment import DEFAULT_ROOT


def dashboard_command(
    mlflow_db: str | Path, host: str = "127.0.0.1", port: int = 5000, python: str | None = None
) -> list[str]:
    """The command line that serves the MLflow UI over one experiment's ``mlflow.db``."""
    uri = f"sqlite:///{Path(mlflow_db).resolve()}"
    return [python or sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", host, "--port", str(port), "--workers", "1"]  # fmt: skip


def dashboard_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The dashboard's environment: MLflow's job runner off unless the user turned it on.

    A browsing dashboard needs no server-side jobs, and MLflow 3 otherwise starts several
    ``huey`` consumer processes that slow the start and outlive a SIGTERM.
    """
    env = dict(os.environ if environ is None else environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def resolve_dashboard_dir(path: str | None, name: str | None) -> Path:
    """The experiment directory whose ``mlflow.db`` the dashboard serves.

    ``path`` may be the experiment directory itself or a root; with a root, ``name`` picks the
    experiment, or the root's only experiment is used.
    """
    root = Path(path or DEFAULT_ROOT)
    if name is not None:
        exp_dir = root / name
        db = ExperimentDir(exp_dir).mlflow_db
        if db.exists():
            return exp_dir
        raise ConfigError(f"no MLflow store {db.resolve()}; {_dashboard_candidates(root)}")
    if ExperimentDir(root).mlflow_db.exists():
        return root
    found = _with_mlflow(root)
    if len(found) == 1:
        return root / found[0]
    if not found:
        raise ConfigError(
            f"no experiment with an {MLFLOW_DB} under {root.resolve()}; pass --path to an "
            "experiment directory or its root"
        )
    raise ConfigError(
        f"{len(found)} experiments under {root.resolve()}; pick one with --name: {', '.join(found)}"
    )


def _with_mlflow(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(
        d.name for d in root.iterdir() if Store.listed(d) and ExperimentDir(d).mlflow_db.is_file()
    )


def _dashboard_candidates(root: Path) -> str:
    found = _with_mlflow(root)
    if not found:
        return f"no experiment with an {MLFLOW_DB} under {root.resolve()}"
    return f"experiments under {root.resolve()}: {', '.join(found)}"
