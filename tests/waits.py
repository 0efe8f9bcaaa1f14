"""Waiting for an experiment to make progress, from a test: one bounded read of its store.

An experiment in the test's own process is waited on with its scheduler's event,
``Experiment.wait_for_progress(run_id, steps=, chunks=)``. A driver in another process
(test_durability, test_resume_equivalence, test_chaos, test_locking) shares only its experiment
directory with the test, so these waits read the store: a bounded poll, and the one place
where the tests poll for progress.

Every wait is bounded and says what it waited for when it gives up.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.storage.store import Store

POLL_SECONDS = 0.1


def store_runs(exp_dir: str | Path) -> list[dict[str, Any]]:
    """The experiment's run rows, read-only; [] while the store is not there yet."""
    if not Store.exists(exp_dir):
        return []
    try:
        with Store(exp_dir, readonly=True) as store:
            return store.runs()
    except Exception:  # the driver is creating the store right now
        return []


def wait_for_store(
    exp_dir: str | Path,
    what: str,
    condition: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 300,
    proc: subprocess.Popen[Any] | None = None,
) -> list[dict[str, Any]] | None:
    """Read the store until ``condition(runs)`` holds and return those runs; fail the test
    after ``timeout`` seconds naming ``what``. With ``proc`` (a driver process), return None as
    soon as it has exited instead."""
    deadline = time.monotonic() + timeout
    while True:
        runs = store_runs(exp_dir)
        if runs and condition(runs):
            return runs
        if proc is not None and proc.poll() is not None:
            return None
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what}; runs: {_progress(runs)}")
        time.sleep(POLL_SECONDS)


def wait_for_steps(exp_dir: str | Path, at_least: int, timeout: float = 300) -> int:
    """Until the experiment's runs have trained ``at_least`` optimizer steps in all."""
    runs = wait_for_store(
        exp_dir,
        f"{at_least} steps in all",
        lambda runs: sum(r["steps_done"] for r in runs) >= at_least,
        timeout,
    )
    assert runs is not None
    return sum(r["steps_done"] for r in runs)


def wait_for_run(
    exp_dir: str | Path, run_id: int, steps: int = 0, chunks: int = 0, timeout: float = 300
) -> dict[str, Any]:
    """Until run ``run_id`` has trained ``steps`` steps and closed ``chunks`` chunks."""

    def reached(runs: list[dict[str, Any]]) -> bool:
        row = next((r for r in runs if r["run_id"] == run_id), None)
        return row is not None and row["steps_done"] >= steps and row["chunks_done"] >= chunks

    runs = wait_for_store(
        exp_dir, f"run {run_id} at {steps} steps and {chunks} chunks", reached, timeout
    )
    assert runs is not None
    return next(r for r in runs if r["run_id"] == run_id)


def _progress(runs: list[dict[str, Any]]) -> str:
    return (
        ", ".join(
            f"{r['run_id']}: {r['status']} {r['steps_done']} steps/{r['chunks_done']} chunks"
            for r in runs
        )
        or "no store yet"
    )
