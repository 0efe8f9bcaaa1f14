"""``rf-ray dashboard``: the MLflow UI over one experiment's ``mlflow.db``."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from policies.errors import ConfigError
from rf_ray.cli.child import run_child
from rf_ray.experiment import DEFAULT_ROOT

MLFLOW_DB = "mlflow.db"


def add_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--path",
        metavar="DIR",
        default=None,
        help=f"an experiment directory, or a root holding experiments (default ./{DEFAULT_ROOT})",
    )
    p.add_argument("--name", default=None, help="experiment under the root (needed if several)")
    p.add_argument("--port", type=_port, default=5000, help="port to serve on (default 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes it)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


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
        if (exp_dir / MLFLOW_DB).exists():
            return exp_dir
        raise ConfigError(
            f"no MLflow store {exp_dir.resolve() / MLFLOW_DB}; {_dashboard_candidates(root)}"
        )
    if (root / MLFLOW_DB).exists():
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
    return sorted(d.name for d in root.iterdir() if (d / MLFLOW_DB).is_file())


def _dashboard_candidates(root: Path) -> str:
    found = _with_mlflow(root)
    if not found:
        return f"no experiment with an {MLFLOW_DB} under {root.resolve()}"
    return f"experiments under {root.resolve()}: {', '.join(found)}"


def cmd_dashboard(args: argparse.Namespace) -> int:
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri and args.path is None and args.name is None:
        # Runs went to that server (actors/tracking.py default_tracking_uri), not a local db.
        print(f"MLFLOW_TRACKING_URI is set: runs are logged to {env_uri}.")
        print("The dashboard belongs to that server; open its UI there, or unset the variable")
        print("and pass --path/--name to serve an experiment's own mlflow.db.")
        return 0
    exp_dir = resolve_dashboard_dir(args.path, args.name)
    _check_port_free(args.host, args.port)
    cmd = dashboard_command(exp_dir / MLFLOW_DB, args.host, args.port)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    if ":" in shown:
        shown = f"[{shown}]"
    if args.host in ("0.0.0.0", "::"):
        print(f"warning: --host {args.host} serves the dashboard to every network interface.")
    print(f"MLflow dashboard for {exp_dir.resolve()}: http://{shown}:{args.port}/  (Ctrl-C stops)")
    return run_child(cmd, env=dashboard_env())


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve on {host}:{port} ({exc.strerror}); pick another --port"
            ) from None
