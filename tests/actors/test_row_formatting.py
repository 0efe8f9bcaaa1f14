"""A DPO or GRPO run's ``formatting_func`` is applied as RapidFire AI applies it for every
trainer type (``dataset.map(formatting_func)``: the columns it returns are added to each row),
on the executor, before TRL's trainer reads the data (issue 22 item 3); a DPO config whose loss
can only be infinite fails its run at its start, saying why. No Ray."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig

from actors.engine.executor import Executor
from actors.engine.spec import RunSpec
from policies.chunking import ChunkPlan
from policies.errors import RunFailedError
from rf_ray.toy import dpo_dataset, load_toy_model


def _raw(n: int) -> Dataset:
    """DPO pairs under other column names, as a hub dataset might have them."""
    rows = dpo_dataset(n)
    return Dataset.from_dict(
        {"question": rows["prompt"], "good": rows["chosen"], "bad": rows["rejected"]}
    )


def to_preference(row):
    return {"prompt": row["question"], "chosen": row["good"], "rejected": row["bad"]}


def _spec(tmp_path, run_id, formatting_func, **dpo):
    args = DPOConfig(
        output_dir=str(tmp_path / str(run_id)), per_device_train_batch_size=4, learning_rate=1e-3,
        num_train_epochs=1, max_length=32, report_to="none", use_cpu=True, bf16=False, seed=3,
        save_strategy="no", **dpo,
    )  # fmt: skip
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    return RunSpec(
        run_id=run_id, model_key="toy", model_config=None, trainer_type="DPO", trl_args=args,
        lora_config=lora, plan=ChunkPlan(8, 4, 1, num_chunks=1), seed=0,
        formatting_func=formatting_func,
    )  # fmt: skip


def test_a_dpo_formatting_func_adds_its_columns_and_the_run_trains(tmp_path):
    executor = Executor(lambda _: load_toy_model(), _raw(8), _raw(4), "cpu")
    spec = _spec(tmp_path, 1, to_preference)
    executor.add_run(spec)
    trainer = executor.registry[1].trainer
    assert {"prompt", "chosen", "rejected", "question"} <= set(trainer.train_dataset.column_names)
    result = executor.run_slice(1, spec.plan.chunk_bounds(0)[1], True)
    assert len(result.step_metrics) == 2
    assert all(math.isfinite(m["loss"]) for m in result.step_metrics)
    assert "eval_loss" in result.eval_metrics
    assert trainer.train_dataset.num_rows == 8  # every row kept, in order


def test_a_formatting_func_that_returns_text_fails_its_run_naming_it(tmp_path):
    executor = Executor(lambda _: load_toy_model(), _raw(8), None, "cpu")
    with pytest.raises(RunFailedError, match=r"formatting_func .*returned str; for DPO it must"):
        executor.add_run(_spec(tmp_path, 2, lambda row: row["question"]))


def test_a_dpo_loss_that_can_only_be_infinite_fails_its_run_at_its_start(tmp_path):
    """RapidFire's DPO notebook sets loss_type="robust" with label_smoothing=0.5; TRL only logs
    a warning, and the loss divides by 1 - 2 * label_smoothing."""
    executor = Executor(lambda _: load_toy_model(), _raw(8), None, "cpu")
    spec = _spec(tmp_path, 3, to_preference, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(RunFailedError, match=r"'robust'.*label_smoothing=0.5.*\[0, 0.5\)"):
        executor.add_run(spec)
    executor.add_run(_spec(tmp_path, 4, to_preference, loss_type="robust", label_smoothing=0.1))
