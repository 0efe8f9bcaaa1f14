"""Nothing is lost when a process dies: a killed driver is resumed, a killed executor restarts.

Both are compared with an uninterrupted reference experiment of the same configs and seed: the
slice order is deterministic and checkpoints restore a run bit for bit, so per-step losses and
final statuses must be identical.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
import ray
from mlflow.tracking import MlflowClient

from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from tests import processes
from tests.processes import kill_started_under
from tests.waits import wait_for_steps

pytestmark = pytest.mark.slow

ROWS, CHUNKS = 48, 4  # 12 optimizer steps per run at batch size 4; slices of 1 step


def _config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-3, 3e-4]),
            lora_rank=4,
            lora_dropout=0.1,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_length=48,
        ),
    )


# Time-sliced: these tests hold a resumed experiment to bit-identity with an uninterrupted one.
# A restart can regroup fused runs (and with that change float rounding), so with fusion on the
# outcome matches only to the tolerance of tests/actors/test_fused.py.
FIT = dict(num_chunks=CHUNKS, seed=5, max_slice_steps=1, live_view=False, fusion=False)


def _losses(exp: Experiment) -> dict[int, list[float]]:
    df = exp.get_results()
    return {int(r): g.sort_values("step")["loss"].tolist() for r, g in df.groupby("run_id")}


def _statuses(exp: Experiment) -> dict[int, tuple[str, int]]:
    info = exp.get_runs_info()
    return {int(r.run_id): (r.status, int(r.steps_done)) for r in info.itertuples()}


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    exp = Experiment("reference", experiment_path=tmp_path_factory.mktemp("ref"))
    exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), pruner=SuccessiveHalving(eta=3), **FIT)
    exp.end()
    return exp


def _wait_for_steps(exp_dir, at_least: int, timeout: float = 300) -> int:
    """The driver runs in another process: its store is all we share (tests/waits.py)."""
    return wait_for_steps(exp_dir, at_least, timeout)


DRIVER = processes.DRIVER + textwrap.dedent(
    """
    from rf_ray import Experiment, SuccessiveHalving
    from rf_ray.toy import sft_dataset
    from tests.rf_ray.test_durability import _config, FIT, ROWS
    exp = Experiment("killed", experiment_path={root!r})
    exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), pruner=SuccessiveHalving(eta=3), **FIT)
    """
)


def test_a_killed_driver_resumes_to_the_uninterrupted_result(reference, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "driver.py"
    # The driver's own Ray cluster keeps its files (and so its processes' command lines) under a
    # short private directory: that is how the test finds, and kills, only what it started.
    ray_tmp = tempfile.mkdtemp(prefix="rfk", dir="/tmp")
    script.write_text(DRIVER.format(repo=repo, root=str(tmp_path), ray_tmp=ray_tmp))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        exp_dir = tmp_path / "killed"
        _wait_for_steps(exp_dir, at_least=2)  # mid-experiment: before the first rung
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        proc.wait(timeout=60)
        kill_started_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)  # the round's Ray temp dir
    # Ray tears the dead driver's actors down asynchronously: resume waits (bounded) for the
    # dead driver's scheduler to release the experiment's lock.
    exp = Experiment("killed", experiment_path=tmp_path)
    before = _statuses(exp)
    assert any(s in ("pending", "running") for s, _ in before.values()), before
    exp.resume(live_view=False)
    exp.end()
    assert _statuses(exp) == _statuses(reference)
    assert _losses(exp) == _losses(reference)


def test_a_killed_executor_restarts_and_no_run_is_lost(reference, tmp_path):
    exp = Experiment("executor-killed", experiment_path=tmp_path)
    exp.run_fit(
        _config(), train_dataset=sft_dataset(ROWS), pruner=SuccessiveHalving(eta=3),
        blocking=False, **FIT,
    )  # fmt: skip
    executor = exp._session.executors[0]
    pid = ray.get(executor.ready.remote())["pid"]
    _wait_for_steps(exp.dir, at_least=5)
    os.kill(pid, signal.SIGKILL)
    exp.wait()
    new_pid = ray.get(executor.ready.remote())["pid"]
    stats = ray.get(executor.stats.remote())
    exp.end()
    assert new_pid != pid
    assert sum(stats["base_loads"].values()) == 1  # the restarted executor loaded it once
    assert _statuses(exp) == _statuses(reference)
    assert not exp.get_runs_info()["error"].notna().any()
    assert _losses(exp) == _losses(reference)


def _descendants_named(root_pid: int, title: str) -> list[int]:
    """Processes whose command line starts with ``title`` (a Ray worker's, e.g.
    ``ray::TrialActor``) and whose parent chain reaches ``root_pid``: workers of the Ray cluster
    that process started, no others."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(title.encode()):
                    continue
            pid = int(entry)
            while pid > 1:  # walk up the parents
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
                if pid == root_pid:
                    found.append(int(entry))
                    break
        except (OSError, ValueError):  # gone meanwhile
            continue
    return sorted(found)


def test_a_killed_trial_is_restarted_and_its_run_completes(reference, tmp_path):
    """A trial process that dies outside the executor (here: SIGKILL) gets a new trial, which
    carries on from the run's last recorded slice: the run completes with the losses it would
    have had, and the experiment never waits for the dead trial. (After MAX_TRIAL_RESTARTS
    restarts a run fails instead: tests/actors/test_scheduler_core.py.)"""
    exp = Experiment("trial-killed", experiment_path=tmp_path)
    exp.run_fit(
        _config(), train_dataset=sft_dataset(ROWS), pruner=NoPruning(), blocking=False, **FIT
    )
    _wait_for_steps(exp.dir, at_least=2)  # every run still has 10 or more steps to go
    victims = _descendants_named(os.getpid(), "ray::TrialActor")
    assert len(victims) == 3, victims
    os.kill(victims[0], signal.SIGKILL)
    info = exp.wait().set_index("run_id")
    exp.end()
    assert (info["status"] == "completed").all(), info[["status", "error"]]
    assert info["error"].isna().all()
    assert (info["steps_done"] == ROWS // 4).all()
    # Time-sliced runs train independently of each other: every run's losses start with the
    # reference's (which pruned some runs part-way) and go on from there.
    mine, theirs = _losses(exp), _losses(reference)
    for run_id, losses in theirs.items():
        assert len(mine[run_id]) == ROWS // 4
        assert mine[run_id][: len(losses)] == losses
    statuses = {r.info.status for r in MlflowClient(exp.tracking_uri).search_runs(
        [MlflowClient(exp.tracking_uri).get_experiment_by_name(exp.name).experiment_id]
    )}  # fmt: skip
    assert statuses == {"FINISHED"}
