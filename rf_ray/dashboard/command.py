"""``rf-ray dashboard``: serve the web dashboard over the experiments under a path.

    rf-ray dashboard                          ./rf_experiments on http://127.0.0.1:5000
    rf-ray dashboard --path DIR --port N      another root (or one experiment directory)
    rf-ray dashboard --mlflow                 also the MLflow UI, on port N+1; runs link to it
    rf-ray dashboard --host 0.0.0.0 --allow-remote
                                              other machines too, with an access token
                                              (printed once, in the URL to open)

Ctrl-C, SIGTERM (a plain ``kill``) or SIGHUP (the terminal closed) stops the page and the MLflow
UI with its processes, and prints one line.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from policies.errors import ConfigError

DEFAULT_PORT = 5000
MLFLOW_STOP_S = 10.0
"""How long the MLflow UI's process group gets to exit after SIGTERM (and again after SIGKILL)."""


def port_number(text: str) -> int:
    """An argparse type: a TCP port in 1..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rf_ray.cli.status import add_trust

    add_trust(p)
    p.add_argument(
        "--path",
        metavar="DIR",
        default=None,
        help="experiments root, or one experiment directory (default ./rf_experiments)",
    )
    p.add_argument("--name", default=None, help="show only this experiment under the root")
    p.add_argument(
        "--port", type=port_number, default=DEFAULT_PORT, help="port to serve on (default 5000)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1, this machine only); another needs "
        "--allow-remote",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host; every request then needs the printed access token",
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="also serve the MLflow UI over the experiment's mlflow.db (needs one experiment)",
    )
    p.add_argument(
        "--mlflow-port", type=port_number, default=None, help="MLflow UI port (default --port+1)"
    )


def check_host(host: str, allow_remote: bool) -> bool:
    """Whether binding ``host`` serves other machines; refuses that without ``allow_remote``."""
    from rf_ray.dashboard.guard import is_loopback

    if is_loopback(host):
        return False
    if not allow_remote:
        raise ConfigError(
            f"--host {host} serves the dashboard (and its stop/delete buttons) to other "
            "machines; add --allow-remote to do so (an access token is then required), or "
            "leave --host at 127.0.0.1"
        )
    return True


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or ``ConfigError`` naming the port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot serve on {host}:{port} ({exc.strerror}); pick another --port"
        ) from None
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    try:
        if ipaddress.ip_address(shown).version == 6:
            shown = f"[{shown}]"
    except ValueError:
        pass
    return f"http://{shown}:{port}/"


def run(args: argparse.Namespace) -> int:
    from rf_ray.dashboard.app import Settings, create_app
    from rf_ray.dashboard.guard import Guard
    from rf_ray.dashboard.reads import Root
    from rf_ray.experiment import DEFAULT_ROOT

    remote = check_host(args.host, args.allow_remote)
    root = Root.at(args.path or DEFAULT_ROOT, trust=args.trust)
    if args.name is not None:
        if args.name not in root.names():
            _no_experiment(root, args.name)
        root = Root(root.path, only=args.name)
    sock = bind(args.host, args.port)
    token = secrets.token_urlsafe(32) if remote else None
    settings = Settings(root=root, guard=Guard(access_token=token))
    mlflow = None
    stop = _StopSignals()
    try:
        if args.mlflow:
            mlflow = start_mlflow(args, settings)
        url = _url(args.host, args.port)
        print(f"rf-ray dashboard for {root.path}: {url}  (Ctrl-C stops)")
        if token is not None:
            print(f"Every request needs its access token; open {url}?token={token}")
            print("(shown once: anyone with it can stop and delete runs)")
        sys.stdout.flush()
        _serve(create_app(settings), sock)
    except _SignalStopError as stopped:
        signum = stop.hangup or stopped.signum
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"rf-ray dashboard: stopped ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:
        stop.quiet()  # a second signal must not cut the clean-up short (it is bounded)
        sock.close()
        if mlflow is not None:
            _stop(mlflow)
        stop.restore()
    return 0


class _SignalStopError(Exception):
    """Ctrl-C (SIGINT) or SIGTERM reached the dashboard: stop, clean up, say so in one line."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


class _StopSignals:
    """SIGINT and SIGTERM raise ``_SignalStopError`` while the dashboard runs, so its clean-up (the
    MLflow UI's process group) runs however it is stopped. uvicorn replaces these handlers while
    it serves, and on its way out restores them and raises the signals it caught again: they
    land here. (Without this, SIGTERM's default action ended the process before any ``finally``
    ran, leaving ``mlflow ui`` behind, and Ctrl-C ended it with a ``KeyboardInterrupt``
    traceback.) SIGHUP (the terminal closed; ``mlflow ui`` runs in its own session, so it does
    not get it) stops the dashboard as SIGTERM does: uvicorn handles only SIGINT and SIGTERM."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    HANGUP = getattr(signal, "SIGHUP", None)

    def __init__(self) -> None:
        self.hangup = 0
        """SIGHUP's number once it arrived (0 before): the one line names it."""
        self._previous = {s: signal.signal(s, self._raise) for s in self.SIGNALS}
        if self.HANGUP is not None:
            self._previous[self.HANGUP] = signal.signal(self.HANGUP, self._hang_up)

    @staticmethod
    def _raise(signum: int, _frame: Any) -> None:
        raise _SignalStopError(signum)

    def _hang_up(self, signum: int, _frame: Any) -> None:
        self.hangup = signum
        signal.raise_signal(signal.SIGTERM)  # uvicorn's handler while it serves, else ours

    def quiet(self) -> None:
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _no_experiment(root: Any, name: str) -> None:
    found = ", ".join(root.names()) or "none"
    raise ConfigError(f"no experiment {name!r} under {root.path}; experiments there: {found}")


def _serve(app: Any, sock: socket.socket) -> None:
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


def start_mlflow(args: argparse.Namespace, settings: Any) -> subprocess.Popen[bytes] | None:
    """Start the MLflow UI beside the page (its own process group) and point run links at it;
    with ``MLFLOW_TRACKING_URI`` set, runs went to that server: link to it instead."""
    from actors.storage.layout import ExperimentDir
    from rf_ray.cli.mlflow_ui import dashboard_command, dashboard_env, resolve_dashboard_dir

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    names = settings.root.names()
    if env_uri:
        print(f"MLFLOW_TRACKING_URI is set: runs are logged to {env_uri}; open its UI there.")
        if env_uri.startswith(("http://", "https://")):
            settings.mlflow_url = env_uri  # that server holds every experiment's runs
        return None
    exp_dir = resolve_dashboard_dir(str(settings.root.path), args.name or _only(names))
    port = args.mlflow_port or args.port + 1
    host = "127.0.0.1" if settings.guard.access_token else args.host  # MLflow has no token
    bind(host, port).close()  # a clear error now rather than a child that dies later
    cmd = dashboard_command(ExperimentDir(exp_dir).mlflow_db, host, port)
    child = subprocess.Popen(cmd, env=dashboard_env(), start_new_session=os.name == "posix")
    settings.mlflow_url, settings.mlflow_experiment = _url(host, port), exp_dir.name
    print(f"MLflow UI for {exp_dir}: {settings.mlflow_url}")
    return child


def _only(names: list[str]) -> str | None:
    return names[0] if len(names) == 1 else None


def _stop(child: subprocess.Popen[bytes]) -> None:
    """Stop the MLflow UI: SIGTERM its process group, wait until no process of the group is
    left (``mlflow ui`` serves from a uvicorn child that can outlive the leader), then SIGKILL
    whatever remains. Bounded: at most twice ``MLFLOW_STOP_S``."""
    if os.name != "posix":
        child.terminate()
        try:
            child.wait(timeout=MLFLOW_STOP_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=MLFLOW_STOP_S)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            child.poll()
            return
        if _group_gone(child, MLFLOW_STOP_S):
            return
    print(
        f"the MLflow UI's process group {child.pid} still runs {MLFLOW_STOP_S:g} s after SIGKILL;"
        f" stop it with: kill -9 -- -{child.pid}",
        file=sys.stderr,
    )


def _group_gone(child: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether every process of ``child``'s group has exited within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        child.poll()  # reap the leader: a zombie still counts as a member of its group
        if not _group_alive(child.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Where ``/proc`` exists, exited (zombie)
    members not yet reaped by their new parent do not count; elsewhere any member does."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
            return True
    return False
