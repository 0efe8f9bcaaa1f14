"""An MLflow write error never fails a healthy run: the ``Tracker`` buffers failed writes, retries
them in order on the next call (and on ``flush``), warns once per failure streak and says when
MLflow recovered. Fault injection: a real MLflow client over a real SQLite store whose calls
raise N times, then work."""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from actors import tracking
from actors.storage.layout import ExperimentDir
from actors.tracking import Tracker


class FlakyClient:
    """A real ``MlflowClient`` whose writes raise while ``failures`` is positive."""

    def __init__(self, uri: str, failures: int = 0) -> None:
        self.real = MlflowClient(tracking_uri=uri)
        self.failures = failures
        self.attempts = 0

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if name not in ("log_batch", "create_run", "set_terminated", "update_run"):
            return attr

        def flaky(*args, **kwargs):
            self.attempts += 1
            if self.failures > 0:
                self.failures -= 1
                raise MlflowException("API request failed: connection refused (injected)")
            return attr(*args, **kwargs)

        return flaky


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def _mlflow_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == tracking.__name__]


def test_failed_metric_writes_are_buffered_retried_and_all_land(tmp_path, caplog):
    uri = ExperimentDir(tmp_path).embedded_tracking_uri()
    client = FlakyClient(uri)
    tracker = Tracker(uri, "exp", client=client)
    run_id = tracker.start_run("run-1", {"lr": 0.1}, {"rf_ray.status": "running"})
    assert run_id is not None
    client.failures = 3  # MLflow goes away for three attempts
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        for step in range(1, 6):  # never raises
            tracker.log_metrics(run_id, [(step, {"loss": 1.0 / step})])
        tracker.set_tags(run_id, {"rf_ray.status": "completed"})
        tracker.finish(run_id, "FINISHED")
        assert tracker.flush()
    messages = _mlflow_warnings(caplog)
    assert len([m for m in messages if "MLflow write failed" in m]) == 1
    assert "connection refused" in messages[0]
    assert "buffered" in messages[0]
    assert any("recovered" in m for m in messages)
    assert _history(uri, run_id, "loss") == [(s, 1.0 / s) for s in range(1, 6)]
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags["rf_ray.status"] == "completed"
    assert run.info.status == "FINISHED"
    assert tracker.buffered == 0


def test_a_run_started_while_mlflow_is_down_is_created_later(tmp_path, caplog):
    uri = ExperimentDir(tmp_path).embedded_tracking_uri()
    client = FlakyClient(uri, failures=2)
    tracker = Tracker(uri, "exp", client=client)
    with caplog.at_level(logging.WARNING, logger=tracking.__name__):
        assert tracker.start_run("run-1", {"lr": 0.1}, {}) is None  # no id yet, no error
        tracker.log_metrics(None, [(1, {"loss": 0.5})])  # None: this tracker's pending run
        tracker.log_metrics(None, [(2, {"loss": 0.25})])
    assert tracker.run_id is not None
    assert _history(uri, tracker.run_id, "loss") == [(1, 0.5), (2, 0.25)]
    assert MlflowClient(uri).get_run(tracker.run_id).data.params == {"lr": "0.1"}
    assert len([m for m in _mlflow_warnings(caplog) if "MLflow write failed" in m]) == 1


def test_the_buffer_is_bounded_and_counts_what_it_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "MAX_BUFFERED_METRICS", 4)
    uri = ExperimentDir(tmp_path).embedded_tracking_uri()
    client = FlakyClient(uri)
    tracker = Tracker(uri, "exp", client=client)
    run_id = tracker.start_run("run-1", {}, {})
    client.failures = 6
    for step in range(1, 7):
        tracker.log_metrics(run_id, [(step, {"loss": float(step)})])
    assert tracker.dropped_metrics == 2  # the two oldest
    assert tracker.flush()
    assert _history(uri, run_id, "loss") == [(s, float(s)) for s in range(3, 7)]


def test_a_write_mlflow_refuses_for_good_does_not_block_the_others(tmp_path):
    uri = ExperimentDir(tmp_path).embedded_tracking_uri()
    tracker = Tracker(uri, "exp")
    run_id = tracker.start_run("run-1", {}, {})
    tracker.log_metrics("no-such-run", [(1, {"loss": 1.0})])  # refused, dropped, no raise
    tracker.log_metrics(run_id, [(1, {"loss": 2.0})])
    assert tracker.buffered == 0
    assert _history(uri, run_id, "loss") == [(1, 2.0)]
