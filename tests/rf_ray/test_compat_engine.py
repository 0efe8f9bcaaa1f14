"""RapidFire's ``cancel_current``, ``get_log_file_path`` and ``RFOptuna`` on running experiments
(issue 13): real Ray actors, TRL and Optuna, tiny runs."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from rf_ray import Experiment, List, RFModelConfig, RFOptuna, RFSFTConfig
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


def test_rf_optuna_prunes_on_its_objective_and_replaces_the_pruned_run(ray_cluster, tmp_path):
    """RapidFire's semantics end to end: Optuna's rules prune on the objective's metric and
    direction (here the chunk's num_tokens, which a batch of 4 makes larger than a batch of 2,
    whatever the weights do); the pruned run is a PRUNED trial and a new suggestion replaces it
    within the budget; completed runs are COMPLETE trials valued at their last chunk."""
    exp = Experiment("rf-optuna", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            per_device_train_batch_size=List([2, 4]), max_length=48, num_train_epochs=1,
        ),
    )  # fmt: skip
    # Seed 10's draws: trial 0 batch 2, trial 1 batch 4, trial 2 (the replacement) batch 2.
    search = RFOptuna(
        [config], trainer_type="SFT", n_initial=2, budget=3, objective="minimize:num_tokens",
        seed=10,
    )  # fmt: skip
    try:
        # 128 rows: a chunk lasts several of the driver's store polls (POLL_SECONDS), so RFOptuna
        # sees each chunk before the next ends; with 16 rows both runs finished all four chunks
        # between two polls now and then, and nothing could be pruned.
        info = exp.run_fit(search, train_dataset=sft_dataset(128), num_chunks=4, live_view=False)
    finally:
        exp.end()
    trials = search.study.trials
    assert [t.params["training_args.per_device_train_batch_size"] for t in trials] == [2, 4, 2]
    info = info.sort_values("run_id")
    assert list(info["status"]) == ["completed", "pruned", "completed"]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.COMPLETE]  # fmt: skip
    assert search.spawned == 3  # the budget: 2 initial + 1 replacement
    last = exp.get_chunk_results().sort_values("chunk").groupby("run_id")["num_tokens"].last()
    assert trials[0].value == pytest.approx(last[1])
    assert trials[2].value == pytest.approx(last[3])
    assert max(trials[1].intermediate_values) < 4  # pruned before its last chunk
    assert search.study.best_trial.number in (0, 2)
