"""DPO end to end through ``Experiment.run_fit``: real Ray actors, TRL's DPOTrainer, MLflow.

A module-scoped 4-config grid (beta x learning rate, successive halving on TRL's
``rewards/accuracies``, mode max) is trained once; a 2-run experiment with an eval set covers the
eval_loss default. The executor-level bit-exactness of DPO is ``tests/actors/
test_equivalence_dpo.py``; this file checks that the DPO metrics reach the store, the chunk
means the pruner compares and MLflow, and that bad DPO input fails before anything starts.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from rf_ray import ConfigError, Experiment, List, RFDPOConfig, RFModelConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, dpo_dataset, sft_dataset

# 32 pairs at batch size 4: 8 optimizer steps; 4 chunks of 2 steps; rungs after chunks 1 and 2.
TRAIN_ROWS, NUM_CHUNKS, STEPS_PER_CHUNK = 32, 4, 2
TRAIN_ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, max_length=48)
LORA = dict(lora_rank=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
METRIC = "rewards/accuracies"


def _config(**knobs) -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME, training_args=RFDPOConfig(**TRAIN_ARGS, **LORA, **knobs)
    )


@pytest.fixture(scope="module")
def grid(ray_cluster, tmp_path_factory):
    exp = Experiment("dpo-grid", experiment_path=tmp_path_factory.mktemp("dpo"))
    try:
        info = exp.run_fit(
            _config(beta=List([0.1, 0.5]), learning_rate=List([5e-3, 1e-5])),
            train_dataset=dpo_dataset(TRAIN_ROWS),
            num_chunks=NUM_CHUNKS,
            seed=3,
            pruner=SuccessiveHalving(metric=METRIC, mode="max", eta=2),
            live_view=False,
        )
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, info=info.set_index("run_id", drop=False))


def test_runs_complete_or_are_pruned_by_successive_halving(grid):
    info = grid.info
    assert sorted(info["status"]) == ["completed", "pruned", "pruned", "pruned"]
    assert sorted(info.loc[info["status"] == "pruned", "pruned_at"].astype(int)) == [1, 1, 2]
    for row in info.itertuples():
        chunks = NUM_CHUNKS if row.status == "completed" else int(row.pruned_at)
        assert row.steps_done == chunks * STEPS_PER_CHUNK


def test_dpo_metrics_reach_the_step_results(grid):
    res = grid.exp.get_results()
    assert len(res) == grid.info["steps_done"].sum()
    for key in ("loss", "grad_norm", *DPO_METRICS):
        assert res[key].map(math.isfinite).all(), key
    # margins = chosen - rejected, per step (TRL's definition), up to float rounding.
    margins = res["rewards/chosen"] - res["rewards/rejected"]
    assert (margins - res["rewards/margins"]).abs().max() < 1e-5


def test_chunk_metrics_are_means_of_step_metrics(grid):
    steps, chunks = grid.exp.get_results(), grid.exp.get_chunk_results()
    for row in chunks.itertuples():
        first = (row.chunk - 1) * STEPS_PER_CHUNK  # chunk numbers count completed chunks
        mine = steps[(steps["run_id"] == row.run_id) & (steps["step"] > first)]
        mine = mine[mine["step"] <= first + STEPS_PER_CHUNK]
        assert chunks.loc[row.Index, METRIC] == pytest.approx(mine[METRIC].mean())


def test_pruning_keeps_the_best_named_metric(grid):
    chunks, info = grid.exp.get_chunk_results(), grid.info
    alive = sorted(info["run_id"])
    for rung in (1, 2):
        at_rung = chunks[(chunks["chunk"] == rung) & chunks["run_id"].isin(alive)]
        # Higher is better; ties go to the smaller run id (policies.pruning).
        ranked = sorted(zip(-at_rung[METRIC], at_rung["run_id"]))
        keep = {rid for _, rid in ranked[: math.ceil(len(ranked) / 2)]}
        for rid in set(alive) - keep:
            assert int(info.loc[rid, "pruned_at"]) == rung
        alive = sorted(keep)
    assert grid.exp.get_best_run() == alive[0]


def test_dpo_metrics_reach_mlflow(grid):
    client = MlflowClient(tracking_uri=grid.exp.tracking_uri)
    for row in grid.info.itertuples():
        for key in DPO_METRICS:
            history = client.get_metric_history(row.mlflow_run_id, key)
            assert len(history) == row.steps_done, key
        assert client.get_metric_history(row.mlflow_run_id, f"chunk/{METRIC}")


def test_eval_loss_is_the_default_metric_with_an_eval_set(ray_cluster, tmp_path):
    exp = Experiment("dpo-eval", experiment_path=tmp_path)
    try:
        info = exp.run_fit(
            _config(learning_rate=List([5e-3, 1e-5])),
            train_dataset=dpo_dataset(16),
            eval_dataset=dpo_dataset(8, seed=1),
            num_chunks=2,
            live_view=False,
        )
        chunks = exp.get_chunk_results()
    finally:
        exp.end()
    assert set(info["status"]) <= {"completed", "pruned"}
    assert {"eval_loss", "eval_rewards/accuracies"} <= set(chunks.columns)
    for row in info.itertuples():
        mine = chunks[chunks["run_id"] == row.run_id]
        assert row.best_metric == pytest.approx(mine["eval_loss"].min())


def test_a_dpo_dataset_without_preference_columns_is_refused_before_start(tmp_path):
    exp = Experiment("dpo-bad", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match="DPO needs prompt\\+chosen\\+rejected or chosen\\+rej"):
        exp.run_fit(_config(), train_dataset=sft_dataset(16), live_view=False)
    assert not exp.dir.exists()  # nothing written, no actor started
