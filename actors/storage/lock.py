"""The experiment directory's lock: one live scheduler per directory.

The lock is an exclusive ``flock`` on ``scheduler.lock`` (``ExperimentDir.lock_file``). The OS
drops it when its holder's process ends, however it ends, so a crashed driver never leaves a
stale lock. Who holds it when:

* the driver, from before anything is written (``take``) until it hands over to the scheduler;
* the scheduler actor (``hold``), from its constructor until the experiment is over;
* ``tidy`` at ``Experiment.end()``, for a moment, to remove the file once nobody holds it.

Readers never take it: ``is_held`` reads the kernel's lock table (``/proc/locks``) instead, since
a reader that took the lock even for a moment could make a driver starting at that moment think
the experiment was running. ``hold`` re-checks, once it has the lock, that the file it locked is
still the one at the path (``tidy`` may have removed it meanwhile), so the lock is never held on
a removed file while another process locks a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from actors.storage.durable import FILE_MODE, make_private_dir
from actors.storage.layout import LOCK_FILE, ExperimentDir
from policies.errors import ConfigError, OpError

logger = logging.getLogger(__name__)

LOCK_WAIT_SECONDS = 60.0
"""How long a start or resume waits for the lock of an experiment whose driver is gone (its
actors take a few seconds to wind down and release it)."""

POLL_SECONDS = 0.2
"""A flock has no waitable event with a timeout: a bounded wait polls this often."""


def _lock_path(experiment_dir: str | os.PathLike[str]) -> Path:
    return ExperimentDir(experiment_dir).lock_file


def try_hold(experiment_dir: str | os.PathLike[str]) -> IO[str] | None:
    """The experiment's lock, held, if nobody holds it now; else None (no waiting)."""
    return _try(_lock_path(experiment_dir))


def _try(path: Path) -> IO[str] | None:
    """The locked handle of ``path`` (created 0600 if missing), or None while another process
    holds it. A handle whose file was removed or replaced while it waited is dropped and the
    path opened again."""
    while True:
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE), "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        try:
            same = os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()  # locked a file that ``tidy`` removed meanwhile: lock the new one


def hold_experiment_lock(experiment_dir: str | os.PathLike[str], wait_s: float = 0.0) -> Any:
    """Hold the experiment's lock until the returned handle is closed or the process dies.
    ``wait_s``: how long to keep trying while another process holds it; then ``OpError``."""
    make_private_dir(experiment_dir)
    path = _lock_path(experiment_dir)
    deadline = time.monotonic() + wait_s
    while True:
        handle = _try(path)
        if handle is not None:
            return handle
        if time.monotonic() >= deadline:
            raise OpError(
                f"experiment at {experiment_dir} is already running (another scheduler "
                f"holds {LOCK_FILE}; waited {wait_s:g} s); steer it with `rf-ray ops`, or "
                "wait for it to finish"
            )
        time.sleep(POLL_SECONDS)


def is_held(experiment_dir: str | os.PathLike[str]) -> bool | None:
    """Whether a process holds the experiment's lock, read from Linux's ``/proc/locks``
    without touching the lock; None where that table cannot be read (not Linux)."""
    try:
        st = _lock_path(experiment_dir).stat()
    except FileNotFoundError:
        return False
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    # Lines read ``1: FLOCK ADVISORY WRITE <pid> fe:00:<inode> 0 EOF``.
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in text.splitlines():
        fields = line.split()
        if "FLOCK" in fields and device in fields and "->" not in fields:
            return True
    return False


def take(
    experiment_dir: Path,
    holder_gone: Callable[[], bool],
    wait_s: float = LOCK_WAIT_SECONDS,
) -> Any:
    """Hold the experiment's lock (before anything is written). Held by a live driver's
    scheduler: ``ConfigError``. Held while ``holder_gone()`` (the recorded driver crashed, its
    actors are winding down): wait for it, at most ``wait_s`` seconds, then take it."""
    try:
        return hold_experiment_lock(experiment_dir)
    except OpError:
        if not holder_gone():
            raise ConfigError(
                f"experiment at {experiment_dir} is already running (its scheduler holds "
                f"{LOCK_FILE} and its driver is alive): steer it with `rf-ray ops`, or wait for "
                "it to finish"
            ) from None
    logger.warning(
        "experiment at %s: its driver is gone but its scheduler still holds %s; waiting up to "
        "%g s for it to wind down",
        experiment_dir, LOCK_FILE, wait_s,
    )  # fmt: skip
    try:
        return hold_experiment_lock(experiment_dir, wait_s=wait_s)
    except OpError:
        raise ConfigError(
            f"experiment at {experiment_dir}: its driver is gone, but its scheduler still held "
            f"{LOCK_FILE} after {wait_s:g} s; stop its Ray actors (or the Ray cluster) and retry"
        ) from None


def wait_unlocked(experiment_dir: Path, wait_s: float = LOCK_WAIT_SECONDS) -> None:
    """Wait (bounded) until a scheduler just killed has let go of the experiment's lock, so that
    the next start in this process is not refused by a scheduler that is still dying."""
    try:
        hold_experiment_lock(experiment_dir, wait_s=wait_s).close()
    except OpError:
        logger.warning(
            "experiment at %s: still locked %g s after its actors were killed",
            experiment_dir, wait_s,
        )  # fmt: skip


def remove(handle: Any, experiment_dir: str | os.PathLike[str]) -> None:
    """Remove the lock file while holding it (``handle``), then let go: a process waiting on
    the old file finds it gone and locks a new one (``_try``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_lock_path(experiment_dir))
    handle.close()


def tidy(
    experiment_dir: str | os.PathLike[str], while_held: Callable[[], object] | None = None
) -> bool:
    """If nobody holds the lock: run ``while_held`` (e.g. put the store at rest) holding it,
    then remove the lock file. True if it was free (and is gone now)."""
    if not Path(experiment_dir).is_dir():
        return True
    handle = try_hold(experiment_dir)
    if handle is None:
        return False
    try:
        if while_held is not None:
            while_held()
    finally:
        remove(handle, experiment_dir)
    return True


__all__ = [
    "LOCK_WAIT_SECONDS",
    "hold_experiment_lock",
    "is_held",
    "remove",
    "take",
    "tidy",
    "try_hold",
    "wait_unlocked",
]
