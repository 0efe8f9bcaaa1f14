"""Runs that the machine fails, end to end on real Ray actors, TRL and PEFT (issue 21, items 10,
12 and 13):

* a truncated latest checkpoint: ``resume`` names the file, goes on from the newest checkpoint
  that reads, and the slices it trains again give the losses they gave the first time;
* a checkpoint that cannot be written fails its run "by the infrastructure": once the cause is
  gone, ``resume`` continues it from its last durable checkpoint, while a run failed by its own
  code stays failed;
* a start refused because ``runs/1`` is already there writes nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.storage import checkpoint
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.errors import NoRunTrainedError
from rf_ray import ConfigError, Experiment, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

ROWS = 24  # 6 optimizer steps per run
FIT = dict(
    num_chunks=3, seed=5, max_slice_steps=1, pruner=NoPruning(), live_view=False, fusion=False
)


def _config(formatting_func: Callable[[dict[str, Any]], str] | None = None) -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=3e-3, lora_rank=4, per_device_train_batch_size=4, num_train_epochs=1,
            max_length=48, completion_only_loss=formatting_func is None,
        ),
        formatting_func=formatting_func,
    )  # fmt: skip


def _losses(exp: Experiment, run_id: int) -> dict[int, float]:
    df = exp.get_results()
    return {int(r.step): float(r.loss) for r in df[df["run_id"] == run_id].itertuples()}


def _row(exp_dir: Path, run_id: int) -> dict[str, Any]:
    with Store(exp_dir, readonly=True) as store:
        row = store.run(run_id)
    assert row is not None
    return row


def test_a_truncated_latest_checkpoint_is_named_and_the_run_resumes_before_it(
    ray_cluster, tmp_path, caplog
):
    exp = Experiment("truncated", experiment_path=tmp_path)
    exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), blocking=False, **FIT)
    exp.wait_for_progress(1, steps=4, timeout=240)
    exp.cancel_current()  # as a crash would: every run keeps its last recorded slice
    row = _row(exp.dir, 1)
    done, before = int(row["steps_done"]), _losses(exp, 1)
    assert 4 <= done < 6
    run = ExperimentDir(exp.dir).run(1)
    assert row["checkpoint"] == str(run.checkpoint(done))
    damaged = run.checkpoint(done) / checkpoint.ADAPTER_FILE
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) // 2)
    intact = []
    for older in run.checkpoints_dir.iterdir():
        step = checkpoint.steps_done(older)
        if step < done:
            checkpoint.verify(older)
            intact.append(step)
    expected = max(intact, default=0)  # save keeps the previous one; 0 if a later one pruned it

    with caplog.at_level(logging.WARNING, logger="rf_ray.plan"):
        info = exp.resume(live_view=False)
    exp.end()
    warned = [r.getMessage() for r in caplog.records if r.name == "rf_ray.plan"]
    assert any(
        f"run 1: resuming from step {expected}, not {done}" in m and str(damaged) in m
        for m in warned
    ), warned
    assert info["status"].tolist() == ["completed"]
    after = _losses(exp, 1)
    assert sorted(after) == [1, 2, 3, 4, 5, 6]
    assert {s: after[s] for s in before} == before  # the re-trained slices gave the same losses


def _sabotage(exp_dir: Path, marker: Path, driver_pid: int) -> Callable[[dict[str, Any]], str]:
    """A formatting function that, the first time the executor calls it, puts a file where run
    1's checkpoints directory goes: its first checkpoint cannot be written (as on a full or
    read-only disk), which is no fault of the run's code."""
    blocked = str(ExperimentDir(exp_dir).run(1).checkpoints_dir)

    def to_text(example: dict[str, Any]) -> str:
        if os.getpid() != driver_pid and not os.path.exists(marker):
            Path(marker).touch()
            Path(blocked).touch()
        return example["prompt"] + example["completion"]

    return to_text


def _broken(example: dict[str, Any]) -> str:
    raise ValueError("this formatting function is broken")


def test_a_run_failed_by_the_disk_is_resumed_and_one_failed_by_its_code_is_not(
    ray_cluster, tmp_path
):
    exp = Experiment("disk-full", experiment_path=tmp_path)
    sabotage = _sabotage(exp.dir, tmp_path / "sabotaged", os.getpid())
    with pytest.raises(NoRunTrainedError, match="no run trained, 2 of 2 failed"):
        exp.run_fit([_config(sabotage), _config(_broken)], train_dataset=sft_dataset(ROWS), **FIT)
    info = exp.get_runs_info().set_index("run_id")
    assert info["status"].tolist() == ["failed", "failed"]
    assert info.loc[1, "failed_by"] == "infrastructure"
    assert info.loc[2, "failed_by"] == "run"
    error = info.loc[1, "error"]
    assert "CheckpointError" in error
    # commands that work as written, wherever they are typed (tmp_path is not the default root)
    assert f"`rf-ray ops resume disk-full 1 --path {tmp_path}`" in error
    assert f"`rf-ray resume disk-full --path {tmp_path}`" in error
    assert "broken" in info.loc[2, "error"]

    Path(ExperimentDir(exp.dir).run(1).checkpoints_dir).unlink()  # the cause is gone
    info = exp.resume(live_view=False).set_index("run_id")
    exp.end()
    assert info["status"].tolist() == ["completed", "failed"]
    assert info.loc[1, "steps_done"] == 6
    resumed = _row(exp.dir, 1)
    assert resumed["error"] is None
    assert resumed["failed_by"] is None
    assert info.loc[2, "failed_by"] == "run"
    assert sorted(_losses(exp, 1)) == [1, 2, 3, 4, 5, 6]


def test_a_start_refused_because_run_1_exists_writes_nothing(ray_cluster, tmp_path):
    exp = Experiment("taken", experiment_path=tmp_path)
    stray = ExperimentDir(exp.dir).run(1).path
    stray.mkdir(parents=True)
    before = sorted(p.relative_to(exp.dir) for p in exp.dir.rglob("*"))
    with pytest.raises(ConfigError, match=r"run ids \[1\] are taken"):
        exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), **FIT)
    assert sorted(p.relative_to(exp.dir) for p in exp.dir.rglob("*")) == before
