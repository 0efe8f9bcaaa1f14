"""The ``rf-ray`` command: look at experiments, open their MLflow dashboard, run the demo.

    rf-ray list                      experiments under ./rf_experiments
    rf-ray status sft-grid           one experiment's runs, progress, metrics, differing knobs
    rf-ray status sft-grid --json    the same as JSON, for scripts
    rf-ray dashboard --name sft-grid the MLflow UI over the experiment's mlflow.db (127.0.0.1)
    rf-ray demo                      examples/sft_grid.py: 8 LoRA SFT configs on the toy model

Everything here only reads an experiment (the store is opened read-only), so it is safe to run
while the experiment trains. A user error (unknown experiment, busy port, ...) prints one line
to stderr and exits with status 2, like argparse's own usage errors.

Adding a command: write ``_add_<name>(parser)`` and ``cmd_<name>(args) -> int`` and append a
``Command`` to ``COMMANDS`` (or call ``register(Command(...))`` from another module that this
one imports). ``rf-ray ops ...`` and ``rf-ray resume`` are meant to plug in that way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.store import Store
from policies.errors import ConfigError, OpError
from rf_ray.config import differing_keys
from rf_ray.experiment import DEFAULT_ROOT

MLFLOW_DB = "mlflow.db"
ERROR_WIDTH = 40


# --------------------------------------------------------------------------- command registry


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how it adds its arguments, and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Returns the process exit status; raises ``ConfigError`` for a user error (exit 2)."""


COMMANDS: list[Command] = []


def register(command: Command) -> Command:
    """Add a subcommand (the extension point for ``ops`` and ``resume``)."""
    if any(c.name == command.name for c in COMMANDS):
        raise ValueError(f"an rf-ray command named {command.name!r} is already registered")
    COMMANDS.append(command)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rf-ray",
        description="rf-ray: tune LoRA post-training on the GPUs you have.",
        epilog="Run 'rf-ray COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rf-ray`` script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2): return them like any status
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args))
    except (ConfigError, OpError) as exc:
        print(f"rf-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------- experiments on disk


def find_experiments(root: Path) -> list[str]:
    """Names of the experiment directories directly under ``root`` (those with a store)."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and Store.exists(d))


def _candidates(root: Path) -> str:
    names = find_experiments(root)
    if not names:
        return f"no experiments found under {root.resolve()}"
    return f"experiments under {root.resolve()}: {', '.join(names)}"


def read_experiment(exp_dir: Path) -> dict[str, Any]:
    """Meta, runs and chunk metrics of one experiment, read through a read-only store."""
    try:
        store = Store(exp_dir, readonly=True)
        try:
            return {
                "meta": store.meta(),
                "runs": store.runs(),
                "chunks": store.chunk_metrics(),
            }
        finally:
            store.close()
    except sqlite3.Error as exc:
        raise ConfigError(
            f"cannot read {exp_dir / Store.FILENAME}: {exc}; is it an rf-ray experiment store?"
        ) from exc


def differing_knobs(runs: list[dict[str, Any]]) -> list[str]:
    """Keys of the runs' flat ``params`` whose values differ across runs (missing differs)."""
    return differing_keys([r["params"] for r in runs]) if len(runs) > 1 else []


# --------------------------------------------------------------------------- status


def _add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="experiment name (a directory under the root)")
    _add_root(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_root(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--path", metavar="ROOT", default=None, help=f"experiments root (default ./{DEFAULT_ROOT})"
    )


def cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.path or DEFAULT_ROOT)
    exp_dir = root / args.name
    if not Store.exists(exp_dir):
        raise ConfigError(
            f"no experiment {args.name!r} under {root.resolve()}; {_candidates(root)}"
        )
    data = read_experiment(exp_dir)
    if args.json:
        print(json.dumps(status_json(args.name, exp_dir, data), indent=2))
    else:
        print(status_text(args.name, exp_dir, data))
    return 0


def status_json(name: str, exp_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    per_run: dict[int, list[dict[str, Any]]] = {}
    for run_id, chunk, metrics in data["chunks"]:
        per_run.setdefault(run_id, []).append({"chunk": chunk, **metrics})
    runs = [{**r, "chunks": per_run.get(r["run_id"], [])} for r in data["runs"]]
    from rf_ray.samples import generation_metrics  # --- gen

    generated = generation_metrics(exp_dir, [r["run_id"] for r in runs])
    for r in runs:
        r["generation_metrics"] = generated.get(r["run_id"], {})  # --- end gen
    out = {
        "name": name,
        "dir": str(exp_dir.resolve()),
        "meta": data["meta"],
        "differing": differing_knobs(data["runs"]),
        "runs": runs,
    }
    return _finite(out)


def _finite(value: Any) -> Any:
    """NaN and inf become None: ``json.dumps`` would write them as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def status_text(name: str, exp_dir: Path, data: dict[str, Any]) -> str:
    meta, runs = data["meta"], data["runs"]
    pruner = meta.get("pruner") or {}
    metric = pruner.get("metric") or "metric"
    lines = [
        f"Experiment {name} ({meta.get('status', 'unknown')}) at {exp_dir.resolve()}",
        f"  fingerprint:  {meta.get('fingerprint', '-')}",
        f"  pruner:       {pruner.get('type', '-')} on {metric} ({pruner.get('mode') or '-'})",
        f"  tracking uri: {meta.get('tracking_uri', '-')}",
        "",
    ]
    if not runs:
        return "\n".join([*lines, "No runs yet."])
    knobs = differing_knobs(runs)
    # --- gen: the runs' last generation metrics (runs/<id>/samples.json), beside the pruner's
    from rf_ray.samples import generation_metrics, metric_columns

    generated = generation_metrics(exp_dir, [r["run_id"] for r in runs])
    gen_columns = metric_columns(generated, skip=pruner.get("metric"))
    # --- end gen
    headers = ["run", "status", "chunks", "steps", f"last {metric}", f"best {metric}", "pruned@"]
    headers += [*gen_columns, *knobs, "error"]
    rows = [
        [
            str(r["run_id"]),
            r["status"],
            f"{r['chunks_done']}/{r['total_chunks']}",
            f"{r['steps_done']}/{r['total_steps']}",
            _fmt(r["last_metric"]),
            _fmt(r["best_metric"]),
            _fmt(r["pruned_at"]),
            *(_fmt(generated.get(r["run_id"], {}).get(k)) for k in gen_columns),  # --- gen
            *(_fmt(r["params"].get(k)) for k in knobs),
            _truncate(r["error"]),
        ]
        for r in runs
    ]
    counts = Counter(r["status"] for r in runs)
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return "\n".join([*lines, format_table(headers, rows), "", f"{len(runs)} runs: {summary}"])


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain left-aligned columns: readable in a terminal, a pipe and a CI log alike."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _truncate(text: str | None, width: int = ERROR_WIDTH) -> str:
    if not text:
        return ""
    line = " ".join(text.split())  # tracebacks are multi-line; the table wants one line
    return line if len(line) <= width else line[: width - 3] + "..."


# --------------------------------------------------------------------------- list


def cmd_list(args: argparse.Namespace) -> int:
    root = Path(args.path or DEFAULT_ROOT)
    if not root.is_dir():
        raise ConfigError(f"{root.resolve()} is not a directory; pass the experiments root --path")
    names = find_experiments(root)
    if not names:
        print(f"No experiments under {root.resolve()} (rf-ray demo makes one).")
        return 0
    rows = []
    for name in names:
        data = read_experiment(root / name)
        counts = Counter(r["status"] for r in data["runs"])
        rows.append(
            [
                name,
                str(data["meta"].get("status", "unknown")),
                str(len(data["runs"])),
                ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "-",
            ]
        )
    print(f"Experiments under {root.resolve()}:")
    print(format_table(["name", "status", "runs", "by status"], rows))
    return 0


# --------------------------------------------------------------------------- dashboard


def _add_dashboard(p: argparse.ArgumentParser) -> None:
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


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in the foreground; Ctrl-C (and SIGTERM) are passed on to it, then awaited.

    On POSIX the child gets its own process group, so a terminal's Ctrl-C reaches it once,
    through us, and reaches its own children too (``mlflow ui`` serves from a uvicorn child).
    A third signal kills the group outright, for a child that hangs while shutting down.
    """
    sys.stdout.flush()
    posix = os.name == "posix"
    proc = subprocess.Popen(cmd, env=env, start_new_session=posix)
    received = 0

    def forward(signum: int, _frame: Any) -> None:
        nonlocal received
        received += 1
        if proc.poll() is not None:
            return
        try:
            if posix:
                os.killpg(proc.pid, signal.SIGKILL if received >= 3 else signum)
            else:
                proc.send_signal(signum)
        except ProcessLookupError:  # it ended between poll() and the signal
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:  # only if wait() itself was interrupted by an exception
            proc.terminate()
            proc.wait(timeout=10)
    # A child ended by a signal reports -signum; the shell convention is 128 + signum.
    return 128 - code if code < 0 else code


# --------------------------------------------------------------------------- demo


def _add_demo(p: argparse.ArgumentParser) -> None:
    _add_root(p)
    p.add_argument("--no-live", action="store_true", help="no live terminal view")


def find_demo_script() -> Path | None:
    """``examples/sft_grid.py`` of a source checkout; the installed package does not ship it."""
    script = Path(__file__).resolve().parents[1] / "examples" / "sft_grid.py"
    return script if script.is_file() else None


def demo_command(script: Path, path: str | None = None, live: bool = True) -> list[str]:
    cmd = [sys.executable, str(script)]
    if path is not None:
        cmd += ["--path", path]
    if not live:
        cmd.append("--no-live")
    return cmd


def cmd_demo(args: argparse.Namespace) -> int:
    script = find_demo_script()
    if script is None:
        print(
            "The demo is examples/sft_grid.py in the rf-ray source repository; it is not part of "
            "the installed package.\nClone the repository and run, from its root:\n"
            "    python examples/sft_grid.py",
            file=sys.stderr,
        )
        return 1
    return run_child(demo_command(script, args.path, live=not args.no_live))


# --------------------------------------------------------------------------- the commands

register(Command("list", "list the experiments under a root", _add_root, cmd_list))
register(Command("status", "show one experiment's runs and progress", _add_status, cmd_status))
register(
    Command("dashboard", "serve the MLflow UI over an experiment", _add_dashboard, cmd_dashboard)
)
register(Command("demo", "run examples/sft_grid.py (8 LoRA SFT configs)", _add_demo, cmd_demo))

# Commands that steer running experiments live in their own module and register themselves.
import rf_ray.cli_ops  # noqa: E402, F401
from rf_ray import samples as _samples  # noqa: E402, F401  (--- gen: rf-ray samples)

if __name__ == "__main__":
    # `python -m rf_ray.cli` runs this file as __main__; commands from other modules register
    # into the importable rf_ray.cli, so dispatch through that one.
    from rf_ray import cli as _registered

    sys.exit(_registered.main())
