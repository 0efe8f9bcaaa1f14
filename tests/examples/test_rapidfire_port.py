"""``examples/rapidfire_port.py``, RapidFire's SFT tutorial with only its imports changed, runs
as a user runs it (a fresh process, offline, its own local Ray cluster) and trains the runs it
describes: a List of 2 model configs x a List of 2 LoRA configs = 4 runs over 4 chunks.

The same run checks what the TRL fields it sets do: ``logging_steps=2`` thins the MLflow step
rows (the store keeps every step), ``eval_strategy="steps"`` with ``eval_steps=3`` evaluates
inside chunks, and ``save_strategy="epoch"``, ignored, is reported once for all 4 runs; its
``compute_metrics`` scores each run's generated answers at every chunk end (RapidFire's
semantics with a ``generation_config``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rf_ray import Experiment

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16  # 64 rows / batch 4, one epoch; 4 chunks of 4 steps


@pytest.mark.slow  # about 70 s on 2 CPU cores
def test_rapidfire_port_runs_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), RF_RAY_OBJECT_STORE_MB="200")
    proc = subprocess.run(
        [sys.executable, "examples/rapidfire_port.py", "--path", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert "4 runs; log file:" in proc.stdout

    # The ignored field is reported once per experiment, not once per run.
    assert proc.stderr.count("IgnoredFieldWarning") == 1, proc.stderr[-3000:]
    assert "training_args.save_strategy='epoch' is ignored" in proc.stderr

    exp = Experiment("rapidfire-port", experiment_path=tmp_path)
    info = exp.get_runs_info().sort_values("run_id")
    knobs = [(c["learning_rate"], c["lora.r"], c["lora.lora_alpha"]) for c in info["config"]]
    assert knobs == [(2e-3, 4, 8), (2e-3, 8, 16), (5e-4, 4, 8), (5e-4, 8, 16)]
    assert set(info["status"]) <= {"completed", "pruned"}
    assert "completed" in set(info["status"])

    results = exp.get_results()
    client = MlflowClient(tracking_uri=exp.tracking_uri)
    for row in info.itertuples():
        steps = results[results["run_id"] == row.run_id]
        assert sorted(steps["step"]) == list(range(1, row.steps_done + 1))  # store: every step
        evaluated = sorted(steps.loc[steps["eval_loss"].notna(), "step"])
        # Every 3 steps inside a chunk; a chunk's own end (4, 8, ...) has its chunk evaluation.
        assert evaluated == [s for s in range(3, row.steps_done + 1, 3) if s % 4]
        logged = sorted(m.step for m in client.get_metric_history(row.mlflow_run_id, "loss"))
        assert logged == sorted(set(range(2, row.steps_done + 1, 2)) | set(evaluated))
    done = info[info["status"] == "completed"]
    assert (done["steps_done"] == STEPS).all()
    # compute_metrics with a generation_config scored each run's generations at every chunk end.
    chunks = exp.get_chunk_results()
    for row in info.itertuples():
        scores = chunks.loc[chunks["run_id"] == row.run_id, "exact_match"]
        assert len(scores) == row.chunks_done
        assert scores.between(0, 1).all()
        history = client.get_metric_history(row.mlflow_run_id, "chunk/exact_match")
        assert len(history) == row.chunks_done
