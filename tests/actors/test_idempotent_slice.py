"""Slices are idempotent: a call retried after its reply was lost (``ActorUnavailableError``)
gets the slice's cached outcome back (same metrics, same checkpoint) without training again; a run
that is not resident at the grant's start step raises ``RunNotPlacedError`` naming both steps, and
is trained once re-placed from its checkpoint. Fused groups check each member the same way."""

from __future__ import annotations

import asyncio

import cloudpickle
import pytest
from peft import LoraConfig
from trl import SFTConfig

from actors.base_model_actor import BaseModelActor
from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from policies.errors import RunFailedError, RunNotPlacedError
from rf_ray.toy import load_toy_model, sft_dataset

N = 16  # 4 optimizer steps


def _spec(tmp_path, run_id: int) -> RunSpec:
    args = SFTConfig(
        output_dir=str(tmp_path / f"out{run_id}"), per_device_train_batch_size=4, max_length=48,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, seed=run_id,
        completion_only_loss=False,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])
    return RunSpec(run_id=run_id, model_key="toy", model_config=None, trainer_type="SFT",
                   trl_args=args, lora_config=lora, plan=ChunkPlan(N, 4, 1, num_chunks=2),
                   seed=1)  # fmt: skip


@pytest.fixture
def executor(tmp_path):
    ex = Executor(load_toy_model, sft_dataset(N, seed=0), device="cpu")
    ex.add_run(_spec(tmp_path, 1))
    return ex


def test_a_retried_slice_returns_its_cached_result_without_training(executor):
    first = executor.run_slice(1, 2, start_step=0)
    swaps = len(executor.stats.swap_seconds)
    again = executor.run_slice(1, 2, start_step=0)  # the reply of the first call was lost
    assert again is first  # same metrics (and, on the actor, same checkpoint)
    assert len(executor.stats.swap_seconds) == swaps  # nothing trained
    assert executor.registry[1].steps_done == 2
    assert [m["step"] for m in again.step_metrics] == [1.0, 2.0]


def test_a_grant_from_another_step_raises_run_not_placed_naming_both_steps(executor):
    executor.run_slice(1, 2, start_step=0)
    with pytest.raises(RunNotPlacedError, match=r"at step 2 .* starts at step 1"):
        executor.run_slice(1, 3, start_step=1)
    with pytest.raises(RunNotPlacedError, match="run 7 is not resident"):
        executor.run_slice(7, 2, start_step=0)
    assert executor.registry[1].steps_done == 2  # nothing trained by the refused calls


def test_remove_run_drops_the_cached_result(executor, tmp_path):
    executor.run_slice(1, 2, start_step=0)
    executor.remove_run(1)
    executor.add_run(_spec(tmp_path, 1))
    fresh = executor.run_slice(1, 2, start_step=0)  # trains again from step 0
    assert executor.registry[1].last_result is fresh


def test_a_slice_past_the_plan_end_is_refused_before_any_work(executor):
    with pytest.raises(RunFailedError, match=r"end_step=5 is outside its plan .* 4 optimizer"):
        executor.run_slice(1, 5)
    assert executor.registry[1].steps_done == 0


def test_fused_members_are_each_checked(tmp_path):
    actor = BaseModelActor(load_toy_model, sft_dataset(N, seed=0), device="cpu")
    for run_id in (1, 2):
        asyncio.run(actor.add_run(cloudpickle.dumps(_spec(tmp_path, run_id)), None, "t"))

    async def fused(grants):
        calls = [
            actor.run_slice(rid, start, end, False, str(tmp_path / f"run{rid}"), group=[1, 2])
            for rid, start, end in grants
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    first = asyncio.run(fused([(1, 0, 2), (2, 0, 2)]))
    assert [r.fused_with for r in first] == [2, 2]
    swaps = len(actor.executor.stats.swap_seconds)
    # Run 1's call is retried (its reply was lost); run 2's grant is from a step it is not at.
    again = asyncio.run(fused([(1, 0, 2), (2, 1, 3)]))
    assert again[0].step_metrics == first[0].step_metrics
    assert again[0].checkpoint == first[0].checkpoint
    assert isinstance(again[1], RunNotPlacedError)
    assert len(actor.executor.stats.swap_seconds) == swaps
    assert actor.executor.stats.fusion.slices == 1  # nothing trained the second time


def test_through_the_actor_retry_then_re_place(ray_cluster, tmp_path):
    ray = ray_cluster
    actor = (
        ray.remote(BaseModelActor)
        .options(num_cpus=0)
        .remote(load_toy_model, sft_dataset(N, seed=0), device="cpu")
    )
    try:
        blob = cloudpickle.dumps(_spec(tmp_path, 1))
        run_dir = str(tmp_path / "run1")
        ray.get(actor.add_run.remote(blob, None, "t"), timeout=300)
        first = ray.get(actor.run_slice.remote(1, 0, 2, False, run_dir), timeout=300)
        # The checkpoint is written in the background: durable once wait_durable answers.
        assert ray.get(actor.wait_durable.remote(1, 2), timeout=300) == first.checkpoint
        again = ray.get(actor.run_slice.remote(1, 0, 2, False, run_dir), timeout=300)
        assert (again.step_metrics, again.checkpoint) == (first.step_metrics, first.checkpoint)
        with pytest.raises(RunNotPlacedError, match="starts at step 1"):
            ray.get(actor.run_slice.remote(1, 1, 3, False, run_dir), timeout=300)
        # The trial's answer to RunNotPlacedError: re-place from the checkpoint, call again.
        ray.get(actor.add_run.remote(blob, first.checkpoint, "t"), timeout=300)
        ray.get(actor.add_run.remote(blob, None, "t"), timeout=300)  # re-seeded at step 0
        redo = ray.get(actor.run_slice.remote(1, 0, 2, False, run_dir), timeout=300)
        ray.get(actor.wait_durable.remote(1, 2), timeout=300)
        assert redo.step_metrics == first.step_metrics  # deterministic: trained again
        ray.get(actor.add_run.remote(blob, redo.checkpoint, "t"), timeout=300)  # no-op, at 2
        nxt = ray.get(actor.run_slice.remote(1, 2, 4, False, run_dir), timeout=300)
        assert [m["step"] for m in nxt.step_metrics] == [3.0, 4.0]
    finally:
        ray.kill(actor)


@pytest.mark.parametrize("fails_first", [True, False])
def test_a_member_that_cannot_be_placed_does_not_hold_its_fused_group(
    tmp_path, monkeypatch, fails_first
):
    """RapidFire's DPO notebooks have a config TRL's trainer cannot start (robust loss with
    label_smoothing=0.5): its add_run fails and it never calls in. The group's other members
    trained only after GROUP_WAIT_SECONDS (30 s each time); now at once. The wait is set past
    the test's bound, so a group that still waits fails the test."""
    monkeypatch.setattr("actors.base_model_actor.GROUP_WAIT_SECONDS", 3600.0)
    # Every spec is built first, as the driver does: a TRL config built in the executor's
    # process resets accelerate's shared state under the trainers already there.
    specs = [_spec(tmp_path, run_id) for run_id in (1, 2, 3)]
    broken = specs.pop()
    broken.lora_config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["no_such"])
    actor = BaseModelActor(load_toy_model, sft_dataset(N, seed=0), device="cpu")
    for spec in specs:
        asyncio.run(actor.add_run(cloudpickle.dumps(spec), None, "t"))

    async def scenario():
        place = actor.add_run(cloudpickle.dumps(broken), None, "t")
        if fails_first:
            with pytest.raises(ValueError, match="no_such"):
                await place
        calls = [actor.run_slice(rid, 0, 2, False, str(tmp_path / f"run{rid}"), group=[1, 2, 3])
                 for rid in (1, 2)]  # fmt: skip
        if not fails_first:  # the others are waiting in their group when it fails
            calls.append(place)
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 300)

    results = asyncio.run(scenario())
    assert [r.fused_with for r in results[:2]] == [2, 2]  # 1 and 2 trained together
    assert [m["step"] for m in results[0].step_metrics] == [1.0, 2.0]
    if not fails_first:
        assert isinstance(results[2], ValueError)
