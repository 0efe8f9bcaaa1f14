"""``InteractiveController`` (issue 22, item 7): RapidFire's panel of run controls, driven here
through its widgets' own callbacks (``Button.click()``, the dropdown's value), no browser. Ops
go through ``rf_ray.ops``: in this process when the kernel runs the experiment (``run_fit`` in
the background), through an ``rf-ray ops`` child process otherwise."""

from __future__ import annotations

import json

import pytest

from policies.errors import ConfigError
from rf_ray import (
    Experiment,
    IgnoredFieldWarning,
    InteractiveController,
    List,
    NoPruning,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset


def status_of(exp, run_id):
    info = exp.get_runs_info()
    return info.loc[info["run_id"] == run_id, "status"].item()


def test_the_panel_stops_resumes_clones_and_deletes_runs(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("RF_RAY_BACKGROUND", "1")  # as on Colab: run_fit returns at once
    exp = Experiment("panel", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        peft_config=RFLoraConfig(r=2),
        # Run 1: 6 steps; run 2: long enough to keep the experiment open until it is deleted.
        training_args=RFSFTConfig(
            per_device_train_batch_size=4, max_length=48, max_steps=List([6, 400]),
            learning_rate=1e-4,
        ),
    )  # fmt: skip
    try:
        assert exp.run_fit(
            config, train_dataset=sft_dataset(16), num_chunks=2, pruner=NoPruning(),
            max_slice_steps=1,
        ) is None  # fmt: skip
        with pytest.warns(IgnoredFieldWarning, match="dispatcher_url='http://127.0.0.1:8851'"):
            panel = InteractiveController(dispatcher_url="http://127.0.0.1:8851")
        assert panel.experiment is exp  # the experiment this kernel started last
        panel.display()
        assert panel.run_selector.options[0][0].startswith("Run 1 - ")
        panel.run_selector.value = 1  # selecting loads the run
        assert json.loads(panel.config_text.value)["max_steps"] == 6

        panel.stop_btn.click()
        assert panel.last_message == ("success", "Stop: run 1 is stopped")
        assert status_of(exp, 1) == "stopped"
        assert "<b>Status:</b> stopped" in panel.status_label.value

        # Another kernel's view of the same experiment: its ops go through a child process.
        elsewhere = InteractiveController(experiment_name="panel", experiment_path=tmp_path)
        assert not elsewhere.experiment.running
        elsewhere.load_run(1)
        elsewhere.resume_btn.click()
        assert elsewhere.last_message == ("success", "Resume: run 1 is running"), (
            elsewhere.last_message
        )
        assert status_of(exp, 1) == "running"

        panel.clone_btn.click()
        assert not panel.config_text.disabled
        panel.config_text.value = "{not json"
        panel.submit_clone_btn.click()
        assert panel.last_message[0] == "error"
        assert panel.last_message[1].startswith("Invalid JSON")
        edited = json.loads(json.dumps(panel.config))
        edited["learning_rate"] = 3e-4
        panel.config_text.value = json.dumps(edited)
        panel.submit_clone_btn.click()
        assert panel.last_message == ("success", "Cloned run 1 as run 3")
        assert panel.config_text.disabled  # back out of clone mode

        for run_id in (1, 3):
            exp.wait_for_progress(run_id, steps=6, timeout=300)
        panel.run_selector.value = 2
        panel.delete_btn.click()
        assert panel.last_message == ("success", "Delete: run 2 is deleted")
        info = exp.wait().sort_values("run_id")
    finally:
        exp.end()
    assert list(info["status"]) == ["completed", "deleted", "completed"]
    clone = info.iloc[2]
    assert clone["parent_run_id"] == 1
    assert clone["config"]["learning_rate"] == 3e-4
    assert clone["steps_done"] == 6


def test_without_an_experiment_the_panel_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr("rf_ray.experiment._latest", [])
    with pytest.raises(ConfigError, match="call run_fit in this kernel first"):
        InteractiveController()
    panel = InteractiveController(experiment_name="nothing", experiment_path=tmp_path)
    panel.fetch_all_runs()
    assert panel.last_message[0] == "warning"
    assert "has no results" in panel.last_message[1]


def test_ops_from_a_child_keep_the_experiments_trust(tmp_path):
    """An ``Experiment(..., trust=True)`` opens a directory its group can write; the panel's
    ``rf-ray ops`` child process must be told so (``--trust``), or it refuses the directory
    that the kernel was told to trust. No Ray: the experiment is finished, which the child
    says without attaching."""
    import os

    from policies.errors import OpError
    from rf_ray.notebook import _ops_in_child
    from tests.rf_ray.test_dashboard_http import make_experiment

    exp_dir = make_experiment(tmp_path, "shared")
    os.chmod(exp_dir, 0o770)
    exp = Experiment("shared", experiment_path=tmp_path, trust=True)
    assert len(exp.get_runs_info()) == 3  # the kernel reads it
    with pytest.raises(OpError, match="is finished"):
        _ops_in_child(exp, "stop", 1, {}, False, 120)


def test_rapidfires_positional_dispatcher_url_is_taken_as_it(tmp_path, monkeypatch):
    """RapidFire's constructor is ``InteractiveController(dispatcher_url=...)``: its URL given
    positionally is that, not an experiment."""
    monkeypatch.setattr("rf_ray.experiment._latest", [])
    exp = Experiment("positional", experiment_path=tmp_path)
    monkeypatch.setattr("rf_ray.experiment._latest", [exp])
    with pytest.warns(IgnoredFieldWarning, match="dispatcher_url='http://127.0.0.1:8851'"):
        panel = InteractiveController("http://127.0.0.1:8851")
    assert panel.experiment is exp
