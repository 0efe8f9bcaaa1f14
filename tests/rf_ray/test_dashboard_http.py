"""``rf-ray dashboard`` over HTTP: every endpoint, the refusals (no CSRF token, a foreign
Origin or Host, no access token when remote, ops on a finished experiment, ops the scheduler
refuses) and steering a real running experiment through the same path as ``rf-ray ops``.

The server is the real app under uvicorn on a loopback port, in a thread of the test process.
The fast tests read a store written by hand with ``actors.storage.store.Store`` (as the scheduler
writes it); the steering test runs a real experiment on the shared Ray cluster.
"""

from __future__ import annotations

import html
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from actors.storage.layout import ExperimentDir
from actors.storage.lock import hold_experiment_lock
from actors.storage.store import Store
from policies.pruning import NoPruning, SuccessiveHalving
from policies.settings import SETTINGS_KEY, ExperimentSettings
from rf_ray import cli
from rf_ray.dashboard import command
from rf_ray.dashboard.app import Settings, create_app
from rf_ray.dashboard.guard import CSRF_HEADER, Guard
from rf_ray.dashboard.reads import Root
from rf_ray.specs import differing_keys

TIMEOUT = 60  # seconds for one HTTP request (reads are milliseconds; ops wait for a slice)


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The dashboard app on a free loopback port; yields its base URL. The socket listens before
    the server thread starts, so a first request simply waits in the backlog until it does."""
    import uvicorn

    sock = command.bind("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the dashboard server did not stop within 30 s"


def page_session(base: str) -> tuple[requests.Session, str]:
    """A browser-like session: it loaded the page (session cookie) and read its CSRF token."""
    session = requests.Session()
    page = session.get(base + "/", timeout=TIMEOUT)
    page.raise_for_status()
    match = re.search(r'name="rf-ray-config" content="([^"]+)"', page.text)
    assert match is not None, "the page carries its config"
    return session, json.loads(html.unescape(match.group(1)))["csrf"]


KEPT = {"hub_token": "hf_SECRETVALUE", "tokenizer_kwargs.padding_side": "left"}


def make_experiment(root: Path, name: str = "sweep") -> Path:
    """Three runs (learning_rate and lora.r differ), one with a secret in its config."""
    exp_dir = root / name
    with Store(exp_dir) as store:
        pruner = SuccessiveHalving(metric="eval_loss", mode="min")  # as a start stores it
        store.set_meta(
            name=name, status="finished",
            **{SETTINGS_KEY: ExperimentSettings(num_chunks=4, pruner=pruner.settings()).to_dict()},
            tracking_uri=f"sqlite:///{ExperimentDir(exp_dir.resolve()).mlflow_db}",
        )  # fmt: skip
        for run_id, (lr, rank) in enumerate([(3e-3, 4), (1e-3, 16), (3e-4, 4)], start=1):
            params = {"learning_rate": lr, "lora.r": rank, "max_length": 64, **KEPT}
            store.add_run(run_id, params, "pending", total_steps=32, total_chunks=4)
        store.record_slice(
            1, [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.2}], (0, {"eval_loss": 1.1}),
            status="completed", steps_done=32, chunks_done=4, last_metric=0.9, best_metric=0.85,
        )  # fmt: skip
        store.record_slice(
            2, [{"step": 1, "loss": 1.4}], (0, {"eval_loss": 1.3}), status="pruned",
            steps_done=8, chunks_done=1, last_metric=1.3, best_metric=1.3, pruned_at=1,
        )  # fmt: skip
        store.update_run(3, status="failed", error="Traceback ...\nRuntimeError: boom")
    return exp_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_experiment(tmp_path, "sweep")
    make_experiment(tmp_path, "other")
    return tmp_path


@pytest.fixture
def base(root: Path) -> Iterator[str]:
    with serve(Settings(root=Root.at(root))) as url:
        yield url


def test_the_page_and_its_assets_are_served_with_no_network_needed(base):
    session, csrf = page_session(base)
    page = session.get(base + "/", timeout=TIMEOUT)
    assert "rf_ray_session" in session.cookies
    assert len(csrf) == 64
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        text = session.get(base + asset, timeout=TIMEOUT).text
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), asset
    assert '<script src="/static/dashboard.js"' in page.text


def test_each_browser_session_gets_its_own_csrf_token(base):
    _, first = page_session(base)
    _, second = page_session(base)
    assert first != second


def test_experiments_lists_every_experiment_with_counts(base):
    data = requests.get(base + "/api/experiments", timeout=TIMEOUT).json()
    assert [x["name"] for x in data["experiments"]] == ["other", "sweep"]
    sweep = data["experiments"][1]
    assert sweep["running"] is False
    assert sweep["runs"] == 3
    assert sweep["by_status"] == {"completed": 1, "failed": 1, "pruned": 1}


def test_state_has_runs_knobs_that_differ_curves_and_no_secret(base, root):
    state = requests.get(base + "/api/experiments/sweep", timeout=TIMEOUT).json()
    # the same knobs as `rf-ray status`
    with Store(root / "sweep", readonly=True) as store:
        assert state["differing"] == differing_keys(
            [r["params"] for r in store.runs()]
        )  # as `rf-ray status`
    assert state["differing"] == ["learning_rate", "lora.r"]
    runs = {r["run_id"]: r for r in state["runs"]}
    assert runs[2]["status"] == "pruned"
    assert runs[2]["pruned_at"] == 1
    assert runs[3]["error"].endswith("RuntimeError: boom")
    assert runs[1]["params"]["hub_token"] == "***"
    assert runs[1]["params"]["tokenizer_kwargs.padding_side"] == "left"
    assert state["steps"] == {"1": [[1, 1.5], [2, 1.2]], "2": [[1, 1.4]]}
    assert state["chunks"] == {"1": [[0, 1.1]], "2": [[0, 1.3]]}
    assert state["metric"] == "eval_loss"
    assert state["running"] is False
    assert "hf_SECRETVALUE" not in requests.get(base + "/api/experiments/sweep", timeout=60).text


def test_state_is_incremental(base, root):
    first = requests.get(base + "/api/experiments/sweep", timeout=TIMEOUT).json()
    again = requests.get(
        base + "/api/experiments/sweep", params=first["cursor"], timeout=TIMEOUT
    ).json()
    assert [r["run_id"] for r in again["runs"]] == [3]  # only the last-updated row, re-sent
    assert again["steps"] == {}
    assert again["chunks"] == {}
    with Store(root / "sweep") as store:
        store.record_slice(2, [{"step": 2, "loss": 1.1}], None, steps_done=9)
    after = requests.get(
        base + "/api/experiments/sweep", params=again["cursor"], timeout=TIMEOUT
    ).json()
    # Run 2 changed; run 3 is re-sent only as the previous cursor's boundary row (``updated >=``
    # the cursor: a row written in the cursor's own microsecond is never missed).
    assert [r["run_id"] for r in after["runs"]] == [2, 3]
    assert after["steps"] == {"2": [[2, 1.1]]}


def test_with_64_runs_a_poll_carries_only_what_changed(tmp_path):
    exp_dir = tmp_path / "wide"
    with Store(exp_dir) as store:
        settings = ExperimentSettings(pruner=NoPruning(metric="train_loss").settings())
        store.set_meta(name="wide", status="running", **{SETTINGS_KEY: settings.to_dict()})
        for run_id in range(1, 65):
            params = {"learning_rate": 1e-4 * run_id, "lora.r": 8, "max_length": 64}
            store.add_run(run_id, params, "running", total_steps=400, total_chunks=8)
            steps = [{"step": s, "loss": 2.0 - s / 100} for s in range(1, 51)]
            store.record_slice(run_id, steps, (1, {"loss": 1.6}), steps_done=50, chunks_done=1)
    with serve(Settings(root=Root.at(tmp_path))) as base:
        url = base + "/api/experiments/wide"
        full = requests.get(url, timeout=TIMEOUT)
        first = full.json()
        assert len(first["runs"]) == 64
        assert sum(len(p) for p in first["steps"].values()) == 64 * 50
        with Store(exp_dir) as store:
            store.record_slice(7, [{"step": 51, "loss": 1.4}], None, steps_done=51)
        poll = requests.get(url, params=first["cursor"], timeout=TIMEOUT)
        assert [r["run_id"] for r in poll.json()["runs"]] == [7, 64]  # 64: the cursor's row
        assert poll.json()["steps"] == {"7": [[51, 1.4]]}
        assert len(poll.content) * 20 < len(full.content)


def test_runs_link_to_their_page_in_the_mlflow_ui(root):
    from mlflow.tracking import MlflowClient

    with Store(root / "sweep", readonly=True) as store:
        uri = store.meta()["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("sweep")
    mlflow_run = client.create_run(exp_id).info.run_id
    with Store(root / "sweep") as store:
        store.update_run(1, mlflow_run_id=mlflow_run)
    settings = Settings(root=Root.at(root), mlflow_url="http://127.0.0.1:5001/")
    with serve(settings) as base:
        links = requests.get(base + "/api/experiments/sweep", timeout=TIMEOUT).json()["mlflow"]
    assert links == {"1": f"http://127.0.0.1:5001/#/experiments/{exp_id}/runs/{mlflow_run}"}


def test_params_of_a_run_are_redacted_and_unknown_ones_are_404(base):
    got = requests.get(base + "/api/experiments/sweep/runs/2/params", timeout=TIMEOUT).json()
    assert got["params"]["lora.r"] == 16
    assert got["params"]["hub_token"] == "***"
    missing = requests.get(base + "/api/experiments/sweep/runs/9/params", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert "no run 9" in missing.json()["error"]


@pytest.mark.parametrize("name", ["nope", "..", "%2E%2E%2Fsweep"])
def test_unknown_experiments_are_404(base, name):
    got = requests.get(f"{base}/api/experiments/{name}", timeout=TIMEOUT)
    assert got.status_code == 404


def test_a_post_without_the_csrf_token_is_refused(base):
    session, _ = page_session(base)
    got = session.post(base + "/api/experiments/sweep/runs/1/stop", timeout=TIMEOUT)
    assert got.status_code == 403
    assert CSRF_HEADER in got.json()["error"]


def test_a_csrf_token_from_another_session_is_refused(base):
    _, other = page_session(base)
    session, _ = page_session(base)
    got = session.post(
        base + "/api/experiments/sweep/runs/1/stop", headers={CSRF_HEADER: other}, timeout=60
    )
    assert got.status_code == 403
    assert "does not match" in got.json()["error"]


def test_a_cross_site_origin_is_refused(base):
    session, csrf = page_session(base)
    got = session.post(
        base + "/api/experiments/sweep/runs/1/stop",
        headers={CSRF_HEADER: csrf, "Origin": "http://evil.example"},
        timeout=TIMEOUT,
    )
    assert got.status_code == 403
    assert "evil.example" in got.json()["error"]


def test_a_foreign_host_header_is_refused(base):
    got = requests.get(base + "/api/experiments", headers={"Host": "evil.example"}, timeout=60)
    assert got.status_code == 421
    assert "127.0.0.1 only" in got.json()["error"]


@pytest.mark.parametrize("op", ["stop", "resume", "delete", "prune", "clone"])
def test_ops_on_a_finished_experiment_are_refused(base, op):
    session, csrf = page_session(base)
    got = session.post(
        f"{base}/api/experiments/sweep/runs/1/{op}",
        headers={CSRF_HEADER: csrf},
        json={"changes": {"learning_rate": "1e-4"}},
        timeout=TIMEOUT,
    )
    assert got.status_code == 409
    assert "read-only" in got.json()["error"]


def test_an_unknown_op_is_404(base):
    session, csrf = page_session(base)
    got = session.post(
        base + "/api/experiments/sweep/runs/1/explode", headers={CSRF_HEADER: csrf}, timeout=60
    )
    assert got.status_code == 404
    assert "unknown op 'explode'" in got.json()["error"]


def test_an_experiment_whose_lock_is_held_shows_as_running(base, root):
    lock = hold_experiment_lock(str(root / "sweep"))
    try:
        state = requests.get(base + "/api/experiments/sweep", timeout=TIMEOUT).json()
        assert state["running"] is True
    finally:
        lock.close()
    assert requests.get(base + "/api/experiments/sweep", timeout=60).json()["running"] is False


def test_remote_mode_needs_the_access_token(root):
    token = "t0ken-for-this-test"
    with serve(Settings(root=Root.at(root), guard=Guard(access_token=token))) as base:
        refused = requests.get(base + "/api/experiments", timeout=TIMEOUT)
        assert refused.status_code == 401
        assert "access token" in refused.json()["error"]
        assert requests.get(base + "/?token=wrong", timeout=TIMEOUT).status_code == 401
        bearer = {"Authorization": f"Bearer {token}"}
        assert requests.get(base + "/api/experiments", headers=bearer, timeout=60).ok
        # Any Host is fine remotely (the token guards), e.g. the machine's name.
        named = {**bearer, "Host": "gpu-box:5000"}
        assert requests.get(base + "/api/experiments", headers=named, timeout=60).ok
        browser = requests.Session()
        opened = browser.get(base + f"/?token={token}", timeout=TIMEOUT)
        assert opened.url == base + "/"  # redirected: the token leaves the address bar
        assert token not in opened.text  # and is not in the page
        assert browser.get(base + "/api/experiments", timeout=TIMEOUT).ok  # the cookie


def test_binding_another_host_needs_allow_remote(root, capsys):
    assert cli.main(["dashboard", "--path", str(root), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err
    assert "0.0.0.0" in err
    assert command.check_host("0.0.0.0", allow_remote=True) is True
    assert command.check_host("::1", allow_remote=False) is False


def test_an_unknown_name_for_the_cli_is_a_clear_error(root, capsys):
    assert cli.main(["dashboard", "--path", str(root), "--name", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- a real experiment


@contextmanager
def dashboard_process(
    root: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``rf-ray dashboard`` in its own process, as a user starts it (``env``: more variables):
    its ops reach the experiment's Ray cluster through ``cluster.json``, like ``rf-ray ops``.
    Yields its base URL once it printed its address (it listens before it prints), and the
    process."""
    sock = command.bind("127.0.0.1", 0)  # a free port, released just before the server binds it
    port = sock.getsockname()[1]
    sock.close()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
        **(env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rf_ray.cli", "dashboard", "--path", str(root), "--port", str(port)],
        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        assert proc.stdout is not None
        line = proc.stdout.readline() if ready else ""
        assert "rf-ray dashboard for" in line, f"no address printed within 180 s: {line!r}"
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_steering_a_running_experiment_goes_the_way_of_rf_ray_ops(ray_cluster, tmp_path):
    import contextlib

    from policies.errors import ConfigError, OpError
    from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig, ops
    from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-3]), lora_rank=4, per_device_train_batch_size=1,
            num_train_epochs=1, max_length=48,
        ),
    )  # fmt: skip
    # 480 steps per run: the experiment outlives the ops by far (each op starts a process of its
    # own, and a clone's builds its TRL config: seconds each on two loaded cores).
    exp = Experiment("steered", experiment_path=tmp_path)
    exp.run_fit(
        config, train_dataset=sft_dataset(480), num_chunks=4, seed=1, max_slice_steps=1,
        pruner=NoPruning(), live_view=False, blocking=False,
    )  # fmt: skip
    runs = "/api/experiments/steered/runs"
    try:
        with dashboard_process(tmp_path) as (base, _):
            session, csrf = page_session(base)
            headers = {CSRF_HEADER: csrf}

            def post(path: str, body: dict | None = None) -> requests.Response:
                return session.post(base + runs + path, headers=headers, json=body, timeout=180)

            assert requests.get(base + "/api/experiments/steered", timeout=60).json()["running"]
            stopped = post("/1/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "stopped"
            again = post("/1/stop")  # refused by the scheduler, with rf-ray ops' message
            assert again.status_code == 409
            with pytest.raises(OpError) as direct:
                ops.apply(ops.attach(exp.dir), "stop", 1)
            assert again.json()["error"] == str(direct.value)

            typo = post("/2/clone", {"changes": {"learnin_rate": "1e-3"}})
            assert typo.status_code == 400
            with pytest.raises(ConfigError) as direct_clone:
                exp.clone_modify(2, {"learnin_rate": 1e-3})
            assert typo.json()["error"] == str(direct_clone.value)

            clone = post("/2/clone", {"changes": {"learning_rate": "5e-4"}, "warm_start": False})
            assert clone.status_code == 200, clone.text
            new_id = clone.json()["run_id"]
            assert clone.json()["seq"] == stopped.json()["seq"] + 1  # each applied once
            state = requests.get(base + "/api/experiments/steered", timeout=60).json()
            row = next(r for r in state["runs"] if r["run_id"] == new_id)
            assert row["parent_run_id"] == 2
            assert row["params"]["learning_rate"] == 5e-4

            assert post("/1/resume").json()["status"] == "running"
            for run_id in (1, 2, new_id):  # end the experiment
                with contextlib.suppress(OpError):
                    exp.delete(run_id)
            exp.wait()
            refused = post("/1/resume")
            assert refused.status_code == 409
            assert "read-only" in refused.json()["error"]
    finally:
        exp.end()
