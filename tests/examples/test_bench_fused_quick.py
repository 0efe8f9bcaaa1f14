"""bench/bench_fused.py runs end to end in its quick mode (so it cannot rot). Only relations that
hold on any machine are checked, never a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_fused_quick(tmp_path):
    out = tmp_path / "fused.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_fused.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert "CPU" in res["machine"] or "bf16" in res["machine"]
    (cell,) = res["cells"]
    assert (cell["k"], cell["batch"]) == (2, 2)
    fused = cell["reps"]["fused"][0]
    sliced = cell["reps"]["time-sliced"][0]
    assert fused["fused_slices"] == 2  # one fused pass per chunk
    assert sliced["fused_slices"] == 0
    assert fused["tokens"] == sliced["tokens"] > 0  # the same training, two ways
    for way in ("fused", "time-sliced", "serial"):
        assert cell[way]["tokens_per_second"] > 0
        assert cell[way]["first_comparison_seconds"] > 0
    assert "| 2 | 2 |" in proc.stdout  # the markdown table
