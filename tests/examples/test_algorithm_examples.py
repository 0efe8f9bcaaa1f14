"""The DPO and GRPO examples run end to end (small sizes) so that they cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.storage.store import Store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "args", "runs"),
    [
        ("dpo_grid.py", ["--train-size", "64", "--num-chunks", "2"], 6),
        ("grpo_grid.py", ["--prompts", "32", "--epochs", "1", "--num-chunks", "2"], 3),
    ],
)
def test_example_runs(tmp_path, script, args, runs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), "--path", str(tmp_path), "--no-live",
         *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (exp_dir,) = [p for p in tmp_path.iterdir() if Store.exists(p)]
    store = Store(exp_dir, readonly=True)
    try:
        rows = store.runs()
    finally:
        store.close()
    assert len(rows) == runs
    assert all(r["status"] in ("completed", "pruned") for r in rows), rows
