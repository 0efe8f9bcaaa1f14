"""bench/bench_memory.py runs end to end on its smallest setting (so it cannot rot). Only
relations that hold on any machine are checked, never a size: one trial per run, trials that
import no heavy library, a per-process breakdown that names the experiment's actors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "trl", "peft", "datasets", "pandas", "mlflow", "sqlalchemy"}


@pytest.mark.slow
def test_bench_memory_quick(tmp_path):
    out = tmp_path / "memory.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # its own local cluster per K, not one a fixture may have started
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_memory.py"), "--ks", "1,2", "--rows", "16",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())
    assert [p["k"] for p in res["points"]] == [1, 2]
    for point in res["points"]:
        k = point["k"]
        assert len(point["trial_pss_mib"]) == k
        assert all(v > 0 for v in point["trial_pss_mib"])
        assert not HEAVY & set(point["trial_imported"]), point["trial_imported"]
        names = [row["name"] for row in point["processes_at_end"]]
        assert names.count("driver") == 1
        assert names.count("ray::TrialActor") == k, names
        assert "ray::BaseModelActor" in names, names
        assert "ray::SchedulerActor" in names, names
        assert point["peak_pss_mib"] >= sum(point["trial_pss_mib"]) > 0
    slope = res["pss_per_extra_run_mib"]
    assert slope == res["points"][1]["peak_pss_mib"] - res["points"][0]["peak_pss_mib"]
