"""Damaged files and what failed a run (issue 21, items 10, 11, 12), without Ray:

* a store SQLite cannot read is one ``DamagedFileError`` naming ``rf_ray.db``;
* a truncated checkpoint file is a ``DamagedCheckpointError`` (an ``InfrastructureError``)
  naming the file, and ``newest_intact`` passes over it to the previous checkpoint, which
  ``save`` keeps until the next one is durable;
* a run failed by the infrastructure may be resumed, one failed by its own code may not, and
  the refusal says what works.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
import torch

from actors.messages import RunEntry
from actors.scheduler import Grant, SchedulerCore
from actors.storage import checkpoint
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.chunking import ChunkPlan
from policies.errors import DamagedFileError, InfrastructureError, OpError
from policies.pruning import NoPruning
from policies.state import FailedBy, RunStatus


def _state(step: int) -> dict:
    return {
        "adapter": {"lora_A": torch.full((4, 8), float(step))},
        "optimizer": {"0.exp_avg": torch.full((8,), float(step))},
        "rng": {"cpu": torch.arange(16, dtype=torch.uint8)},
        "meta": {"steps_done": step, "optimizer_param_groups": [], "optimizer_scalars": {}},
    }


@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_a_store_that_is_not_a_database_is_named(tmp_path, readonly):
    layout = ExperimentDir(tmp_path / "exp")
    layout.root.mkdir()
    layout.store.write_bytes(b"this is not SQLite " * 64)
    with pytest.raises(DamagedFileError) as damaged:
        Store(layout.root, readonly=readonly).meta()
    assert str(layout.store) in str(damaged.value)
    assert "backup" in str(damaged.value)


def test_a_store_with_garbage_json_is_named(tmp_path):
    with Store(tmp_path) as store:
        store.set_meta(name="exp")
    conn = sqlite3.connect(ExperimentDir(tmp_path).store)
    with conn:
        conn.execute("UPDATE meta SET value = '{not json' WHERE key = 'name'")
    conn.close()
    store = Store(tmp_path, readonly=True)
    try:
        with pytest.raises(DamagedFileError, match=r"rf_ray\.db"):
            store.meta()
    finally:
        store.close()


def test_save_keeps_the_previous_checkpoint_until_the_next_is_on_disk(tmp_path):
    run = ExperimentDir(tmp_path).run(1)
    for step in (1, 2, 3):
        checkpoint.save(_state(step), run.path, keep=2)
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == [
        "step-00000002",
        "step-00000003",
    ]


@pytest.mark.parametrize("victim", [checkpoint.ADAPTER_FILE, checkpoint.OPTIMIZER_FILE])
def test_a_truncated_checkpoint_names_its_file_and_the_previous_one_is_used(tmp_path, victim):
    run = ExperimentDir(tmp_path).run(1)
    for step in (1, 2):
        checkpoint.save(_state(step), run.path, keep=2)
    damaged = run.checkpoint(2) / victim
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) - 7)
    with pytest.raises(checkpoint.DamagedCheckpointError) as error:
        checkpoint.load(run.checkpoint(2))
    assert isinstance(error.value, InfrastructureError)
    assert str(damaged) in str(error.value)
    path, skipped = checkpoint.newest_intact(run.path, at_most=2)
    assert path == run.checkpoint(1)
    assert len(skipped) == 1
    assert str(damaged) in skipped[0]
    assert torch.equal(checkpoint.load(path)["adapter"]["lora_A"], _state(1)["adapter"]["lora_A"])


def test_a_garbage_state_file_and_a_missing_checkpoint_are_named(tmp_path):
    run = ExperimentDir(tmp_path).run(1)
    checkpoint.save(_state(1), run.path)
    state = run.checkpoint(1) / checkpoint.STATE_FILE
    state.write_text("{garbage")
    with pytest.raises(checkpoint.DamagedCheckpointError, match=r"state\.json"):
        checkpoint.steps_done(run.checkpoint(1))
    assert checkpoint.newest_intact(run.path, at_most=1)[0] is None
    with pytest.raises(checkpoint.DamagedCheckpointError, match="missing"):
        checkpoint.load(run.checkpoint(5))


def _core() -> SchedulerCore:
    core = SchedulerCore(NoPruning().with_defaults("train_loss", "min"))
    plan = ChunkPlan(num_examples=16, batch_size=4, grad_accum=1, num_chunks=2)
    for rid in (1, 2):
        core.add_run(RunEntry(rid, plan.to_dict(), b"", {}, {}))
    return core


def test_a_run_failed_by_the_infrastructure_resumes_one_failed_by_its_code_does_not():
    core = _core()
    core.on_failure(1, "CheckpointError: disk full", FailedBy.INFRASTRUCTURE)
    core.on_failure(2, "ValueError: bad reward")
    assert core.runs[2].failed_by is FailedBy.RUN
    with pytest.raises(OpError) as refused:
        core.apply_op("resume", 2)
    assert "own code" in str(refused.value)
    assert "clone" in str(refused.value)
    assert core.runs[2].status is RunStatus.FAILED
    core.apply_op("resume", 1)
    row = core.runs[1]
    assert row.status is RunStatus.RUNNING
    assert row.error is None
    assert row.failed_by is None
    grant = core.grant_for(1)
    assert isinstance(grant, Grant)
    assert grant.start_step == 0
