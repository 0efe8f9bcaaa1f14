"""Steering evals pipelines from outside the driver: ``rf-ray ops`` (stop, resume, delete, clone
with changes) and the dashboard's HTTP API, the same ops as on fit runs.

The experiment stays running while the test steers it: its API pipeline's endpoint (a stub on
127.0.0.1) holds every request until the test lets them go, bounded.
"""

from __future__ import annotations

import json

import pytest
import requests

from rf_ray import Experiment, cli
from rf_ray.automl import RFGridSearch
from rf_ray.dashboard.app import Settings
from rf_ray.dashboard.guard import CSRF_HEADER
from rf_ray.dashboard.reads import Root
from tests.rf_ray.api_stub import endpoint
from tests.rf_ray.test_dashboard_http import page_session, serve
from tests.rf_ray.test_evals_api import ROWS, _config_sets

NAME = "evals-steered"


def _ops(capsys, root, *args: str) -> dict:
    assert cli.main(["ops", *args[:1], NAME, *args[1:], "--path", str(root)]) == 0
    return dict(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))


def test_pipelines_are_steered_by_rf_ray_ops_and_the_dashboard(ray_cluster, tmp_path, capsys):
    exp = Experiment(NAME, mode="evals", experiment_path=tmp_path)
    with endpoint(hold=True) as stub:
        try:
            exp.run_evals(RFGridSearch(_config_sets(stub.url)), ROWS, num_shards=2, seed=2,
                          live_view=False, blocking=False)  # fmt: skip
            assert stub.arrived.wait(120), "the API pipeline (run 2) never called its endpoint"
            # rf-ray ops, as typed in another terminal
            assert _ops(capsys, tmp_path, "stop", "2")["status"] == "stopped"
            assert _ops(capsys, tmp_path, "resume", "2")["status"] in ("pending", "running")
            clone = _ops(capsys, tmp_path, "clone", "2", "search_cfg.k=1")["run_id"]
            assert _ops(capsys, tmp_path, "delete", str(clone))["status"] == "deleted"
            # the dashboard's API, as the page calls it
            with serve(Settings(root=Root.at(tmp_path))) as base:
                session, csrf = page_session(base)
                runs = f"{base}/api/experiments/{NAME}/runs"

                def post(path: str, body: dict | None = None) -> requests.Response:
                    got = session.post(runs + path, headers={CSRF_HEADER: csrf}, json=body,
                                       timeout=180)  # fmt: skip
                    assert got.status_code == 200, got.text
                    return got

                assert post("/2/stop").json()["status"] == "stopped"
                second = post("/2/clone", {"changes": {"search_cfg.k": "1"}}).json()["run_id"]
                assert post(f"/{second}/delete").json()["status"] == "deleted"
                assert post("/2/resume").json()["status"] in ("pending", "running")
                state = requests.get(f"{base}/api/experiments/{NAME}", timeout=60).json()
                row = next(r for r in state["runs"] if r["run_id"] == second)
                assert row["parent_run_id"] == 2
                assert row["params"]["rag.search.k"] == 1
            stub.release.set()
            info = exp.wait().set_index("run_id")
        finally:
            stub.release.set()
            exp.end()
    assert info.loc[1, "status"] == info.loc[2, "status"] == "completed"
    assert info.loc[clone, "status"] == info.loc[second, "status"] == "deleted"
    assert info.loc[clone, "parent_run_id"] == 2
    assert info.loc[clone, "config"]["rag.search.k"] == 1
    _, metrics = exp.get_evals_results()[2]
    assert metrics["Samples Processed"]["value"] == len(ROWS)


@pytest.fixture(autouse=True)
def _no_live_summary(monkeypatch):
    monkeypatch.setenv("RF_RAY_SUMMARY", "0")  # run_evals' lines stay out of the ops' output
