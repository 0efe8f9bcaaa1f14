"""bench/bench_generation.py runs end to end in its quick mode (so it cannot rot). Only relations
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
def test_bench_generation_quick(tmp_path):
    out = tmp_path / "generation.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_generation.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (cell,) = json.loads(out.read_text())["cells"]
    assert (cell["model"], cell["k"]) == ("toy", 2)
    assert cell["identical_tokens"] is True  # batched == one after another, token for token
    assert cell["distinct_adapter_outputs"] == 2  # the adapters really differ
    assert cell["batched"]["tokens"] == cell["one after another"]["tokens"] > 0
