"""The ``rf-ray`` command line: status, list, dashboard and demo, on a real store built by hand.

No Ray: the experiment directory is written with ``actors.storage.store.Store`` directly, the way
the scheduler writes it, and ``rf_ray.cli.main(argv)`` is called in-process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.errors import ConfigError
from policies.pruning import SuccessiveHalving
from policies.settings import SETTINGS_KEY, ExperimentSettings
from rf_ray import cli
from rf_ray.cli import demo
from rf_ray.cli import mlflow_ui as dashboard

LONG_ERROR = "Traceback (most recent call last):\n  File 'x'\nRuntimeError: " + "out of memory " * 9


def _make_experiment(root: Path, name: str, mlflow_db: bool = True) -> Path:
    """Three runs that differ in learning_rate and lora.r, not max_length."""
    exp_dir = root / name
    store = Store(exp_dir)
    # The settings and the pruner's state as a start writes them (rf_ray.plan.persist).
    pruner = SuccessiveHalving(metric="eval_loss", mode="min")
    store.set_meta(
        name=name,
        fingerprint="0123abcd4567ef89",
        **{SETTINGS_KEY: ExperimentSettings(pruner=pruner.settings()).to_dict()},
        pruner_state=pruner.to_dict(),
        status="finished",
        tracking_uri=f"sqlite:///{ExperimentDir(exp_dir.resolve()).mlflow_db}",
    )
    for run_id, (lr, rank) in enumerate([(3e-3, 4), (1e-3, 16), (3e-4, 4)], start=1):
        params = {"learning_rate": lr, "lora.r": rank, "max_length": 64}
        store.add_run(run_id, params, "pending", total_steps=32, total_chunks=4)
    store.record_slice(
        1, [{"step": 8, "loss": 1.2}], (0, {"eval_loss": 1.1}),
        status="completed", steps_done=32, chunks_done=4, last_metric=0.9, best_metric=0.85,
    )  # fmt: skip
    store.record_slice(
        2, [{"step": 8, "loss": 1.4}], (0, {"eval_loss": 1.3}),
        status="pruned", steps_done=8, chunks_done=1, last_metric=1.3, best_metric=1.3,
        pruned_at=1,
    )  # fmt: skip
    store.update_run(3, status="failed", error=LONG_ERROR)
    store.close()
    if mlflow_db:
        ExperimentDir(exp_dir).mlflow_db.touch()
    return exp_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "experiments"
    _make_experiment(root, "lr-sweep")
    Store(root / "empty").close()  # an experiment with no runs yet
    return root


def test_status_shows_every_run_and_the_differing_knobs(root, capsys):
    assert cli.main(["status", "lr-sweep", "--path", str(root)]) == 0
    out = capsys.readouterr().out
    assert "0123abcd4567ef89" in out
    assert "successive_halving on eval_loss (min)" in out
    assert "finished" in out
    assert "mlflow.db" in out  # the tracking uri
    header = next(line for line in out.splitlines() if line.startswith("run "))
    assert "learning_rate" in header
    assert "lora.r" in header
    assert "max_length" not in out  # the same in every run
    table = out.split("\n---", 1)[1].split("\n\n", 1)[0].splitlines()[1:]  # below the rule
    rows = {line.split()[0]: line.split() for line in table}
    assert set(rows) == {"1", "2", "3"}
    # run, status, progress (one epoch: the chunk), steps, last, best, pruned@, learning_rate,
    # lora.r, error...
    assert rows["1"] == ["1", "completed", "chunk", "4/4", "32/32", "0.9", "0.85", "-", "0.003",
                         "4"]  # fmt: skip
    assert rows["2"] == ["2", "pruned", "chunk", "1/4", "8/32", "1.3", "1.3", "1", "0.001", "16"]
    assert rows["3"][:10] == ["3", "failed", "chunk", "0/4", "0/32", "-", "-", "-", "0.0003", "4"]
    assert rows["3"][-1].endswith("...")
    assert "out of memory " * 9 not in out  # the error is truncated to one short line
    assert "3 runs: 1 completed, 1 failed, 1 pruned" in out


def test_status_json(root, capsys):
    assert cli.main(["status", "lr-sweep", "--path", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["run_id"]: r["status"] for r in data["runs"]} == {
        1: "completed",
        2: "pruned",
        3: "failed",
    }
    assert data["differing"] == ["learning_rate", "lora.r"]
    assert data["meta"]["fingerprint"] == "0123abcd4567ef89"
    assert data["runs"][0]["chunks"] == [{"chunk": 0, "eval_loss": 1.1}]
    assert data["runs"][2]["error"] == LONG_ERROR


def test_status_of_an_experiment_without_runs(root, capsys):
    assert cli.main(["status", "empty", "--path", str(root)]) == 0
    assert "No runs yet." in capsys.readouterr().out


def test_unknown_experiment_exits_2_listing_the_experiments(root, capsys):
    assert cli.main(["status", "nope", "--path", str(root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert "'nope'" in lines[0]
    assert "empty, lr-sweep" in lines[0]


def test_list(root, capsys):
    assert cli.main(["list", "--path", str(root)]) == 0
    out = capsys.readouterr().out
    sweep = next(line for line in out.splitlines() if line.startswith("lr-sweep"))
    assert sweep.split()[1:3] == ["finished", "3"]
    assert "1 completed, 1 failed, 1 pruned" in sweep
    assert any(line.startswith("empty ") for line in out.splitlines())


def test_list_of_a_missing_root_exits_2(tmp_path, capsys):
    assert cli.main(["list", "--path", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("list", "status", "dashboard", "demo"):
        assert name in out


def test_every_command_is_listed_once_and_parses():
    names = [c.name for c in cli.COMMANDS]
    assert names == ["list", "status", "dashboard", "demo", "ops", "resume", "samples"]
    parser = cli.build_parser()
    assert parser.parse_args(["status", "x"]).run is cli.COMMANDS[1].run


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 5000), ("::1", 8080)])
def test_dashboard_command(tmp_path, host, port):
    db = ExperimentDir(tmp_path / "exp").mlflow_db
    cmd = dashboard.dashboard_command(db, host=host, port=port)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"]
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    assert uri == f"sqlite:///{ExperimentDir(tmp_path / 'exp').mlflow_db.resolve()}"
    assert cmd[cmd.index("--host") + 1] == host
    assert cmd[cmd.index("--port") + 1] == str(port)


def test_dashboard_defaults_to_loopback():
    args = cli.build_parser().parse_args(["dashboard"])
    assert (args.host, args.port) == ("127.0.0.1", 5000)
    assert "--host" in dashboard.dashboard_command("mlflow.db")
    assert "0.0.0.0" not in dashboard.dashboard_command("mlflow.db")


def test_dashboard_env_turns_mlflow_jobs_off_unless_set():
    assert dashboard.dashboard_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
    assert dashboard.dashboard_env(env)["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"


def test_dashboard_finds_the_experiment(root, tmp_path):
    sweep = root / "lr-sweep"
    assert dashboard.resolve_dashboard_dir(str(sweep), None) == sweep  # the experiment dir itself
    assert dashboard.resolve_dashboard_dir(str(root), None) == sweep  # the root's only mlflow.db
    assert dashboard.resolve_dashboard_dir(str(root), "lr-sweep") == sweep
    _make_experiment(root, "rank-sweep")
    with pytest.raises(ConfigError, match=r"--name: lr-sweep, rank-sweep"):
        dashboard.resolve_dashboard_dir(str(root), None)
    with pytest.raises(ConfigError, match=r"lr-sweep, rank-sweep"):
        dashboard.resolve_dashboard_dir(str(root), "nope")
    with pytest.raises(ConfigError, match="no experiment"):
        dashboard.resolve_dashboard_dir(str(tmp_path / "missing"), None)


def test_dashboard_links_runs_to_the_mlflow_tracking_uri_server(root, monkeypatch, capsys):
    from rf_ray.dashboard.app import Settings
    from rf_ray.dashboard.command import start_mlflow
    from rf_ray.dashboard.reads import Root

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    args = cli.build_parser().parse_args(["dashboard", "--mlflow", "--path", str(root)])
    settings = Settings(root=Root.at(root))
    assert start_mlflow(args, settings) is None  # no local MLflow UI: runs went to the server
    assert "http://mlflow.internal:5000" in capsys.readouterr().out
    assert settings.mlflow_url == "http://mlflow.internal:5000"


def test_dashboard_on_a_busy_port_exits_2(root, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["dashboard", "--path", str(root), "--port", str(port)]) == 2
    assert "pick another --port" in capsys.readouterr().err


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-5", "soon"])
def test_ops_refuses_a_timeout_that_is_not_a_number_of_seconds(timeout, capsys):
    # The op's child bounds itself at the timeout: nan, 0 or -5 ended it at once ("ended
    # without an answer"), inf never; refused here before anything reads the experiment.
    assert cli.main(["ops", "stop", "sweep", "1", "--timeout", timeout]) == 2
    assert "must be a number of seconds > 0" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_dashboard_rejects_a_bad_port(port, capsys):
    assert cli.main(["dashboard", "--port", port]) == 2
    assert "port must be" in capsys.readouterr().err


def test_demo_command():
    script = demo.find_demo_script()
    assert script is not None
    assert script.name == "sft_grid.py"
    cmd = demo.demo_command(script, path="exps", live=False)
    assert cmd == [sys.executable, str(script), "--path", "exps", "--no-live"]
    assert demo.demo_command(script) == [sys.executable, str(script)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_200(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """A bounded poll: the MLflow server is another process and says nothing when it is up,
    except by answering."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rf-ray dashboard exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer 200 within {timeout:.0f} s")


@pytest.mark.slow
def test_dashboard_serves_its_page_and_the_mlflow_ui_and_stops_on_ctrl_c(tmp_path):
    exp_dir = _make_experiment(tmp_path / "experiments", "lr-sweep")  # an empty mlflow.db
    port, mlflow_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "rf_ray.cli", "dashboard", "--path", str(exp_dir), "--mlflow"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--mlflow-port", str(mlflow_port)],
        cwd=tmp_path, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_200(f"http://127.0.0.1:{port}/", proc, timeout=90)  # the rf-ray page
        _wait_for_200(f"http://127.0.0.1:{mlflow_port}/", proc, timeout=90)  # the MLflow UI
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the page stops, and the MLflow UI with it
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for p in (port, mlflow_port):  # both servers are gone: nothing listens on their ports
        with socket.socket() as s:  # (SO_REUSEADDR: the closed connections' TIME_WAIT may stay)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", p))  # fails while a listener holds the port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", p), timeout=5).close()


def _descendants(pid: int) -> set[int]:
    """The processes started, directly or not, by ``pid`` (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _dashboard_with_mlflow(tmp_path: Path) -> tuple[subprocess.Popen[str], set[int]]:
    """``rf-ray dashboard --mlflow`` serving both pages; the MLflow UI's processes."""
    exp_dir = _make_experiment(tmp_path / "experiments", "lr-sweep")
    port, mlflow_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "rf_ray.cli", "dashboard", "--path", str(exp_dir), "--mlflow"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--mlflow-port", str(mlflow_port)],
        cwd=tmp_path, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_200(f"http://127.0.0.1:{port}/", proc, timeout=90)
    _wait_for_200(f"http://127.0.0.1:{mlflow_port}/", proc, timeout=90)
    mlflow = _descendants(proc.pid)
    assert mlflow, "the MLflow UI runs as a child of the dashboard"
    return proc, mlflow


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_the_dashboard_stopped_by_a_signal_stops_the_mlflow_ui_and_says_so_in_one_line(
    tmp_path, sig
):
    """A plain ``kill`` (SIGTERM) left ``mlflow ui`` running (uvicorn re-raises the signal after
    serving, and its default action ended the process before the clean-up); Ctrl-C (SIGINT)
    stopped it but printed a ``KeyboardInterrupt`` traceback. Issue 21, item 7. A closed terminal
    (SIGHUP) ended the dashboard at once and left ``mlflow ui``, in its own session, running."""
    proc, mlflow = _dashboard_with_mlflow(tmp_path)
    try:
        os.kill(proc.pid, sig)  # the dashboard's pid only, not its group: as `kill PID` does
        _, err = proc.communicate(timeout=60)
        left = [pid for pid in mlflow if _running(pid)]  # once the dashboard has exited
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in mlflow:  # a failed test leaves none behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig
    assert left == []
    assert "Traceback" not in err
    ours = [line for line in err.splitlines() if line.startswith("rf-ray")]
    assert ours == [f"rf-ray dashboard: stopped ({signal.Signals(sig).name})"]


_LEADER = """
import subprocess, sys, time
# a server child that ignores SIGTERM and outlives its leader, as a slow uvicorn worker can
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "import sys; open(sys.argv[1], 'w').write('up'); time.sleep(300)", sys.argv[1]])
time.sleep(300)
"""


@pytest.mark.skipif(os.name != "posix", reason="process groups are POSIX")
def test_stopping_the_mlflow_ui_leaves_no_process_of_its_group(tmp_path, monkeypatch):
    from rf_ray.dashboard import command

    monkeypatch.setattr(command, "MLFLOW_STOP_S", 2.0)
    ready = tmp_path / "ready"
    leader = subprocess.Popen(
        [sys.executable, "-c", _LEADER, str(ready)],
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():  # the child writes it once its SIGTERM handler is set
            assert time.monotonic() < deadline, "the test's server child did not start"
            assert leader.poll() is None
            time.sleep(0.05)
        assert command._group_alive(leader.pid)
        command._stop(leader)
        assert leader.returncode is not None  # the leader is reaped
        assert not command._group_alive(leader.pid)  # and its SIGTERM-deaf child is gone too
    finally:
        if command._group_alive(leader.pid):
            os.killpg(leader.pid, signal.SIGKILL)


_FOREGROUND = """
import sys
from rf_ray.cli.child import run_child
child = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(300)"
sys.exit(run_child([sys.executable, "-c", child, sys.argv[1]]))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_a_closed_terminal_stops_the_foreground_child_of_rf_ray_demo(tmp_path):
    """``rf-ray demo`` runs its script in a session of its own (``run_child``): a closed terminal
    (SIGHUP) reaches only rf-ray's session, and used to leave the script training."""
    ready = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", _FOREGROUND, str(ready)], env=env)
    child = None
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, "run_child's parent exited before its child started"
            time.sleep(0.05)
        child = int(ready.read_text())
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=30) == 128 + signal.SIGHUP
        deadline = time.monotonic() + 10
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if child is not None and _running(child):
            os.kill(child, signal.SIGKILL)
