"""A dead ``ray start`` head does not stall ``run_fit`` (issue 12, item 10).

``ray start`` writes its address to ``<ray temp dir>/ray_current_cluster``; a head that died
without ``ray stop`` leaves the file behind, and a plain ``ray.init()`` then retries that dead
address for minutes. ``ensure_ray`` probes the address first: it warns, naming the file and what
to remove, and starts a local cluster. The test runs in a subprocess whose Ray temp directory
(``RAY_TMPDIR``) is its own, so no stale file is ever left in /tmp/ray.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import logging, ray
    logging.basicConfig(level=logging.WARNING)
    from rf_ray.cluster import ensure_ray
    started = ensure_ray()
    try:
        print("RESULT", started, ray.get_runtime_context().gcs_address, flush=True)
    finally:
        ray.shutdown()
    """
)


def _dead_address() -> str:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_dead_head_in_the_bootstrap_file_is_skipped_with_a_warning():
    # A short path: Ray puts unix sockets under its temp dir (limit ~107 characters).
    tmp = Path(tempfile.mkdtemp(prefix="rfdh", dir="/tmp"))
    try:
        bootstrap = tmp / "ray" / "ray_current_cluster"
        bootstrap.parent.mkdir()
        dead = _dead_address()
        bootstrap.write_text(dead)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(RAY_TMPDIR=str(tmp), PYTHONPATH=str(ROOT), RF_RAY_OBJECT_STORE_MB="100")
        # Before the fix this call retried the dead address for minutes: the timeout fails it.
        out = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=180, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        result = next(line for line in out.stdout.splitlines() if line.startswith("RESULT"))
        _, started, address = result.split()
        assert started == "True"  # a local cluster of its own, which stop() shuts down
        assert address != dead
        assert str(bootstrap) in out.stderr
        assert f"Remove {bootstrap} (or run `ray stop`)" in out.stderr
        assert bootstrap.read_text() == dead  # rf-ray reports the file; it does not delete it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
