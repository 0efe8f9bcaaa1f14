"""RapidFire's ``cancel_current``, ``get_log_file_path`` and ``RFOptuna`` on running experiments
(issue 13): real Ray actors, TRL and Optuna, tiny runs."""

from __future__ import annotations

from rf_ray import (
    Experiment,
    List,
    NoPruning,
    Range,
    RFLoraConfig,
    RFModelConfig,
    RFOptuna,
    RFSFTConfig,
)
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset


def test_cancel_current_stops_the_run_fit_and_resume_finishes_it(ray_cluster, tmp_path):
    exp = Experiment("cancel-current", mode="fit", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            per_device_train_batch_size=4, max_length=48, num_train_epochs=1, output_dir="x"
        ),
    )
    try:
        exp.run_fit(
            config, train_dataset=sft_dataset(32), num_chunks=4, blocking=False, live_view=False
        )
        exp.cancel_current()
        exp.cancel_current()  # a second cancel has nothing left to stop
        info = exp.resume(live_view=False)
    finally:
        exp.end()
    assert list(info["status"]) == ["completed"]
    assert list(info["steps_done"]) == list(info["total_steps"])
    log = exp.get_log_file_path().read_text()
    assert "experiment cancel-current: cancelled; every run keeps its last checkpoint" in log


def test_rf_optuna_runs_its_budget_through_run_fit(ray_cluster, tmp_path):
    exp = Experiment("rf-optuna", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        peft_config=RFLoraConfig(r=List([2, 4])),
        training_args=RFSFTConfig(
            learning_rate=Range(1e-4, 1e-2, log=True),
            per_device_train_batch_size=4, max_length=48, num_train_epochs=1,
        ),
    )  # fmt: skip
    search = RFOptuna(config, n_initial=2, budget=3, objective="minimize:train_loss", seed=0)
    try:
        info = exp.run_fit(
            search, train_dataset=sft_dataset(16), num_chunks=2, live_view=False,
            pruner=NoPruning(),
        )  # fmt: skip
    finally:
        exp.end()
    assert len(info) == 3
    assert set(info["status"]) == {"completed"}
    for config in info["config"]:
        assert config["lora.r"] in (2, 4)
        assert 1e-4 <= config["learning_rate"] <= 1e-2
    assert search.max_live_seen <= 2
