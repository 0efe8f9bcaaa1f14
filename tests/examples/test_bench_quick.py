"""The SFT benchmark runs end to end in its quick mode and reports consistent figures.

Only relations that hold on any machine are checked (counts, identities, orderings of
percentiles): never that one way is faster than the other.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"}
    env.pop("RAY_ADDRESS", None)  # its own local cluster, not one a fixture may have started
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_sft.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())

    assert res["mode"] == "quick"
    for key in ("host", "cpu", "cores", "ram_gib", "torch", "cuda_device"):
        assert key in res["machine"]
    assert res["machine"]["cores"] >= 1

    rf, se, cmp_ = res["rf_ray"], res["serial"], res["comparison"]
    n = res["setup"]["configs"]
    keys = set(res["setup"]["config_keys"])
    assert n == len(keys) >= 2

    for way in (rf, se):
        for key in (
            "wall_seconds",
            "tokens",
            "tokens_per_second",
            "time_to_all_first_metric_seconds",
            "base_loads",
            "peak_rss_mib",
            "optimizer_steps",
            "final_eval_loss",
            "best_config",
        ):
            assert key in way, key
        assert way["wall_seconds"] > 0
        assert way["tokens"] > 0
        assert way["tokens_per_second"] > 0
        assert way["cpu"]["own_cpu_seconds"] > 0
        assert way["time_to_all_first_metric_seconds"] > 0
        assert set(way["first_metric_seconds"]) == keys
        assert set(way["optimizer_steps"]) == keys
        assert set(way["final_eval_loss"]) == keys
        assert all(math.isfinite(v) for v in way["final_eval_loss"].values())
        assert way["best_config"] in keys

    # One resident base model against one load per config.
    assert rf["base_loads"] == 1
    assert se["base_loads"] == n == len(se["per_config"])
    # Same data, order and configs: the same optimizer steps and the same trained tokens.
    assert rf["optimizer_steps"] == se["optimizer_steps"]
    assert all(v > 0 for v in rf["optimizer_steps"].values())
    assert rf["tokens"] == se["tokens"] == se["tokens_attention_mask"]
    # Every serial run evaluated once per chunk, like rf-ray.
    assert all(r["eval_count"] == res["setup"]["num_chunks"] for r in se["per_config"])
    assert rf["statuses"] == ["completed"]

    # A time-sliced slice switches the active adapter, a fused one switches none; which the runs
    # get depends on when their trials come up, so the switch figures must agree either way.
    swaps, p50, p99 = (rf[key] for key in ("swap_count", "swap_p50_seconds", "swap_p99_seconds"))
    assert (swaps == 0) == (p50 is None) == (p99 is None)
    assert swaps == 0 or 0 <= p50 <= p99
    assert 0 < rf["busy_fraction"] <= 1
    assert rf["steady_busy_fraction"] is None or 0 < rf["steady_busy_fraction"] <= 1

    assert math.isfinite(cmp_["overhead_us_per_token"])
    # Chunked, interleaved training equals vanilla TRL on CPU, so the two ways pick alike.
    assert cmp_["best_config_agree"] is True
    assert "| Base-model loads | 1 |" in res["markdown"]
