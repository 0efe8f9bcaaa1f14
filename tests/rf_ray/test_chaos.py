"""Chaos: the driver, the executor and a trial are SIGKILLed at random moments, over several
rounds, and the experiment is resumed after each driver death. Every run must complete, with
the same per-step losses, chunk metrics and adapter weights as an uninterrupted experiment.

Time-sliced on purpose: a time-sliced run restored from its checkpoint is bit-identical to one
that never stopped (tests/actors/test_equivalence.py), so equality here is exact.

Each round runs the driver in its own process with its own Ray cluster under a private temp
directory, so the test kills only processes it started (their parent chain leads to the driver).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from actors.storage.checkpoint import EXPORTED_WEIGHTS
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from tests import processes
from tests.processes import kill_started_under
from tests.rf_ray.test_durability import _descendants_named
from tests.waits import wait_for_store

pytestmark = pytest.mark.slow

ROWS, CHUNKS = 32, 4  # 8 optimizer steps per run at batch size 4; slices of 1 step
SEED = 11
ROUND_TIMEOUT = 600


def _config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-3, 3e-4]),
            lora_rank=List([4, 8]),
            lora_dropout=0.1,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_length=48,
        ),
    )


FIT = dict(
    num_chunks=CHUNKS, seed=SEED, max_slice_steps=1, live_view=False, fusion=False,
    pruner=NoPruning(),
)  # fmt: skip

DRIVER = processes.DRIVER + textwrap.dedent(
    """
    from rf_ray import Experiment
    from rf_ray.toy import sft_dataset
    from tests.rf_ray.test_chaos import _config, FIT, ROWS
    exp = Experiment("chaos", experiment_path={root!r})
    if {resume!r}:
        exp.resume(live_view=False)
    else:
        exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), **FIT)
    exp.end()
    """
)


def _store_state(exp_dir: Path) -> dict[int, int]:
    if not Store.exists(exp_dir):
        return {}
    try:
        with contextlib.closing(Store(exp_dir, readonly=True)) as store:
            return {r["run_id"]: r["steps_done"] for r in store.runs()}
    except Exception:  # the store is being created
        return {}


def _adapters(exp_dir: Path) -> dict[int, dict]:
    out = {}
    for path in sorted(ExperimentDir(exp_dir).runs_dir.glob(f"*/adapter/{EXPORTED_WEIGHTS}")):
        out[int(path.parent.parent.name)] = load_file(str(path))
    return out


def _chunks(exp: Experiment) -> dict[tuple[int, int], float]:
    df = exp.get_chunk_results()
    return {(int(r.run_id), int(r.chunk)): float(r.train_loss) for r in df.itertuples()}


def _losses(exp: Experiment) -> dict[int, list[float]]:
    df = exp.get_results()
    return {int(r): g.sort_values("step")["loss"].tolist() for r, g in df.groupby("run_id")}


def _kill_later(
    proc: subprocess.Popen,
    victim: str,
    exp_dir: Path,
    total: int,
    rng: random.Random,
    kills: list[str],
) -> bool:
    """Wait until 1 to 6 more steps are recorded, then SIGKILL ``victim`` (driver, executor or
    a trial) of this round. False if the driver exited first."""
    target = min(sum(_store_state(exp_dir).values()) + rng.randint(1, 6), total - 1)
    reached = wait_for_store(  # the driver is another process: its store is all we share
        exp_dir,
        f"{target} steps in all",
        lambda runs: sum(r["steps_done"] for r in runs) >= target,
        ROUND_TIMEOUT,
        proc=proc,
    )
    if reached is None:  # the driver exited first
        return False
    if victim == "driver":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        title = "ray::BaseModelActor" if victim == "executor" else "ray::TrialActor"
        pids = _descendants_named(proc.pid, title)
        if not pids:
            return True
        os.kill(rng.choice(pids), signal.SIGKILL)
    kills.append(victim)
    return True


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("chaos-ref")
    exp = Experiment("chaos", experiment_path=root)
    exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), **FIT)
    exp.end()
    return exp


def test_driver_executor_and_trial_killed_at_random_then_resumed(reference, tmp_path):
    repo = str(Path(__file__).resolve().parents[2])
    rng = random.Random(20261129)
    exp_dir = tmp_path / "chaos"
    total = 6 * ROWS // 4
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    kills: list[str] = []
    finished = False
    for round_no in range(8):
        ray_tmp = tempfile.mkdtemp(prefix="rfc", dir="/tmp")
        script = tmp_path / f"driver-{round_no}.py"
        script.write_text(
            DRIVER.format(repo=repo, root=str(tmp_path), ray_tmp=ray_tmp, resume=round_no > 0)
        )
        log = open(tmp_path / f"driver-{round_no}.log", "w")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=env, start_new_session=True,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        # This round's victims, in order: an executor or a trial kill first (the driver lives
        # on, the experiment must heal itself), then possibly the driver (resumed next round).
        plan = rng.sample(["executor", "trial"], k=rng.randint(0, 2))
        if round_no < 3:
            plan.append("driver")
        try:
            for victim in plan:
                if not _kill_later(proc, victim, exp_dir, total, rng, kills):
                    break  # the experiment finished before this kill
                if victim == "driver":
                    break
            proc.wait(timeout=ROUND_TIMEOUT)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
            proc.wait(timeout=60)
            log.close()
            kill_started_under(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)  # the round's Ray temp dir
        if proc.returncode == 0:
            finished = True
            break
        assert kills[-1:] == ["driver"], (tmp_path / f"driver-{round_no}.log").read_text()[-3000:]
    assert finished, f"the experiment did not finish after kills {kills}"
    assert "driver" in kills, kills

    exp = Experiment("chaos", experiment_path=tmp_path)
    info = exp.get_runs_info().set_index("run_id")
    assert set(info["status"]) == {"completed"}, info[["status", "error"]]
    assert (info["steps_done"] == ROWS // 4).all()
    assert _losses(exp) == _losses(reference)
    assert _chunks(exp) == _chunks(reference)
    ref_info = reference.get_runs_info().set_index("run_id")
    assert info["best_metric"].to_dict() == ref_info["best_metric"].to_dict()
    assert exp.get_best_run() == reference.get_best_run()
    mine, theirs = _adapters(exp.dir), _adapters(reference.dir)
    assert sorted(mine) == sorted(theirs) == list(range(1, 7))
    for run_id, tensors in theirs.items():
        assert mine[run_id].keys() == tensors.keys()
        for key, value in tensors.items():
            assert (mine[run_id][key] == value).all(), (run_id, key)
