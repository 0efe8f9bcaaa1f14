"""One driver per experiment directory: the lock is taken before anything is written.

* A second driver on a running experiment is refused with a clear error; the live scheduler
  goes on and the store's settings are untouched.
* Two directories holding experiments of the same name run at once (actor names are scoped by
  directory).
* Right after a driver crash, a resume waits (bounded) for the dead driver's scheduler to let go
  of the lock, then resumes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

import pytest
import ray

from actors.storage.layout import ExperimentDir
from actors.storage.lock import is_held
from actors.storage.store import Store
from policies.settings import ExperimentSettings
from rf_ray import ConfigError, Experiment, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray import plan as plans
from rf_ray import session as sessions
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from tests import processes
from tests.processes import kill_started_under
from tests.rf_ray.test_durability import _wait_for_steps

pytestmark = pytest.mark.slow

ROWS = 16
ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, max_length=48, lora_rank=4)
SETTINGS = ("name", "fingerprint", "settings", "pruner_state", "tracking_uri", "train_rows")


def _config(lrs: list[float]) -> list[RFModelConfig]:
    return [
        RFModelConfig(
            model_name=TOY_MODEL_NAME, training_args=RFSFTConfig(learning_rate=lr, **ARGS)
        )
        for lr in lrs
    ]


def _start_held(exp: Experiment, lrs: list[float], seed: int = 1) -> sessions.Session:
    """Start ``exp`` so that it stays running until ``unhold("test")`` (no race with its end)."""
    settings = ExperimentSettings.of(2, seed, NoPruning(), False, max_slice_steps=1)
    plan = exp._prepare(_config(lrs), None, sft_dataset(ROWS), None, settings)
    return sessions.start(plan, hold="test")


def _finish(session: sessions.Session) -> None:
    ray.get(session.scheduler.unhold.remote("test"))
    sessions.wait(session, live_view=False)
    sessions.stop(session)


def _spec_files(exp_dir: Any) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(exp_dir)), p.stat().st_mtime_ns) for p in exp_dir.rglob("spec*")
    )


def _settings(exp_dir: Any) -> dict[str, Any]:
    with Store(exp_dir, readonly=True) as store:
        meta = store.meta()
    return {k: meta.get(k) for k in SETTINGS}


def test_a_second_driver_on_a_running_experiment_is_refused_and_changes_nothing(
    ray_cluster, tmp_path
):
    first = Experiment("busy", experiment_path=tmp_path)
    session = _start_held(first, [1e-3])
    try:
        settings = _settings(first.dir)
        files = _spec_files(first.dir)
        second = Experiment("busy", experiment_path=tmp_path)
        with pytest.raises(ConfigError, match="already running"):
            second.run_fit(
                _config([3e-3, 3e-4]), train_dataset=sft_dataset(ROWS), num_chunks=4, seed=9,
                live_view=False, fusion=False,
            )  # fmt: skip
        assert _settings(first.dir) == settings
        assert _spec_files(first.dir) == files
        assert [r["run_id"] for r in ray.get(session.scheduler.snapshot.remote())] == [1]
    finally:
        _finish(session)
    info = first.get_runs_info()
    assert info["status"].tolist() == ["completed"]


def test_two_directories_with_the_same_name_run_at_once(ray_cluster, tmp_path):
    a = Experiment("same", experiment_path=tmp_path / "a")
    b = Experiment("same", experiment_path=tmp_path / "b")
    first = _start_held(a, [1e-3])
    try:
        second = _start_held(b, [3e-3, 3e-4])
        try:
            live = [ray.get(s.scheduler.snapshot.remote()) for s in (first, second)]
            assert [len(v) for v in live] == [1, 2]
        finally:
            _finish(second)
    finally:
        _finish(first)
    sessions.stop(first)  # a second stop of a session does nothing
    assert a.get_runs_info()["status"].tolist() == ["completed"]
    assert b.get_runs_info()["status"].tolist() == ["completed", "completed"]


DRIVER = processes.DRIVER + textwrap.dedent(
    """
    from rf_ray import Experiment, NoPruning
    from rf_ray.toy import sft_dataset
    from tests.rf_ray.test_locking import ROWS, _config
    exp = Experiment("crashed", experiment_path={root!r})
    exp.run_fit(_config([3e-3, 1e-3, 3e-4]), train_dataset=sft_dataset(ROWS * 2), num_chunks=4,
                seed=1, pruner=NoPruning(), max_slice_steps=1, live_view=False, fusion=False)
    """
)


def test_resume_right_after_a_driver_crash_waits_for_the_lock(ray_cluster, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "driver.py"
    ray_tmp = tempfile.mkdtemp(prefix="rfl", dir="/tmp")
    script.write_text(DRIVER.format(repo=repo, root=str(tmp_path), ray_tmp=ray_tmp))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    exp_dir = tmp_path / "crashed"
    try:
        _wait_for_steps(exp_dir, at_least=2)
        os.kill(proc.pid, signal.SIGKILL)  # only the driver: its actors wind down on their own
        proc.wait(timeout=60)
        # A checkpoint write the crash interrupted: cleaned up before any executor starts.
        leftover = ExperimentDir(exp_dir).run(1).checkpoints_dir / ".tmp-step-00000099"
        leftover.mkdir(parents=True)
        exp = Experiment("crashed", experiment_path=tmp_path)
        exp.resume(live_view=False)  # at once: no waiting for the old scheduler here
        exp.end()
    finally:
        kill_started_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not leftover.exists()
    info = exp.get_runs_info()
    assert info["status"].tolist() == ["completed"] * 3, info[["status", "error"]]
    assert (info["steps_done"] == ROWS * 2 // 4).all()


def test_a_failed_start_tears_down_and_leaves_the_store_as_it_was(
    ray_cluster, tmp_path, monkeypatch
):
    exp = Experiment("torn", experiment_path=tmp_path)
    _finish(_start_held(exp, [1e-3]))
    settings, files = _settings(exp.dir), _spec_files(exp.dir)

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected: registering the runs failed")

    monkeypatch.setattr(plans, "entry_for", fail)  # fails once the actors are up
    again = Experiment("torn", experiment_path=tmp_path)
    with pytest.raises(RuntimeError, match="injected"):
        _start_held(again, [3e-3, 3e-4], seed=7)
    monkeypatch.undo()
    assert _settings(exp.dir) == settings
    assert _spec_files(exp.dir) == files
    assert exp.get_runs_info()["run_id"].tolist() == [1]
    assert is_held(exp.dir) is False  # its scheduler is gone, and with it the lock
    _finish(_start_held(again, [3e-3]))  # nothing left behind blocks the next start
    assert exp.get_runs_info()["status"].tolist() == ["completed", "completed"]
