"""``rf-ray ops`` from another terminal reaches a script's private Ray cluster (issue 12, item 8).

A plain script runs ``run_fit`` with no ``ray start`` and no ``RAY_ADDRESS``: ``ray.init()`` starts
a cluster private to it, with token authentication on. The driver records in the experiment
directory how to reach that cluster (``cluster.json``: address and where the token comes from,
never the token), and ``rf-ray ops`` (the CLI) and a second Python driver attach to it from
other processes. Before, both answered "not running on this Ray cluster".
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from actors.scheduler_actor import hold_experiment_lock
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.errors import OpError
from rf_ray import ops

ROOT = Path(__file__).resolve().parents[2]
NAME = "attach"

DRIVER = textwrap.dedent(
    """
    import json, signal, sys
    from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
    from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

    def _exit(*_):
        raise SystemExit(3)

    signal.signal(signal.SIGTERM, _exit)  # so a failed test still shuts this cluster down
    exp = Experiment(%(name)r, experiment_path=sys.argv[1])
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=1, num_train_epochs=1,
                                  max_length=32, lora_rank=4, learning_rate=List([1e-3, 3e-4])),
    )
    try:
        exp.run_fit(config, train_dataset=sft_dataset(512), num_chunks=64, max_slice_steps=2,
                    pruner=NoPruning(), live_view=False, blocking=False)
        print("started", flush=True)
        info = exp.wait()
        print(json.dumps(dict(zip(info["run_id"].tolist(), info["status"]))), flush=True)
    finally:
        exp.end()
    """
) % {"name": NAME}


def _env() -> dict[str, str]:
    """This test's environment without any Ray address or auth settings: the attaching
    process learns them from the experiment directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300, check=False
    )


def test_cli_ops_and_a_second_python_driver_reach_a_scripts_private_cluster(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert driver.stdout is not None
        # run_fit says first how it prunes (one line), then the script prints "started".
        lines = [driver.stdout.readline().strip() for _ in range(2)]
        assert lines[1] == "started", (lines, driver.stderr.read())  # type: ignore[union-attr]
        assert lines[0].startswith(f"[rf-ray {NAME}] 2 runs; pruning: none"), lines
        exp_dir = tmp_path / NAME
        record = json.loads(ExperimentDir(exp_dir).cluster_file.read_text())
        assert set(record) == {"address", "driver_pid", "host", "auth_mode", "token_source"}
        assert record["auth_mode"] == "token"  # Ray 2.60's ray.init() turns it on
        assert record["driver_pid"] == driver.pid
        assert stat.S_IMODE(ExperimentDir(exp_dir).cluster_file.stat().st_mode) == 0o600

        # Another terminal: the CLI, no RAY_ADDRESS, no `ray start`.
        cli = _run([sys.executable, "-m", "rf_ray.cli", "ops", "stop", NAME, "2",
                    "--path", str(tmp_path)])  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout.strip().splitlines()[-1])["status"] == "stopped"

        # A second Python driver on the same directory attaches the same way.
        code = (
            "from rf_ray import Experiment; import sys, json; "
            f"print(json.dumps(Experiment({NAME!r}, experiment_path=sys.argv[1]).stop(1)))"
        )
        second = _run([sys.executable, "-c", code, str(tmp_path)])
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout.strip().splitlines()[-1])["status"] == "stopped"

        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"1": "stopped", "2": "stopped"}
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGTERM)
            driver.wait(timeout=120)


def test_cluster_json_says_where_the_token_is_never_what_it_is(ray_cluster, tmp_path, monkeypatch):
    from rf_ray.cluster import record_cluster

    secret = "not-a-real-token-0123456789"
    monkeypatch.setenv("RAY_AUTH_TOKEN", secret)
    record_cluster(tmp_path)
    text = ExperimentDir(tmp_path).cluster_file.read_text()
    assert secret not in text
    assert json.loads(text)["token_source"] == "RAY_AUTH_TOKEN"

    monkeypatch.delenv("RAY_AUTH_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    record_cluster(tmp_path)
    text = ExperimentDir(tmp_path).cluster_file.read_text()
    assert secret not in text
    record = json.loads(text)
    assert (record["token_source"], record["token_path"]) == (
        "RAY_AUTH_TOKEN_PATH",
        str(token_file),
    )
    assert stat.S_IMODE(ExperimentDir(tmp_path).cluster_file.stat().st_mode) == 0o600


def test_attaching_from_a_process_on_another_cluster_says_where_the_experiment_is(
    ray_cluster, tmp_path
):
    exp_dir = tmp_path / "elsewhere"
    with Store(exp_dir) as store:
        store.set_meta(name="elsewhere", status="running")
    ExperimentDir(exp_dir).cluster_file.write_text(
        json.dumps({"address": "192.0.2.1:6379", "driver_pid": 1, "host": "h"})
    )
    lock = hold_experiment_lock(str(exp_dir))  # its scheduler runs (on that other cluster)
    try:
        with pytest.raises(OpError) as excinfo:
            ops.attach(exp_dir)
    finally:
        lock.close()
    assert "recorded the cluster at 192.0.2.1:6379" in str(excinfo.value)
    assert "fresh process" in str(excinfo.value)
