"""Run a child process in the foreground, passing Ctrl-C on to it (the dashboard, the demo)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` in the foreground; Ctrl-C (and SIGTERM, SIGHUP) are passed on to it, then
    awaited.

    On POSIX the child gets its own process group, so a terminal's Ctrl-C reaches it once,
    through us, and reaches its own children too (``mlflow ui`` serves from a uvicorn child).
    A third signal kills the group outright, for a child that hangs while shutting down.
    """
    sys.stdout.flush()
    posix = os.name == "posix"
    proc: subprocess.Popen[bytes] | None = None
    received: list[int] = []

    def send(signum: int) -> None:
        assert proc is not None
        if proc.poll() is not None:
            return
        try:
            if posix:
                os.killpg(proc.pid, signal.SIGKILL if len(received) >= 3 else signum)
            else:
                proc.send_signal(signum)
        except ProcessLookupError:  # it ended between poll() and the signal
            pass

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if proc is not None:  # else: sent once the child exists
            send(signum)

    # The handlers go in before the child starts: a signal in between is not lost (nor, where
    # the parent ignores SIGHUP, as under nohup, ignored). SIGHUP too: a closed terminal
    # reaches only our session, not the child's own.
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    stops = [getattr(signal, n) for n in names if hasattr(signal, n)]
    previous = {s: signal.signal(s, forward) for s in stops}
    try:
        proc = subprocess.Popen(cmd, env=env, start_new_session=posix)
        if received:
            send(received[-1])
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc is not None and proc.poll() is None:  # wait() interrupted by an exception
            proc.terminate()
            proc.wait(timeout=10)
    # A child ended by a signal reports -signum; the shell convention is 128 + signum.
    return 128 - code if code < 0 else code
