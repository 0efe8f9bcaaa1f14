"""RapidFire's ``cancel_current`` and ``get_log_file_path`` on a running experiment (issue 13):
real Ray actors and TRL, one tiny run."""

from __future__ import annotations

from rf_ray import Experiment, RFModelConfig, RFSFTConfig
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
