"""bench/bench_evals.py runs end to end in its quick mode (so it cannot rot). Only relations
that hold on any machine are checked, never a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_evals_quick(tmp_path: Path) -> None:
    out = tmp_path / "evals.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_evals.py"), "--quick", "--out", str(out)],
        cwd=REPO, env={**env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (cell,) = json.loads(out.read_text())["cells"]
    assert cell["k"] == 2
    assert cell["identical_answers"] is True  # batched == one after another, answer for answer
    assert cell["batched"]["completed"] == cell["one after another"]["completed"] == 2
    # Batched: shards of both pipelines generated in one group (the very first shard may go
    # alone when the other pipeline's trial is not up yet: start-up does not wait for it).
    assert 2 in cell["batched"]["fused_with"]
    assert cell["one after another"]["fused_with"] == [1]
    assert cell["batched"]["tokens"] == cell["one after another"]["tokens"] > 0
