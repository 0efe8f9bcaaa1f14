"""tests/waits.py, the engine tests' one wait for progress, on a store written with production
code (no Ray): it returns once the condition holds, gives up naming what it waited for, and
stops waiting when the driver process it watches has exited."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from actors.storage.store import Store
from tests import waits


def _store(tmp_path, steps: int = 0):
    exp_dir = tmp_path / "exp"
    with Store(exp_dir) as store:
        store.add_run(1, {"learning_rate": 1e-3}, "pending", total_steps=8, total_chunks=2)
        store.add_run(2, {"learning_rate": 1e-4}, "pending", total_steps=8, total_chunks=2)
        if steps:
            store.record_slice(1, [{"step": steps, "loss": 1.0}], None, steps_done=steps)
    return exp_dir


def test_returns_the_run_once_it_got_there(tmp_path):
    exp_dir = _store(tmp_path)
    recorded = threading.Event()

    def train_a_chunk():  # the "scheduler", recording a slice that closes chunk 1
        with Store(exp_dir) as store:
            store.record_slice(
                1, [{"step": 4, "loss": 1.0}], (1, {"train_loss": 1.0}), status="running",
                steps_done=4, chunks_done=1,
            )  # fmt: skip
        recorded.set()

    timer = threading.Timer(0.3, train_a_chunk)
    timer.start()
    row = waits.wait_for_run(exp_dir, 1, chunks=1, timeout=60)
    timer.join()
    assert recorded.is_set()
    assert (row["run_id"], row["steps_done"], row["chunks_done"]) == (1, 4, 1)
    assert waits.wait_for_steps(exp_dir, at_least=4, timeout=5) == 4


def test_gives_up_naming_what_it_waited_for_and_where_runs_stand(tmp_path):
    exp_dir = _store(tmp_path, steps=2)
    with pytest.raises(AssertionError, match=r"run 1 at 3 steps and 0 chunks.*1: pending 2 steps"):
        waits.wait_for_run(exp_dir, 1, steps=3, timeout=0.3)


def test_no_store_yet_is_waited_for_not_an_error(tmp_path):
    assert waits.store_runs(tmp_path / "nothing") == []
    with pytest.raises(AssertionError, match="no store yet"):
        waits.wait_for_steps(tmp_path / "nothing", at_least=1, timeout=0.3)


def test_a_driver_that_exited_ends_the_wait(tmp_path):
    exp_dir = _store(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    got = waits.wait_for_store(exp_dir, "never", lambda runs: False, timeout=60, proc=proc)
    assert got is None
