"""Steering outlives what it steers and says what is true (issue 21, items 1, 4 and 5).

- ``rf-ray ops`` on an experiment that is finished, that does not exist, that is not running,
  or that is starting answers one true line at once, from the experiment directory, without
  starting a Ray cluster (it used to start a private one for ten seconds, then answer "not
  running on this Ray cluster" for all of them).
- The dashboard never attaches itself to an experiment's cluster: it steers experiment A, A's
  driver exits and its cluster goes, and the dashboard goes on serving and steers experiment B,
  started later on a cluster of its own. (It used to die about a minute after A's cluster went,
  "Failed to connect to GCS": here the dashboard's GCS reconnect window is cut to 3 s, so a
  dashboard that attached would be dead long before B is up.)
- An op whose experiment ends while it attaches answers "ended while you asked" (it used to hang
  68 s and die with the GCS message). A test seam holds the op's child process once attached.
- A clone that gives a function field as text adds no run.

Drivers are plain scripts in child processes, each with its own private Ray cluster (as a user
runs them); no ``ray start``, no ``RAY_ADDRESS``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from actors.scheduler_actor import hold_experiment_lock
from actors.storage.layout import CLUSTER_FILE
from actors.storage.store import Store
from policies.settings import SETTINGS_KEY, ExperimentSettings
from rf_ray.dashboard.guard import CSRF_HEADER
from rf_ray.remote import HOLD_ENV
from tests.rf_ray.test_dashboard_http import dashboard_process, page_session

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 300  # bound on each wait for a driver on two loaded cores

DRIVER = textwrap.dedent(
    """
    import signal, sys
    from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
    from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

    def _exit(*_):
        raise SystemExit(3)

    signal.signal(signal.SIGTERM, _exit)  # exp.end() then shuts its private cluster down
    exp = Experiment(sys.argv[2], experiment_path=sys.argv[1])
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=1, num_train_epochs=1,
                                  max_length=32, lora_rank=4, learning_rate=List([1e-3, 3e-4])),
    )
    try:
        exp.run_fit(config, train_dataset=sft_dataset(512), num_chunks=64, max_slice_steps=2,
                    pruner=NoPruning(), live_view=False, blocking=False)
        print("started", flush=True)
        exp.wait()
    finally:
        exp.end()
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0", **extra}


@contextmanager
def driver(root: Path, name: str) -> Iterator[subprocess.Popen[str]]:
    """A script running experiment ``name`` (two runs, far longer than the test) on a private
    Ray cluster; yields once it runs. Ended with SIGTERM (its ``exp.end()`` stops the cluster)."""
    script = root / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), name], cwd=ROOT, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # run_fit says first how many runs and how they are pruned; the script then "started"
        line = proc.stdout.readline()
        while line and line.strip() != "started":
            line = proc.stdout.readline()
        assert line.strip() == "started", proc.stderr.read()  # type: ignore[union-attr]
        yield proc
    finally:
        end(proc)


def end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def rf_ray(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``rf-ray ARGS`` as a user types it, in a process of its own; it must end within 3 min."""
    return subprocess.run(
        [sys.executable, "-m", "rf_ray.cli", *args], cwd=ROOT, env=_env(**env),
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def wait_until_gone(address: str) -> None:
    """Until nothing accepts connections at a cluster's GCS address (bounded)."""
    from rf_ray.cluster import reachable

    deadline = time.monotonic() + WAIT_S
    while reachable({"address": address}):
        assert time.monotonic() < deadline, f"the cluster at {address} is still up"
        time.sleep(0.5)


# --------------------------------------------------------------------------- no Ray at all

NO_RAY = (
    "import sys, ray; from rf_ray.cli import main; code = main(sys.argv[1:]); "
    "print('ray started' if ray.is_initialized() else 'no ray', file=sys.stderr); sys.exit(code)"
)


def _ops_without_ray(root: Path, name: str) -> tuple[int, str]:
    """``rf-ray ops stop NAME 1``, in-process in a fresh interpreter that says whether Ray was
    initialized there; returns the exit status and the one line of the answer."""
    done = subprocess.run(
        [sys.executable, "-c", NO_RAY, "ops", "stop", name, "1", "--path", str(root)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "no ray", done.stderr
    assert len(lines) == 2, done.stderr  # the answer, in one line
    return done.returncode, lines[0]


SETTINGS = ExperimentSettings(num_chunks=2).to_dict()
"""The settings a start stores (``rf_ray.plan.persist``)."""


def _store(root: Path, name: str, status: str) -> Path:
    exp_dir = root / name
    with Store(exp_dir) as store:
        store.set_meta(name=name, status=status, **{SETTINGS_KEY: SETTINGS})
        store.add_run(1, {"learning_rate": 1e-3}, "running", total_steps=4, total_chunks=2)
    return exp_dir


def test_ops_say_what_is_true_at_once_without_starting_ray(tmp_path):
    _store(tmp_path, "done", "finished")
    _store(tmp_path, "crashed", "running")  # no lock held: its driver died
    starting = _store(tmp_path, "starting", "running")
    code, line = _ops_without_ray(tmp_path, "done")
    assert code == 2
    assert "experiment 'done' is finished" in line
    code, line = _ops_without_ray(tmp_path, "nope")
    assert code == 2
    assert "no experiment 'nope'" in line
    code, line = _ops_without_ray(tmp_path, "crashed")
    assert code == 2
    assert "is not running" in line
    assert "rf-ray resume crashed" in line
    lock = hold_experiment_lock(str(starting))  # a driver that holds the lock, starting
    try:
        code, line = _ops_without_ray(tmp_path, "starting")
        assert code == 2
        assert f"is starting (its driver has not written {CLUSTER_FILE} yet)" in line
        assert "retry in a few seconds" in line
        # cluster.json written by a live driver (this test), its cluster not answering yet
        record = {"address": "127.0.0.1:9", "driver_pid": os.getpid(), "host": os.uname()[1]}
        (starting / CLUSTER_FILE).write_text(json.dumps(record))
        code, line = _ops_without_ray(tmp_path, "starting")
        assert code == 2
        assert "does not answer yet" in line
    finally:
        lock.close()


@contextmanager
def silent_cluster(root: Path, name: str) -> Iterator[Path]:
    """A running experiment (its lock held here) whose recorded cluster accepts connections and
    never answers: a scheduler that does not answer, for the op's deadline."""
    import socket

    exp_dir = _store(root, name, "running")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        record = {"address": address, "driver_pid": os.getpid(), "host": socket.gethostname()}
        (exp_dir / CLUSTER_FILE).write_text(json.dumps(record))
        lock = hold_experiment_lock(str(exp_dir))
        try:
            yield exp_dir
        finally:
            lock.close()


def test_an_op_nobody_answers_ends_at_its_deadline_saying_it_may_still_apply(tmp_path):
    with silent_cluster(tmp_path, "silent"):
        done = rf_ray("ops", "stop", "silent", "1", "--path", str(tmp_path), "--timeout", "2")
    assert done.returncode == 2
    line = one_line(done)
    assert "did not answer within 2 s" in line
    assert "may still be applied" in line


def test_the_page_answers_504_when_nobody_answers(tmp_path):
    from rf_ray.dashboard.app import Settings
    from rf_ray.dashboard.reads import Root
    from rf_ray.dashboard.steer import Steering
    from tests.rf_ray.test_dashboard_http import serve

    with silent_cluster(tmp_path, "silent"):
        settings = Settings(root=Root.at(tmp_path), steering=Steering(timeout_s=2))
        with serve(settings) as base:
            session, csrf = page_session(base)
            got = session.post(
                f"{base}/api/experiments/silent/runs/1/stop", headers={CSRF_HEADER: csrf},
                timeout=120,
            )  # fmt: skip
    assert got.status_code == 504
    assert "did not answer within 2 s" in got.json()["error"]


def test_an_op_sent_before_the_scheduler_is_registered_says_starting(ray_cluster, tmp_path):
    """The lock is held and ``cluster.json`` names a live cluster (this test's), but no scheduler
    is registered on it yet: the op's child attaches, finds none, and says "starting"."""
    from rf_ray.cluster import record_cluster

    exp_dir = _store(tmp_path, "coming", "running")
    record_cluster(exp_dir)  # this process is the driver, on the test's cluster
    lock = hold_experiment_lock(str(exp_dir))
    try:
        done = rf_ray("ops", "stop", "coming", "1", "--path", str(tmp_path))
    finally:
        lock.close()
    assert done.returncode == 2
    line = one_line(done)
    assert "is starting (its scheduler is not registered yet)" in line
    assert "retry in a few seconds" in line


# --------------------------------------------------------------------------- real experiments


def test_the_dashboard_outlives_an_experiment_it_steered_and_steers_the_next(tmp_path):
    root = tmp_path / "experiments"
    root.mkdir()
    # A dashboard attached to A's cluster would die 3 s after that cluster goes (Ray's default
    # is 60 s): long before B is up. The variable is read only by a process that attaches.
    with dashboard_process(root, {"RAY_gcs_rpc_server_reconnect_timeout_s": "3"}) as (base, proc):
        session, csrf = page_session(base)

        def post(path: str, body: dict | None = None) -> requests.Response:
            return session.post(base + path, headers={CSRF_HEADER: csrf}, json=body, timeout=240)

        with driver(root, "exp-a") as a:
            address = json.loads((root / "exp-a" / CLUSTER_FILE).read_text())["address"]
            stopped = post("/api/experiments/exp-a/runs/1/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "stopped"
            end(a)
        wait_until_gone(address)
        after = post("/api/experiments/exp-a/runs/2/stop")  # A's driver stopped it unfinished
        assert after.status_code == 409
        assert "is not running" in after.json()["error"]

        with driver(root, "exp-b") as b:
            assert proc.poll() is None, "the dashboard died with experiment A's cluster"
            assert requests.get(base + "/api/experiments", timeout=60).status_code == 200
            stopped = post("/api/experiments/exp-b/runs/1/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "stopped"

            # A function given as text: refused, and no run (not even a reserved id) added.
            with Store(root / "exp-b", readonly=True) as store:
                next_id = store.next_run_id()
            refused = rf_ray("ops", "clone", "exp-b", "2", "formatting_func=fmt",
                             "--path", str(root))  # fmt: skip
            assert refused.returncode == 2
            assert "formatting_func" in one_line(refused)
            page = post("/api/experiments/exp-b/runs/2/clone",
                        {"changes": {"reward_funcs": "my_reward"}})  # fmt: skip
            assert page.status_code == 400
            with Store(root / "exp-b", readonly=True) as store:
                assert store.next_run_id() == next_id

            # The experiment ends while the op's child is attached (held there by the seam).
            hold = tmp_path / "hold"
            hold.touch()
            op = subprocess.Popen(
                [sys.executable, "-m", "rf_ray.cli", "ops", "stop", "exp-b", "2",
                 "--path", str(root)], cwd=ROOT, env=_env(**{HOLD_ENV: str(hold)}),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + WAIT_S
                while not Path(f"{hold}.ready").exists():  # the child attached (a file: the
                    assert op.poll() is None, op.communicate()  # seam's only way to say so)
                    assert time.monotonic() < deadline, "the op's child did not attach"
                    time.sleep(0.1)
                end(b)
                _, err = op.communicate(timeout=120)
            finally:
                hold.unlink(missing_ok=True)
                if op.poll() is None:
                    op.kill()
                    op.wait()
            assert op.returncode == 2
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert "ended while you asked" in lines[0]
            assert "is not running" in lines[0]
        assert proc.poll() is None
        assert requests.get(base + "/api/experiments", timeout=60).status_code == 200
