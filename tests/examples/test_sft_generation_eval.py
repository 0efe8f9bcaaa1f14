"""``examples/sft_generation_eval.py`` runs as a user runs it (a fresh process, offline, its own
local Ray cluster): its leaderboard ranks on ROUGE-L of the runs' generations, and the pruner
used that metric."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir
from rf_ray import Experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_sft_generation_eval_example_ranks_on_rouge_l(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), RF_RAY_OBJECT_STORE_MB="200")
    proc = subprocess.run(
        [sys.executable, "examples/sft_generation_eval.py", "--path", str(tmp_path), "--no-live",
         "--train-size", "64", "--num-chunks", "2", "--eval-generations", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "Leaderboard (ROUGE-L of greedy generations" in proc.stdout
    assert "the two orders" in proc.stdout

    (exp_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("sft-gen-eval-")]
    exp = Experiment(exp_dir.name, experiment_path=tmp_path)
    info = exp.get_runs_info().set_index("run_id")
    assert len(info) == 4
    assert (info["status"] != "failed").all(), info[["status", "error"]]
    chunks = exp.get_chunk_results()
    first = chunks[chunks["chunk"] == 1].set_index("run_id")
    # Pruned on ROUGE-L (max): the two runs kept after chunk 1 have the highest ROUGE-L.
    kept = set(info.index[info["status"] == "completed"])
    assert len(kept) == 2
    ranked = sorted(first.index, key=lambda r: (-first.loc[r, "rougeL"], r))
    assert kept == set(ranked[:2])
    best = exp.get_best_run()
    assert best in kept
    assert f"Best run on ROUGE-L: {best}" in proc.stdout
    assert ExperimentDir(exp_dir).run(best).samples_file.exists()
