"""Processes a test starts and must end: a driver script on a private Ray cluster, frozen at a
moment its store shows and then killed with everything it started.

The resume tests make a driver die mid-experiment this way. Seeing the moment in the store and
killing the tree are not one step (a slice of the toy takes milliseconds and can land in
between), so the tree is frozen first (SIGSTOP) and the store read again; if the moment passed,
the tree goes on and the test waits for the next one. Stop only what the test started: the
driver's process tree, and every process whose command line names the test's own Ray temp
directory (Ray's processes move to sessions of their own).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.waits import store_runs, wait_for_store

REPO = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RF_RAY_LIVE"] = "0"
    sys.path.insert(0, {repo!r})
    import ray
    ray.init(num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
             _temp_dir={ray_tmp!r})
    """
)
"""The start of a driver script: offline, and its own Ray cluster under the test's temp dir."""


def kill_started_under(marker: str, timeout: float = 60) -> None:
    """SIGKILL every process whose command line names ``marker`` (the processes of the Ray
    cluster this test started, whatever session they moved to), and wait until they are gone."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if marker in " ".join(p.info["cmdline"] or ()):
                    mine.append(p)
            except psutil.Error:
                continue
        if not mine:
            return
        for p in mine:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(mine, timeout=5)
    raise AssertionError(f"processes under {marker} survived SIGKILL")


def signal_tree(pid: int, sig: int) -> None:
    """Send ``sig`` to a process and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (Ray's head processes and workers) at once."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


class KilledDriver:
    """``with KilledDriver(tmp_path, body) as driver: driver.freeze_when(...)``: runs ``DRIVER``
    followed by ``body`` in a process of its own; on exit kills its tree and its Ray cluster at
    once (no slice lands later) and removes the cluster's temp directory."""

    def __init__(self, tmp_path: Path, body: str, prefix: str = "rfd") -> None:
        self.ray_tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        self.script = tmp_path / "driver.py"
        self.script.write_text(DRIVER.format(repo=str(REPO), ray_tmp=self.ray_tmp) + body)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KilledDriver:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.proc = subprocess.Popen(
            [sys.executable, str(self.script)], env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return self

    def freeze_when(
        self,
        exp_dir: Path,
        what: str,
        moment: Callable[[list[dict[str, Any]]], bool],
        tries: int = 20,
        timeout: float = 300,
    ) -> None:
        """SIGSTOP the driver's tree at a moment its store shows ``moment`` (module
        docstring); ``what`` names the moment in a timeout's message."""
        assert self.proc is not None
        for _ in range(tries):
            wait_for_store(exp_dir, what, moment, timeout)
            signal_tree(self.proc.pid, signal.SIGSTOP)
            if moment(store_runs(exp_dir)):
                return
            signal_tree(self.proc.pid, signal.SIGCONT)
        raise AssertionError(f"the store never stayed at {what!r} in {tries} tries")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            kill_tree(self.proc.pid)
            self.proc.wait(timeout=60)
        kill_started_under(self.ray_tmp)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
