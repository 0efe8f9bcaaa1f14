"""GRPO end to end through ``Experiment.run_fit``: real Ray actors, TRL's GRPOTrainer, MLflow.

One small experiment searches over reward sets (a ``List`` of reward-function lists is a knob),
one of which holds a faulty reward function: that run fails with an error naming the function,
the others train to the end and are compared on mean reward (GRPO's default metric, mode max).
The executor-level bit-exactness of GRPO is ``tests/actors/test_equivalence_grpo.py``.
"""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from rf_ray import ConfigError, Experiment, List, RFGRPOConfig, RFModelConfig
from rf_ray.toy import TOY_MODEL_NAME, arithmetic_reward, format_reward, grpo_dataset

# 8 prompts, 2 per generation batch (8 completions = 4 per device batch x 2 steps_per_generation,
# 4 generations each): 8 micro-batches, 4 optimizer steps, 2 chunks of 2 steps.
PROMPTS, NUM_CHUNKS, STEPS = 8, 2, 4
GRPO_ARGS = dict(
    per_device_train_batch_size=4, gradient_accumulation_steps=2, num_generations=4,
    max_completion_length=4, num_train_epochs=1, learning_rate=5e-3,
    lora_rank=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
)  # fmt: skip


def spread_reward(prompts, completions, **kwargs):
    """Varies within a prompt group, so the toy's advantages are not all zero."""
    return [float(zlib.crc32(c.encode()) % 7) / 6 for c in completions]


def bad_reward(prompts, completions, **kwargs):
    return [1.0] * 3


def _config(reward_funcs, **knobs) -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFGRPOConfig(**{**GRPO_ARGS, **knobs}),
        reward_funcs=reward_funcs,
    )


@pytest.fixture(scope="module")
def rewards(ray_cluster, tmp_path_factory):
    """Three runs, one per reward set; the third has a reward function of the wrong length."""
    exp = Experiment("grpo-rewards", experiment_path=tmp_path_factory.mktemp("grpo"))
    reward_sets = List(
        [[arithmetic_reward, spread_reward], [format_reward], [arithmetic_reward, bad_reward]]
    )
    try:
        info = exp.run_fit(
            _config(reward_sets),
            train_dataset=grpo_dataset(PROMPTS),
            num_chunks=NUM_CHUNKS,
            seed=5,
            live_view=False,  # default pruner: successive halving on mean reward, mode max
        )
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, info=info.set_index("run_id", drop=False))


def test_a_list_of_reward_sets_is_one_run_per_set(rewards):
    configs = rewards.info["config"]
    assert [c["reward_funcs"] for c in configs] == [
        "arithmetic_reward,spread_reward", "format_reward", "arithmetic_reward,bad_reward",
    ]  # fmt: skip


def test_a_faulty_reward_function_fails_only_its_run(rewards):
    failed = rewards.info.loc[3]
    assert failed["status"] == "failed"
    assert "reward function 'bad_reward' returned 3 values for 8 completions" in failed["error"]
    assert failed["steps_done"] == 0
    run = MlflowClient(tracking_uri=rewards.exp.tracking_uri).get_run(failed["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "bad_reward" in run.data.tags["rf_ray.error"]
    healthy = rewards.info.loc[[1, 2]]
    assert set(healthy["status"]) <= {"completed", "pruned"}
    assert (healthy["status"] == "completed").any()


def test_grpo_metrics_reach_the_store_and_mlflow(rewards):
    res = rewards.exp.get_results()
    assert set(res["run_id"]) == {1, 2}
    for key in ("loss", "reward", "reward_std", "completions/mean_length"):
        assert res[key].map(math.isfinite).all(), key
    # TRL names each reward function's metric after it (the checking wrapper keeps the name).
    assert res.loc[res["run_id"] == 1, "rewards/spread_reward/mean"].notna().all()
    assert res.loc[res["run_id"] == 2, "rewards/format_reward/mean"].notna().all()
    client = MlflowClient(tracking_uri=rewards.exp.tracking_uri)
    for row in rewards.info.loc[[1, 2]].itertuples():
        assert len(client.get_metric_history(row.mlflow_run_id, "reward")) == row.steps_done
        assert client.get_metric_history(row.mlflow_run_id, "chunk/reward")


def test_runs_are_compared_on_mean_reward_higher_is_better(rewards):
    steps, chunks = rewards.exp.get_results(), rewards.exp.get_chunk_results()
    per_chunk = STEPS // NUM_CHUNKS
    for row in chunks.itertuples():
        mine = steps[
            (steps["run_id"] == row.run_id) & (steps["step"] > (row.chunk - 1) * per_chunk)
        ]
        mine = mine[mine["step"] <= row.chunk * per_chunk]
        assert chunks.loc[row.Index, "reward"] == pytest.approx(mine["reward"].mean())
    for row in rewards.info.loc[[1, 2]].itertuples():
        mine = chunks[chunks["run_id"] == row.run_id]
        assert row.best_metric == pytest.approx(mine["reward"].max())


def test_num_generations_that_splits_a_prompt_group_is_refused_before_start(tmp_path):
    exp = Experiment("grpo-bad", experiment_path=tmp_path)
    with pytest.raises(ConfigError) as info:
        exp.run_fit(
            _config([arithmetic_reward], num_generations=3),
            train_dataset=grpo_dataset(PROMPTS),
            live_view=False,
        )
    message = str(info.value)
    assert "num_generations=3" in message
    assert "per_device_train_batch_size x steps_per_generation = 4 x 2" in message
    assert "generation_batch_size % num_generations == 0" in message
    assert not exp.dir.exists()  # nothing written, no actor started


def test_too_many_chunks_for_grpo_says_how_steps_are_counted(tmp_path):
    exp = Experiment("grpo-chunks", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match="GRPO counts generation batches: 8 prompts make 4"):
        exp.run_fit(
            _config([arithmetic_reward]),
            train_dataset=grpo_dataset(PROMPTS),
            num_chunks=STEPS + 1,
            live_view=False,
        )
    assert not exp.dir.exists()
