"""A run whose trainer fails half-way through construction leaves the runs already on the
executor intact: its adapter is gone, and accelerate's process-wide state (which TRL's
TrainingArguments reset before the failure) is put back, so the others keep training."""

from __future__ import annotations

import math

import pytest
from peft import LoraConfig
from trl import SFTConfig

from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from rf_ray.toy import load_toy_model, sft_dataset

N = 16


def _spec(tmp_path, run_id, **kw):
    args = SFTConfig(
        output_dir=str(tmp_path / f"run{run_id}"),
        per_device_train_batch_size=4,
        max_length=48,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        completion_only_loss=False,
    )
    return RunSpec(
        run_id=run_id,
        model_key="toy",
        model_config=None,
        trainer_type="SFT",
        trl_args=args,
        lora_config=LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"]),
        plan=ChunkPlan(N, 4, 1, num_chunks=2),
        seed=1,
        **kw,
    )


def _boom(example):
    raise ValueError("boom")


def test_a_trainer_failing_to_build_leaves_the_other_runs_training(tmp_path):
    # Both specs are built first, as the driver builds them: building TrainingArguments resets
    # accelerate's state in the process that builds them, which is not the executor's.
    healthy, failing = _spec(tmp_path, 1), _spec(tmp_path, 2, formatting_func=_boom)
    executor = Executor(lambda _: load_toy_model(), sft_dataset(N, seed=0), device="cpu")
    executor.add_run(healthy)
    first = executor.run_slice(1, 1)
    with pytest.raises(ValueError, match="boom"):
        executor.add_run(failing)
    assert set(executor.registry) == {1}
    assert "2" not in executor.bases["toy"].model.peft_config
    second = executor.run_slice(1, 2)  # failed here before the fix: the state was wiped
    assert (first.end_step, second.end_step) == (1, 2)
    assert math.isfinite(second.step_metrics[-1]["loss"])
