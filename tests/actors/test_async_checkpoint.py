"""Checkpoints are written in the background, and a slice counts only once its checkpoint is
durable (``BaseModelActor.wait_durable``, which the trial awaits before it reports):

* ``run_slice`` returns while the write is still queued; ``wait_durable`` answers only after it;
* a failing write fails its run's ``wait_durable`` with a clear error; the other run's is fine;
* the queue never holds more host memory than its budget (a writer that waits on it);
* the snapshot is a copy: the run training on does not change what gets written;
* an executor lost before the write finished: the run, re-placed from its previous durable
  checkpoint, re-trains the slice to exactly what an uninterrupted run has.

Fault injection: the writer's ``save`` is replaced by one that waits on an event or raises.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import cloudpickle
import pytest
import torch

from actors.base_model_actor import BaseModelActor
from actors.engine import snapshot
from actors.engine.ckpt_writer import CheckpointWriter, state_bytes
from actors.storage import checkpoint
from actors.storage.layout import ExperimentDir, RunDir
from policies.errors import CheckpointError, RunNotPlacedError
from rf_ray.toy import load_toy_model, sft_dataset
from tests.actors.test_idempotent_slice import N, _spec


def _actor() -> BaseModelActor:
    return BaseModelActor(load_toy_model, sft_dataset(N, seed=0), device="cpu")


def _add(actor: BaseModelActor, tmp_path: Path, run_id: int, ckpt: str | None = None) -> None:
    asyncio.run(actor.add_run(cloudpickle.dumps(_spec(tmp_path, run_id)), ckpt, "t"))


def _slice(actor: BaseModelActor, run_id: int, start: int, end: int, run_dir: Path):
    return asyncio.run(actor.run_slice(run_id, start, end, False, str(run_dir)))


class _GatedSave:
    """``checkpoint.save`` that waits until released (a slow disk), or raises for one run."""

    def __init__(self, fail_run: int | None = None) -> None:
        self.gate = threading.Event()
        self.fail_run = fail_run
        self.saved: list[tuple[int, int]] = []

    def __call__(self, state, run_dir, keep):
        assert self.gate.wait(120), "the test never released the writer"
        if state["meta"]["run_id"] == self.fail_run:
            raise OSError(28, "No space left on device")
        self.saved.append((state["meta"]["run_id"], state["meta"]["steps_done"]))
        return checkpoint.save(state, run_dir, keep=keep)


def test_a_slice_returns_before_its_checkpoint_is_durable_and_wait_durable_waits(tmp_path):
    actor = _actor()
    save = _GatedSave()
    actor.writer = CheckpointWriter(save=save)
    _add(actor, tmp_path, 1)
    result = _slice(actor, 1, 0, 2, ExperimentDir(tmp_path).run(1).path)
    assert result.checkpoint is not None
    assert not Path(result.checkpoint).exists()  # queued, not on disk yet

    async def wait_then_release() -> tuple[bool, str]:
        waiting = asyncio.ensure_future(actor.wait_durable(1, 2))
        await asyncio.sleep(0)
        early = waiting.done()
        save.gate.set()
        return early, await waiting

    early, path = asyncio.run(wait_then_release())
    assert not early  # not durable while the write was held back
    assert path == result.checkpoint
    assert checkpoint.steps_done(path) == 2
    assert save.saved == [(1, 2)]


def test_a_failed_write_fails_only_its_run(tmp_path):
    actor = _actor()
    save = _GatedSave(fail_run=1)
    actor.writer = CheckpointWriter(save=save)
    for run_id in (1, 2):
        _add(actor, tmp_path, run_id)
        _slice(actor, run_id, 0, 2, ExperimentDir(tmp_path).run(run_id).path)
    save.gate.set()
    with pytest.raises(
        CheckpointError, match=r"run 1: writing its checkpoint of step 2 .*No space"
    ):
        asyncio.run(actor.wait_durable(1, 2))
    assert checkpoint.steps_done(asyncio.run(actor.wait_durable(2, 2))) == 2


def test_wait_durable_for_a_write_this_executor_never_queued_says_re_place(tmp_path):
    actor = _actor()
    with pytest.raises(RunNotPlacedError, match="no checkpoint write of step 3"):
        asyncio.run(actor.wait_durable(1, 3))


def test_the_queue_holds_at_most_its_byte_budget(tmp_path):
    actor = _actor()
    for run_id in (1, 2, 3, 4):
        _add(actor, tmp_path, run_id)
    asyncio.run(_durable_slice(actor, 1, 0, 1, ExperimentDir(tmp_path).run(1).path))
    one = state_bytes(snapshot.capture(actor.executor.registry[1], _model(actor)))
    save = _GatedSave()
    actor.writer = CheckpointWriter(budget_bytes=2 * one, wait_s=0.5, save=save)
    _slice(actor, 2, 0, 1, ExperimentDir(tmp_path).run(2).path)
    _slice(actor, 3, 0, 1, ExperimentDir(tmp_path).run(3).path)
    assert actor.writer.queued_bytes == 2 * one
    fourth = ExperimentDir(tmp_path).run(4).path
    with pytest.raises(CheckpointError, match=r"run 4: .* no room in the checkpoint queue"):
        _slice(actor, 4, 0, 1, fourth)  # full: waits 0.5 s, then refuses
    save.gate.set()
    assert actor.writer.drain(60)
    _slice(actor, 2, 1, 2, ExperimentDir(tmp_path).run(2).path)  # room again
    assert actor.writer.drain(60)
    assert actor.writer.peak_bytes == 2 * one
    assert save.saved == [(2, 1), (3, 1), (2, 2)]
    assert checkpoint.steps_done(asyncio.run(actor.wait_durable(2, 2))) == 2


def test_the_written_state_is_the_one_at_the_slice_end_not_after_later_training(tmp_path):
    actor = _actor()
    save = _GatedSave()
    actor.writer = CheckpointWriter(save=save)
    _add(actor, tmp_path, 1)
    run_dir = ExperimentDir(tmp_path).run(1).path
    _slice(actor, 1, 0, 1, run_dir)
    at_one = {k: v.clone() for k, v in _adapter(actor, 1).items()}
    _slice(actor, 1, 1, 3, run_dir)  # trains on while the step-1 write is held back
    save.gate.set()
    written = checkpoint.load(asyncio.run(actor.wait_durable(1, 1)))["adapter"]
    for name, tensor in at_one.items():
        assert torch.equal(written[name], tensor), name
    assert not all(torch.equal(_adapter(actor, 1)[k], v) for k, v in at_one.items())


def test_an_executor_lost_before_the_write_resumes_from_the_previous_durable_one(tmp_path):
    # Uninterrupted: 4 steps in two slices.
    plain = _actor()
    _add(plain, tmp_path, 1)
    _slice(plain, 1, 0, 2, tmp_path / "plain")
    _slice(plain, 1, 2, 4, tmp_path / "plain")
    expected = _adapter(plain, 1)
    # Interrupted: step 2 is durable; the step-4 write never happens (the process is lost).
    first = _actor()
    _add(first, tmp_path, 1)
    durable_two = asyncio.run(_durable_slice(first, 1, 0, 2, tmp_path / "lost"))
    stuck = _GatedSave()
    first.writer = CheckpointWriter(save=stuck)
    _slice(first, 1, 2, 4, tmp_path / "lost")
    assert not RunDir(tmp_path / "lost").checkpoint(4).exists()
    # A fresh executor (the restarted process) re-places the run from step 2 and re-trains.
    second = _actor()
    _add(second, tmp_path, 1, durable_two)
    _slice(second, 1, 2, 4, tmp_path / "lost")
    stuck.gate.set()  # let the lost executor's thread end
    for name, tensor in expected.items():
        assert torch.equal(_adapter(second, 1)[name], tensor), name


async def _durable_slice(actor: BaseModelActor, run_id: int, start: int, end: int, run_dir):
    await actor.run_slice(run_id, start, end, False, str(run_dir))
    return await actor.wait_durable(run_id, end)


def _model(actor: BaseModelActor):
    return actor.executor.bases["toy"].model


def _adapter(actor: BaseModelActor, run_id: int) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    name = actor.executor.registry[run_id].spec.adapter_name
    state = get_peft_model_state_dict(_model(actor), adapter_name=name)
    return {k: v.detach().clone() for k, v in state.items()}
