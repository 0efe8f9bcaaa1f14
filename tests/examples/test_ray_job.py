"""``examples/sft_grid.py`` as a Ray Job, the way docs/ray.md tells a user to run it.

The slow test starts its OWN Ray head with ``ray start --head --block`` (loopback, non-default
ports, its own ``--temp-dir``, token authentication on with its own token file), submits the
example with the ``ray job`` CLI, and stops that head again by killing the process group it
created. It never touches the session cluster of ``tests/conftest.py`` and never runs
``ray stop`` (which kills every Ray on the machine).

Why the CLI and not ``JobSubmissionClient``: the CLI is what docs/ray.md tells users to type, and
it exercises the same auth path users hit (the client attaches ``Authorization: Bearer <token>``
only when ``RAY_AUTH_MODE=token`` is in its environment, see
``ray/_private/authentication/http_token_authentication.py::get_auth_headers_if_auth_enabled``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin/: `ray`, and `python` for the entrypoint
# What the working-dir upload leaves out (Ray also honours .gitignore; these make it explicit).
EXCLUDES = [".venv", ".git", "rf_experiments", ".mypy_cache", ".pytest_cache", ".ruff_cache",
            ".hypothesis", "*.egg-info", "__pycache__"]  # fmt: skip
JOB_TIMEOUT_S = 480


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_port_range(n: int) -> tuple[int, int]:
    """``n`` consecutive free loopback ports (Ray's worker port range), away from defaults."""
    rng = secrets.SystemRandom()
    for _ in range(50):
        low = rng.randrange(30_000, 39_000)
        try:
            socks = []
            for p in range(low, low + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return low, low + n - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for Ray workers")


def _ray_env(token_file: Path) -> dict[str, str]:
    """The environment of every `ray` command here: token auth on, OUR token file, no address
    or token inherited from the test session (RAY_AUTH_TOKEN would take precedence)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
        and not k.startswith("MLFLOW_")
    }
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return env


def _ray(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ray"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _group_pids(pgid: int) -> set[int]:
    import psutil

    pids = set()
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                pids.add(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return pids


def _tagged_pids(tag: str) -> set[int]:
    """Processes whose command line names our private temp dir (all of the head's daemons do)."""
    import psutil

    pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and tag in " ".join(p.info["cmdline"] or []):
                pids.add(p.pid)
        except psutil.Error:
            pass
    return pids


@pytest.fixture
def ray_head():
    """A Ray head of our own: yields (dashboard address, env for `ray` commands)."""
    # Short path: Ray puts unix sockets under it (107-byte limit); private so that
    # /tmp/ray/ray_current_cluster and session_latest of other clusters are left alone.
    temp_dir = Path(tempfile.mkdtemp(prefix="rfjob"))
    token_file = temp_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = _ray_env(token_file)
    low, high = _free_port_range(40)
    dashboard_port = _free_port()
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard_port,
        "--ray-client-server-port": _free_port(),
        "--node-manager-port": _free_port(),
        "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--min-worker-port": low,
        "--max-worker-port": high,
    }
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--temp-dir={temp_dir}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000",
        "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items()),
    ]  # fmt: skip
    log = open(temp_dir / "ray_start.log", "w")  # noqa: SIM115 (closed at teardown)
    # A new session = a process group of our own: every daemon `ray start` spawns stays in it,
    # so killing that group stops exactly this head and nothing else.
    head = subprocess.Popen(
        command, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 90
        # A bounded poll: `ray start` detaches; the job API answering is the only sign it is up.
        while True:  # up when the job API answers (401: it answers, and demands a token)
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                pass
            if head.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"ray head did not start:\n{(temp_dir / 'ray_start.log').read_text()}")
            time.sleep(1)
        yield address, env
    finally:
        pids = _group_pids(head.pid) | _tagged_pids(str(temp_dir))
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        import psutil

        deadline = time.monotonic() + 30
        alive = pids
        # Bounded poll: the daemons are not our children, so there is nothing to wait() on.
        while alive and time.monotonic() < deadline:
            alive = {p for p in alive if psutil.pid_exists(p) and _is_live(p)}
            time.sleep(0.5)
        for pid in alive:  # stragglers of ours only, by pid
            os.kill(pid, signal.SIGKILL)
        log.close()
        leftover = _group_pids(head.pid) | _tagged_pids(str(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not alive, f"head processes survived SIGTERM: {sorted(alive)}"
        assert not leftover, f"head processes left: {sorted(leftover)}"


def _is_live(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_sft_grid_runs_as_a_ray_job(ray_head, tmp_path):
    from actors.storage.store import Store

    address, env = ray_head

    # Auth is really on: a wrong token is refused (403), so the pass below is not vacuous.
    bad = _ray({**env, "RAY_AUTH_TOKEN": "wrong"}, "job", "list", f"--address={address}")
    assert bad.returncode != 0
    assert "Authentication failed" in bad.stdout + bad.stderr, bad.stderr[-2000:]

    runtime_env = {
        "env_vars": {"HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"},
        "excludes": EXCLUDES,
    }
    job_id = f"rf-ray-test-{secrets.token_hex(4)}"
    start = time.monotonic()
    submit = _ray(
        env, "job", "submit", f"--address={address}", f"--submission-id={job_id}",
        "--working-dir=.", f"--runtime-env-json={json.dumps(runtime_env)}", "--",
        "python", "examples/sft_grid.py", "--path", str(tmp_path), "--no-live",
        "--train-size", "64", "--num-chunks", "2",
        timeout=JOB_TIMEOUT_S,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    out = submit.stdout + submit.stderr
    assert submit.returncode == 0, out[-5000:]
    assert f"Job '{job_id}' succeeded" in out, out[-5000:]

    status = _ray(env, "job", "status", f"--address={address}", job_id)
    assert f"Job '{job_id}' succeeded" in status.stdout, status.stdout + status.stderr
    logs = _ray(env, "job", "logs", f"--address={address}", job_id)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert "Base-model loads: 1" in logs.stdout, logs.stdout[-5000:]

    (exp_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("sft-grid-")]
    assert str(exp_dir) in logs.stdout  # printed by the job: results landed where we asked
    store = Store(exp_dir, readonly=True)
    try:
        runs = store.runs()
    finally:
        store.close()
    assert len(runs) == 8
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{ExperimentDir(exp_dir).mlflow_db}")
    (mlflow_exp,) = [e for e in client.search_experiments() if e.name == exp_dir.name]
    assert len(client.search_runs([mlflow_exp.experiment_id])) == 8
    print(f"ray job submit -> SUCCEEDED in {elapsed:.0f} s\n{out[:3000]}")


def test_working_dir_upload_is_small(tmp_path):
    """The package `ray job submit --working-dir .` uploads, built by Ray's own packaging code
    with our excludes alone (.gitignore off): small, and without .venv or results."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    package = tmp_path / "working_dir.zip"
    create_package(str(ROOT), package, include_gitignore=False, excludes=EXCLUDES)
    size_mib = package.stat().st_size / 2**20
    names = zipfile.ZipFile(package).namelist()
    assert size_mib < 5, f"{size_mib:.1f} MiB"
    assert "examples/sft_grid.py" in names
    assert "rf_ray/__init__.py" in names
    assert not [n for n in names if n.split("/")[0] in (".venv", ".git", "rf_experiments")]


# Ray 2.60's ray.init(address=<closed port>) retries for minutes; ensure_ray probes first.
def test_ensure_ray_fails_fast_when_no_cluster_listens():
    """RAY_ADDRESS pointing at a closed loopback port: a clear error within seconds."""
    port = _free_port()  # bound and released: nothing listens there now
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(RAY_ADDRESS=f"127.0.0.1:{port}", PYTHONPATH=str(ROOT))
    # A subprocess: this test process may already be connected to the session cluster.
    code = "from rf_ray.cluster import ensure_ray; ensure_ray()"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=20,
    )  # fmt: skip
    assert time.monotonic() - start < 20
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ClusterUnreachableError" in last, proc.stderr[-3000:]  # a ConnectionError
    assert str(port) in last, last
    assert "ray start" in last, last
