"""A trial process stays lean: after training its run to the end (slices, reports, MLflow
writes through the experiment's ``TrackingActor``), it has imported neither torch, TRL,
transformers, pandas nor MLflow. Each of those costs every run's process tens to hundreds of
MiB (bench/bench_compare.py measures the memory each extra run adds).
"""

from __future__ import annotations

import pytest
import ray
from mlflow.tracking import MlflowClient

from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.cluster import NAMESPACE, scheduler_name
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

pytestmark = pytest.mark.slow

HEAVY = ["torch", "trl", "transformers", "peft", "datasets", "pandas", "mlflow"]


def test_a_trial_process_imports_no_heavy_library(ray_cluster, tmp_path):
    exp = Experiment("lean", experiment_path=tmp_path)
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([1e-3, 2e-3]), lora_rank=4, per_device_train_batch_size=4,
            max_length=32,
        ),
    )  # fmt: skip
    exp.run_fit(
        config, train_dataset=sft_dataset(16), num_chunks=2, seed=0, pruner=NoPruning(),
        live_view=False, blocking=False,
    )  # fmt: skip
    try:
        scheduler = ray.get_actor(scheduler_name(exp.dir), namespace=NAMESPACE)
        ray.get(scheduler.wait_done.remote(), timeout=600)  # every trial has wrapped up
        for run_id in (1, 2):
            trial = ray.get(scheduler.trial_of.remote(run_id), timeout=60)
            loaded = ray.get(trial.loaded_modules.remote(HEAVY), timeout=60)
            assert loaded == [], f"run {run_id}'s trial process imported {loaded}"
    finally:
        results = exp.wait()
    # The runs' MLflow writes went through the tracking actor: metrics and closed runs.
    assert sorted(results["run_id"].unique().tolist()) == [1, 2]
    client = MlflowClient(tracking_uri=exp.tracking_uri)
    experiment = client.get_experiment_by_name(exp.name)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    steps = exp.get_results().groupby("run_id").size()
    for run in runs:
        run_id = int(run.info.run_name.removeprefix("run-"))
        assert len(client.get_metric_history(run.info.run_id, "loss")) == steps[run_id]
