"""The experiment's ``TrackingActor`` keeps the ``Tracker`` guarantees for every run it writes
for: writes never raise; a run whose MLflow run could not be created while MLflow was down is
created by a later write and its id handed back; runs are tracked apart (one run's buffered
writes do not hold up another's); ``finish`` closes the run with its status and tags. Fault
injection: a real MLflow client over a real SQLite store whose writes raise N times (the
``FlakyClient`` of test_tracking_faults)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from actors.storage.layout import ExperimentDir
from actors.tracking_actor import TrackingActor, TrackingOutcome
from tests.actors.test_tracking_faults import FlakyClient


def test_a_run_opened_while_mlflow_is_down_is_created_by_a_later_write(tmp_path):
    uri = ExperimentDir(tmp_path).embedded_tracking_uri()
    client = FlakyClient(uri, failures=1)  # the run's creation fails once
    actor = TrackingActor(uri, "exp", client=client)
    assert actor.open_run(1, "run-1", {"lr": 0.1}, {"rf_ray.status": "running"}, None) is None
    mlflow_id = actor.log_metrics(1, None, [(1, {"loss": 0.5})])  # MLflow is back
    assert mlflow_id is not None
    outcome = actor.finish(1, mlflow_id, {"rf_ray.status": "completed"}, "FINISHED")
    assert outcome == TrackingOutcome(mlflow_id, 0, 0)
    run = MlflowClient(uri).get_run(mlflow_id)
    assert run.info.run_name == "run-1"
    assert run.data.params == {"lr": "0.1"}
    assert run.data.tags["rf_ray.status"] == "completed"
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(mlflow_id, "loss")] == [
        (1, 0.5)
    ]


def test_runs_are_tracked_apart_and_a_reopened_run_keeps_its_mlflow_run(tmp_path):
    uri = ExperimentDir(tmp_path).embedded_tracking_uri()
    actor = TrackingActor(uri, "exp", client=FlakyClient(uri))
    first = actor.open_run(1, "run-1", {}, {}, None)
    second = actor.open_run(2, "run-2", {}, {}, None)
    assert first is not None
    assert second is not None
    assert first != second
    actor.finish(1, first, {}, "KILLED")
    # A resumed run (a new trial, or a new tracking actor after the driver died) reopens it.
    again = TrackingActor(uri, "exp").open_run(1, "run-1", {}, {}, first)
    assert again == first
    assert MlflowClient(uri).get_run(first).info.status == "RUNNING"
    experiment = MlflowClient(uri).get_experiment_by_name("exp")
    assert len(MlflowClient(uri).search_runs([experiment.experiment_id])) == 2
