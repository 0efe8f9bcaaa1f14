"""Steering a running experiment from a process that must outlive it: ``rf-ray ops`` and the
dashboard's buttons.

A process that ``ray.init``s to attach to an experiment's private Ray cluster dies about a minute
after that cluster goes away ("Failed to connect to GCS within 60 seconds ... The program will
terminate": docs/experiments.md). So ``send`` never attaches the calling process. It first reads
the experiment directory (``rf_ray.steerable``: no such experiment, finished, not running,
starting; no Ray) and answers at once when the op cannot apply. Otherwise it starts a short-lived
child process that attaches (``rf_ray.ops.attach``), sends the one op and writes one JSON line
back. The parent waits for that line at most ``timeout_s`` seconds and watches the experiment's
lock meanwhile: an experiment that ends while the child attaches is answered "ended while you
asked" a few seconds later, not waited on. The child bounds itself too (it exits at its deadline
even if its parent is gone).

    send(exp_dir, OpRequest("stop", 3))                       -> {"run_id": 3, "status": ...}
    send(exp_dir, OpRequest("clone", 2, {"learning_rate": 1e-4}, warm_start=False))
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from policies.errors import ConfigError, OpError
from rf_ray.steerable import check_steerable, is_running

logger = logging.getLogger(__name__)

OP_TIMEOUT_S = 120.0
"""Bound on one op: the child's start (Python, Ray), attaching, and the scheduler's answer."""
ENDED_GRACE_S = 5.0
"""How long the child still gets, once the experiment's lock is released, to report an op the
scheduler applied just before it ended."""
POLL_S = 0.25
"""How often the parent looks at the experiment's lock while the child works (a flock has no
waitable event)."""
HOLD_ENV = "RF_RAY_TEST_HOLD_OP"
"""Test seam (fault injection): the path of a file; the child, once attached, writes
``<path>.ready`` and waits while ``<path>`` exists, so a test can end the experiment at exactly
that moment."""


class NoAnswerError(OpError):
    """The experiment's scheduler did not answer in time (the op may still be applied)."""


@dataclasses.dataclass(frozen=True)
class OpRequest:
    """One op for the child: stop/resume/delete/prune a run, or clone it with ``changes``
    (parsed values: JSON types only, since they travel as JSON)."""

    op: str
    run_id: int
    changes: dict[str, Any] | None = None
    warm_start: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.run_id, bool) or not isinstance(self.run_id, int):
            raise OpError(f"run id must be an int, got {self.run_id!r}")
        if self.op == "clone" and not isinstance(self.changes, dict):
            raise ConfigError(f"a clone needs changes (knob -> value), got {self.changes!r}")


def send(
    exp_dir: str | os.PathLike[str], request: OpRequest, timeout_s: float = OP_TIMEOUT_S
) -> Any:
    """Apply ``request`` to the experiment running from ``exp_dir``, from a child process;
    return the scheduler's answer. Raises ``ConfigError`` (bad changes), ``OpError`` (the op
    cannot apply; one line saying what is true) or ``NoAnswerError`` (no answer in
    ``timeout_s``), never waiting longer than ``timeout_s`` plus a few seconds."""
    exp_dir = Path(exp_dir).resolve()
    check_steerable(exp_dir)  # raises at once, without Ray, when the op cannot apply
    payload = json.dumps({**dataclasses.asdict(request), "dir": str(exp_dir),
                          "deadline_s": timeout_s})  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", "from rf_ray.remote import child_main; child_main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=_child_env(), text=True,
    )  # fmt: skip
    out, err, why = _await(proc, payload, exp_dir, timeout_s)
    answer = _answer(out)
    if answer is not None and answer["kind"] == "ok":
        return answer["result"]
    if answer is not None and answer["kind"] == "config":
        raise ConfigError(answer["error"])
    # Anything else may be the experiment ending under the op: say so if it did.
    try:
        check_steerable(exp_dir, probe=False)
    except OpError as now:
        raise OpError(f"experiment {exp_dir.name!r} ended while you asked: {now}") from None
    if why == "ended":
        raise OpError(
            f"experiment {exp_dir.name!r} ended while you asked: no scheduler holds its lock any "
            f"more (`rf-ray status {exp_dir.name} --path {exp_dir.parent}` shows where its runs "
            "stopped)"
        )
    if answer is not None:
        raise OpError(answer["error"])
    if why == "timeout":
        raise NoAnswerError(
            f"experiment {exp_dir.name!r}'s scheduler did not answer within {timeout_s:g} s; "
            f"the op may still be applied: check `rf-ray status {exp_dir.name} --path "
            f"{exp_dir.parent}` before trying "
            "again"
        )
    raise OpError(f"the op's process ended without an answer ({why}): {_last_line(err)}")


def _await(
    proc: subprocess.Popen[str], payload: str, exp_dir: Path, timeout_s: float
) -> tuple[str, str, str]:
    """The child's stdout and stderr once it exits, and why it stopped: "exit N", "timeout" or
    "ended" (the experiment's lock, held while the child worked, was released and the child did
    not answer within ``ENDED_GRACE_S``). The child is killed in the last two cases."""
    deadline = time.monotonic() + timeout_s
    # Watched only while it runs: an experiment between its driver and its scheduler (or whose
    # scheduler finished before its driver noticed) is not running yet, and its child answers.
    was_running = is_running(exp_dir)
    ended_at: float | None = None
    given: str | None = payload  # sent once: communicate() keeps its state when retried
    while True:
        try:
            out, err = proc.communicate(given, timeout=POLL_S)
            return out, err, f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            given = None
        now = time.monotonic()
        running = is_running(exp_dir)
        was_running = was_running or running
        if ended_at is None and was_running and not running:
            ended_at = now
        why = "timeout" if now >= deadline else None
        if ended_at is not None and now - ended_at >= ENDED_GRACE_S:
            why = "ended"
        if why is not None:
            proc.kill()
            out, err = proc.communicate()
            return out, err, why


def _answer(out: str) -> dict[str, Any] | None:
    """The child's one JSON answer line, or None when it wrote none."""
    for line in reversed(out.splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and "kind" in answer:
            return answer
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][-500:] if lines else "no output"


def _child_env() -> dict[str, str]:
    """The child's environment: this one, with the directory rf_ray is imported from first on
    its path (a source checkout run as ``python -m rf_ray.cli`` is not installed)."""
    here = Path(__file__).resolve().parents[1]
    if here.name in ("site-packages", "dist-packages"):  # installed: found as it was found here
        return dict(os.environ)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(here) + (os.pathsep + path if path else "")}


# --------------------------------------------------------------------------- the child


def child_main() -> None:
    """The child's whole life: read one request from stdin, apply it, write one JSON line to
    stdout, exit at once (no Ray shutdown, which can hang on a cluster that is going away)."""
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # anything else printed (Ray's own lines) goes to stderr
    request = json.loads(sys.stdin.read())
    watchdog = threading.Timer(float(request["deadline_s"]) + ENDED_GRACE_S, os._exit, (124,))
    watchdog.daemon = True
    watchdog.start()
    try:
        answer = {"kind": "ok", "result": _apply(request)}
    except ConfigError as exc:
        answer = {"kind": "config", "error": str(exc)}
    except OpError as exc:
        answer = {"kind": "op", "error": str(exc)}
    except Exception as exc:  # the scheduler died under the op, a Ray error: the parent says
        answer = {"kind": "error", "error": f"{type(exc).__name__}: {exc}"}
    os.write(answer_fd, (json.dumps(answer, default=repr) + "\n").encode())
    os._exit(0)


def _apply(request: dict[str, Any]) -> Any:
    from rf_ray import ops

    exp_dir = Path(request["dir"])
    scheduler = ops.attach(exp_dir)
    _hold_for_test()
    if request["op"] == "clone":
        return ops.clone_modify(
            scheduler, exp_dir, request["run_id"], request["changes"], request["warm_start"]
        )
    return ops.apply(scheduler, request["op"], request["run_id"])


def _hold_for_test() -> None:
    hold = os.environ.get(HOLD_ENV)
    if not hold:
        return
    Path(hold + ".ready").touch()
    while Path(hold).exists():
        time.sleep(0.05)


__all__ = ["OP_TIMEOUT_S", "NoAnswerError", "OpRequest", "child_main", "send"]
