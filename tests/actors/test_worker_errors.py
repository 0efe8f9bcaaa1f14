"""Whatever the executor's worker thread raises reaches the caller, and ``activity()`` names what
the worker is doing even while it is stuck.

Fault injection through the run's own ``compute_metrics`` (user code that runs inside the slice,
at evaluation): one raises StopIteration, which asyncio cannot carry out of a worker thread (the
call hung before the fix); one blocks on a FIFO the test opens at the end.
"""

from __future__ import annotations

import asyncio
import os
import select
import sys

import cloudpickle
import pytest
from peft import LoraConfig
from trl import SFTConfig

from actors.base_model_actor import BaseModelActor
from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from policies.errors import RunFailedError
from rf_ray.toy import load_toy_model, sft_dataset, sft_eval_dataset

N = 16
BOUND = 300  # seconds: generous for a loaded 2-core machine; a hang would wait forever

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


def _spec(tmp_path, run_id: int, compute_metrics=None) -> RunSpec:
    args = SFTConfig(
        output_dir=str(tmp_path / f"out{run_id}"), per_device_train_batch_size=4, max_length=48,
        per_device_eval_batch_size=8, report_to="none", use_cpu=True, save_strategy="no",
        disable_tqdm=True, completion_only_loss=False,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])
    return RunSpec(run_id=run_id, model_key="toy", model_config=None, trainer_type="SFT",
                   trl_args=args, lora_config=lora, plan=ChunkPlan(N, 4, 1, num_chunks=2),
                   seed=1, compute_metrics=compute_metrics)  # fmt: skip


def _stop_iteration(eval_pred):
    raise StopIteration("the metric's iterator ran dry")


def _raising(kind: type[BaseException]):
    def compute_metrics(eval_pred):
        raise kind("raised by user code")

    return compute_metrics


def _waiting_on(entered: str, release: str):
    def blocked_compute_metrics(eval_pred):
        with open(entered, "w") as f:  # tell the test we are in
            f.write("in")
        with open(release) as f:  # blocks until the test closes its end
            f.read()
        return {}

    return blocked_compute_metrics


@pytest.fixture
def executor(ray_cluster):
    ray = ray_cluster
    actor = (
        ray.remote(BaseModelActor)
        .options(num_cpus=0)
        .remote(load_toy_model, sft_dataset(N, seed=0), sft_eval_dataset(8), device="cpu")
    )
    yield actor
    ray.kill(actor)


def _add(ray, actor, spec):
    ray.get(actor.add_run.remote(cloudpickle.dumps(spec), None, "t"), timeout=BOUND)


def test_stop_iteration_in_a_slice_fails_the_run_and_the_executor_goes_on(
    ray_cluster, executor, tmp_path
):
    ray = ray_cluster
    _add(ray, executor, _spec(tmp_path, 1, compute_metrics=_stop_iteration))
    failing = executor.run_slice.remote(1, 0, 1, True, str(tmp_path / "run1"))
    with pytest.raises(RunFailedError, match="StopIteration raised while evaluating run 1"):
        ray.get(failing, timeout=BOUND)  # hung forever before the fix
    _add(ray, executor, _spec(tmp_path, 2))
    result = ray.get(
        executor.run_slice.remote(2, 0, 2, True, str(tmp_path / "run2")), timeout=BOUND
    )
    assert [m["step"] for m in result.step_metrics] == [1.0, 2.0]
    assert result.checkpoint is not None


def test_activity_names_the_user_function_the_worker_is_stuck_in(ray_cluster, executor, tmp_path):
    ray = ray_cluster
    entered, release = str(tmp_path / "entered"), str(tmp_path / "release")
    os.mkfifo(entered)
    os.mkfifo(release)
    entered_fd = os.open(entered, os.O_RDONLY | os.O_NONBLOCK)
    release_fd = os.open(release, os.O_RDWR)  # a writer from the start: the reader blocks
    try:
        _add(ray, executor, _spec(tmp_path, 1, compute_metrics=_waiting_on(entered, release)))
        assert ray.get(executor.activity.remote(), timeout=BOUND) == "idle"
        stuck = executor.run_slice.remote(1, 0, 1, True, str(tmp_path / "run1"))
        ready, _, _ = select.select([entered_fd], [], [], BOUND)
        assert ready, f"compute_metrics was not called within {BOUND} s"
        activity = ray.get(executor.activity.remote(), timeout=BOUND)  # worker still stuck
        assert activity.startswith("evaluating run 1; in blocked_compute_metrics (")
        assert "<- evaluation_loop (" in activity  # the frames that called it, innermost first
    finally:
        os.close(release_fd)  # releases the function
        os.close(entered_fd)
    result = ray.get(stuck, timeout=BOUND)
    assert result.end_step == 1
    assert ray.get(executor.activity.remote(), timeout=BOUND) == "idle"


@pytest.fixture(scope="module")
def plain_actor():
    """The actor class as a plain object (no Ray): the worker thread and event loop are real."""
    return BaseModelActor(load_toy_model, sft_dataset(N, seed=0), sft_eval_dataset(8), device="cpu")


@pytest.mark.parametrize(
    "kind", [StopIteration, StopAsyncIteration, KeyboardInterrupt, SystemExit, GeneratorExit]
)
def test_any_exception_from_the_worker_reaches_the_caller_as_the_run_failure(
    plain_actor, tmp_path, kind
):
    run_id = 10 + [StopIteration, StopAsyncIteration, KeyboardInterrupt, SystemExit,
                   GeneratorExit].index(kind)  # fmt: skip
    spec = _spec(tmp_path, run_id, compute_metrics=_raising(kind))

    async def slice_call():
        await plain_actor.add_run(cloudpickle.dumps(spec), None, "t")
        call = plain_actor.run_slice(run_id, 0, 1, True, str(tmp_path / "run"))
        return await asyncio.wait_for(call, BOUND)

    with pytest.raises(RunFailedError, match=f"{kind.__name__} raised while evaluating") as err:
        asyncio.run(slice_call())
    assert isinstance(err.value.__cause__, kind)


def test_a_grpo_plan_longer_than_its_data_fails_the_run_clearly(tmp_path):
    """Issue 12 item 1: a cold GRPO clone sized from the wrong count ran TRL's dataloader dry."""
    from rf_ray.configs import RFGRPOConfig, RFModelConfig
    from rf_ray.search import RFGridSearch
    from rf_ray.specs import build_specs
    from rf_ray.toy import TOY_MODEL_NAME, format_reward, grpo_dataset

    data = grpo_dataset(8)
    config = RFGRPOConfig(
        per_device_train_batch_size=4, num_generations=4, max_completion_length=4,
        lora_rank=4, target_modules=["q_proj", "v_proj"],
    )  # fmt: skip
    group = RFGridSearch(
        [
            RFModelConfig(
                model_name=TOY_MODEL_NAME, training_args=config, reward_funcs=[format_reward]
            )
        ]
    )
    # The plan believes in twice the rows the executor's dataset has.
    (spec,) = build_specs(group.expand(), tmp_path, 2 * len(data), 2, seed=7)
    executor = Executor(lambda _: load_toy_model(), data, device="cpu")
    executor.add_run(spec)
    with pytest.raises(RunFailedError, match="dataloader ran dry at optimizer step"):
        executor.run_slice(spec.run_id, spec.plan.total_steps)
