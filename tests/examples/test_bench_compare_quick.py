"""The comparison benchmark runs end to end in its quick mode and records consistent figures.

Only relations that hold on any machine are checked (counts, identities, pruning, agreement of
metrics between ways that train the same config): never a timing, never that one way is faster.
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
sys.path.insert(0, str(REPO))

from bench import bench_compare  # noqa: E402

WAYS = {"serial", "serial_one", "tune_asha", "rf_sh", "rf_none"}


@pytest.mark.slow
def test_bench_compare_quick(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"}
    env.pop("RAY_ADDRESS", None)  # its own local clusters, not one a fixture may have started
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_compare.py"), "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    res = json.loads(out.read_text())

    assert res["mode"] == "quick"
    assert res["reps"] == 1
    for key in ("host", "cpu", "cores", "ram_gib", "torch", "cuda_device"):
        assert key in res["machine"]
    assert set(res["results"]) == {"sft2"}
    case = res["setup"]["sft2"]
    keys = case["configs"]
    k = len(keys)
    assert k == len(set(keys)) == 2
    ways = res["results"]["sft2"]
    assert set(ways) == WAYS
    assert all(len(reps) == 1 for reps in ways.values())
    got = {way: reps[0] for way, reps in ways.items()}

    for way, r in got.items():
        assert set(r["runs"]) == set(keys), way
        assert r["wall_seconds"] > 0
        assert r["tokens"] > 0
        assert r["tokens_per_second"] > 0
        assert r["time_to_all_first_metric_seconds"] is not None  # every config got a metric
        assert r["time_to_best_seconds"] is not None
        assert r["best_config"] in keys
        assert r["peak_rss_mib"] > 0
        assert 0 < r["busy_fraction"] <= 1
        assert r["metric"] == "eval_loss"
        assert r["mode"] == "min"
        for run in r["runs"].values():
            chunks = [c["chunk"] for c in run["chunks"]]
            assert chunks == list(range(1, len(chunks) + 1))  # in order, none missing
            assert all(math.isfinite(c["metric"]) for c in run["chunks"])
            # Chunk ends are on the way's own clock; none before it started.
            assert all(c["t"] >= 0 for c in run["chunks"])

    # Base-model loads: one resident model against one load per config (per Tune trial).
    assert got["rf_sh"]["base_loads"] == got["rf_none"]["base_loads"] == 1
    assert got["serial"]["base_loads"] == got["tune_asha"]["base_loads"] == k
    assert got["serial_one"]["base_loads"] == k
    # Pruning: the pruning ways stopped something, the others trained every config fully.
    assert got["serial"]["pruned"] == got["rf_none"]["pruned"] == got["serial_one"]["pruned"] == {}
    assert len(got["rf_sh"]["pruned"]) == k - math.ceil(k / case["eta"])
    assert all(c < case["num_chunks"] for c in got["rf_sh"]["pruned"].values())
    assert len(got["tune_asha"]["pruned"]) <= k - 1
    assert got["rf_sh"]["tokens"] < got["rf_none"]["tokens"] == got["serial"]["tokens"]
    assert got["serial_one"]["tokens"] == got["serial"]["tokens"]
    # rf-ray-only figures.
    for way in ("rf_sh", "rf_none"):
        # A time-sliced slice switches the active adapter; a fused one switches none. Which the
        # runs get depends on when their trials come up (the first grant goes to the first trial
        # up), so a quick run may have no switch at all: the figures must agree either way.
        swaps, p50, p99 = (
            got[way][key] for key in ("swap_count", "swap_p50_seconds", "swap_p99_seconds")
        )
        assert (swaps == 0) == (p50 is None) == (p99 is None)
        assert swaps == 0 or 0 <= p50 <= p99
        assert got[way]["executor_peak_rss_mib"] > 0
        engine = got[way]["engine"]  # start-up breakdown, busy fractions, slice overhead
        assert 0 < engine["first_slice_start_s"] < engine["first_slice_end_s"]
        assert engine["executor_ready_s"] <= engine["first_slice_start_s"]
        assert 0 < engine["busy_fraction_whole"] <= 1
        assert 0 < engine["busy_fraction_steady"] <= 1
        assert engine["slices"] >= k

    # The same config trained the same way gives the same metric after each chunk, whichever
    # way ran it (identical TRL config and example order; chunked training equals vanilla).
    for key in keys:
        reference = [c["metric"] for c in got["serial"]["runs"][key]["chunks"]]
        for way, r in got.items():
            mine = [c["metric"] for c in r["runs"][key]["chunks"]]
            assert mine == pytest.approx(reference[: len(mine)], rel=1e-5, abs=1e-6), way

    summary = res["summary"]["sft2"]
    assert set(summary["same_best_as_serial"]) == WAYS
    assert all(isinstance(v, bool) for v in summary["same_best_as_serial"].values())
    assert isinstance(summary["all_ways_same_best"], bool)
    for pair, ratios in summary["ratios"].items():
        assert ratios["base_loads"] == pytest.approx(1 / k), pair
        assert ratios["wall_seconds"] > 0
    assert "| SFT K=2 | Base-model loads |" in res["markdown"]

    png = Path(res["png"])
    assert png.exists()
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_case_grids():
    """K=16 is examples/sft_grid.py's 8 configs at two lora_alpha values; keys are distinct."""
    from examples.sft_grid import make_config_group

    _, runs8, keys8 = bench_compare.case_configs(bench_compare.CASES["sft8"])
    _, runs16, keys16 = bench_compare.case_configs(bench_compare.CASES["sft16"])
    assert len(set(keys8)) == 8
    assert len(set(keys16)) == 16
    assert [r.flat_params() for r in runs8] == [
        r.flat_params() for r in make_config_group(num_train_epochs=1.0).expand()
    ]
    alpha16 = [r.flat_params() for r in runs16 if r.lora["lora_alpha"] == 16]
    assert sorted(map(repr, alpha16)) == sorted(repr(r.flat_params()) for r in runs8)
    _, grpo, grpo_keys = bench_compare.case_configs(bench_compare.CASES["grpo"])
    assert len(grpo) == 3
    assert all(r.trainer_type == "GRPO" for r in grpo)
    assert len(set(grpo_keys)) == 3


@pytest.mark.slow
def test_vanilla_grpo_reports_each_chunk(tmp_path):
    """The peers' GRPO run (serial and Tune trials) reports one mean reward per chunk."""
    from bench.vanilla import train_vanilla

    case = {**bench_compare.CASES["grpo2"], "subset": [1]}
    (spec,) = bench_compare.vanilla_specs(case, tmp_path).values()
    seen = []
    result = train_vanilla({**spec, "loads_dir": str(tmp_path)}, on_chunk=seen.append)
    assert [c["chunk"] for c in result["chunks"]] == [1, 2] == [c["chunk"] for c in seen]
    assert all(0.0 <= c["metric"] <= 1.0 for c in result["chunks"])  # order_reward's range
    assert result["metric"] == "reward"
    assert result["model_loads"] == 1
    assert len(list(tmp_path.glob("load-*"))) == 1
    assert result["tokens"] > 0
    assert result["optimizer_steps"] == result["chunks"][-1]["step"]
