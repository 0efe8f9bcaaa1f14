"""``examples/sft_grid.py`` runs as a user runs it: a fresh Python process, offline, its own
local Ray cluster; 8 configs with successive halving (eta=2) over 4 chunks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rf_ray import Experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sft_grid_example_runs_end_to_end(tmp_path):
    # As a user runs it: no cluster address and no tracking server inherited from the tests.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), RF_RAY_OBJECT_STORE_MB="200")
    command = [sys.executable, "examples/sft_grid.py", "--path", str(tmp_path)]
    proc = subprocess.run(
        [*command, "--no-live", "--train-size", "128"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "Leaderboard (best eval_loss per run):" in proc.stdout
    assert "Base-model loads: 1" in proc.stdout

    (exp_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("sft-grid-")]
    exp = Experiment(exp_dir.name, experiment_path=tmp_path)
    info = exp.get_runs_info()
    assert len(info) == 8
    assert (info["status"] != "failed").all(), info[["run_id", "status", "error"]]
    # eta=2 over rungs at chunks 1, 2, 4: 8 -> 4 -> 2 runs, and the last 2 complete.
    outcome = sorted(
        (s, None if p != p else int(p)) for s, p in zip(info["status"], info["pruned_at"])
    )
    assert outcome == [("completed", None)] * 2 + [("pruned", 1)] * 4 + [("pruned", 2)] * 2
    best = exp.get_best_run()
    assert info.set_index("run_id").loc[best, "status"] == "completed"
    assert f"Best run: {best}" in proc.stdout
    assert (exp_dir / "best-adapter" / "adapter_model.safetensors").exists()
    assert exp.stats()["base_loads"] == 1
