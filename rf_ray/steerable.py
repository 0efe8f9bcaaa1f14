"""Whether an experiment can be steered now, read from its directory alone: no Ray.

``rf-ray status`` knows at once whether an experiment is running or finished; ops must too,
before anything attaches to a Ray cluster (attaching to find out used to start a private cluster
for ten seconds, then answer "not running on this Ray cluster" for a finished experiment and for
one that does not exist alike). ``check_steerable`` answers in one true line, as an ``OpError``:

- **no such experiment**: no store in the directory;
- **finished**: not running, and its driver recorded the end (no run trains any more);
- **not running**: not running, and the driver stopped before the end (killed, crashed):
  ``rf-ray resume``;
- **starting**: the lock is held but the cluster its driver records in ``cluster.json`` is not
  written yet or does not answer yet (or the lock is between the driver and its scheduler):
  retry in a few seconds.

Otherwise it returns the ``cluster.json`` record to attach with. Whether the experiment runs is
read from the kernel's lock table (``is_running``), never by trying the lock: a reader that took
it even for a moment could make a driver starting at that moment think the experiment runs.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from actors.storage import lock
from actors.storage.layout import CLUSTER_FILE, ExperimentDir
from actors.storage.store import Store
from policies.errors import OpError
from rf_ray.cluster import driver_alive, reachable, recorded_cluster


class NotSteerableError(OpError):
    """The experiment cannot take ops now; the message says why, in one line."""


def is_running(exp_dir: Path) -> bool:
    """True while a scheduler (or a driver starting one) holds the experiment's lock, read
    without touching the lock (``actors.storage.lock.is_held``)."""
    held = lock.is_held(exp_dir)
    if held is not None:
        return held
    # No /proc/locks (not Linux): fall back to what the driver recorded.
    with Store(exp_dir, readonly=True) as store:
        return bool(store.meta().get("status") == "running")


def check_steerable(exp_dir: str | os.PathLike[str], probe: bool = True) -> dict[str, Any]:
    """The experiment's ``cluster.json`` record when it can take ops now; else
    ``NotSteerableError`` saying, in one line, what is true. ``probe``: also check that the
    recorded cluster answers (a TCP connect, no Ray); off for a process already on a cluster."""
    exp_dir = Path(exp_dir)
    name, root = exp_dir.name, exp_dir.parent
    if not Store.exists(exp_dir):
        raise NotSteerableError(
            f"no experiment {name!r} under {root} (no {Store.FILENAME} in {exp_dir}); "
            f"`rf-ray list --path {root}` lists the experiments there"
        )
    record = recorded_cluster(exp_dir)
    if not is_running(exp_dir):
        if _recorded_status(exp_dir) == "finished":
            raise NotSteerableError(
                f"experiment {name!r} is finished: none of its runs trains any more, so there "
                f"is nothing to steer (`rf-ray status {name} --path {root}` shows them)"
            )
        if record is None or not driver_alive(record) or (probe and not reachable(record)):
            raise not_running(exp_dir)
        # Its driver and cluster live: it may be handing the lock to its scheduler (whose name
        # Ray registers at once): attaching tells (``ops.attach``).
        return record
    # Running: the lock says so (the store's status may be a previous driver's "finished").
    if record is None:
        raise starting(name, f"its driver has not written {CLUSTER_FILE} yet")
    if not driver_alive(record):
        raise starting(
            name,
            f"the driver {CLUSTER_FILE} names (pid {record.get('driver_pid')}) is gone: a new "
            "driver is taking over, or the old one's actors are winding down",
        )
    if probe and not reachable(record):
        raise starting(
            name, f"the Ray cluster in {CLUSTER_FILE} ({record.get('address')}) does not answer yet"
        )
    return record


def not_running(exp_dir: Path) -> NotSteerableError:
    """What to say of an experiment whose lock nobody holds and that did not finish."""
    name, root = exp_dir.name, exp_dir.parent
    return NotSteerableError(
        f"experiment {name!r} is not running: its driver stopped it before it finished; "
        f"`rf-ray resume {name} --path {root}` continues it, then steer it"
    )


def starting(name: str, why: str) -> NotSteerableError:
    """What to say of an experiment that is coming up (or changing hands)."""
    return NotSteerableError(f"experiment {name!r} is starting ({why}): retry in a few seconds")


def _recorded_status(exp_dir: Path) -> str | None:
    """The status the last driver recorded in the store."""
    try:
        with Store(exp_dir, readonly=True) as store:
            status = store.meta().get("status")
    except sqlite3.Error as exc:
        raise NotSteerableError(
            f"cannot read {ExperimentDir(exp_dir).store} ({exc}): is {exp_dir} an rf-ray "
            "experiment?"
        ) from None
    return status if isinstance(status, str) else None


__all__ = ["NotSteerableError", "check_steerable", "is_running", "not_running", "starting"]
