"""Several GPUs: one executor per (logical) GPU, each loading the base once, same results.

Runs in its own Ray cluster with two logical GPUs (``num_gpus=2``; there is no CUDA here, so the
executors compute on the CPU), in a subprocess, since a process joins one cluster only. Each
run's training does not depend on where or next to whom it trains, and successive halving waits
for every run at a rung, so the outcome equals a one-executor run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from rf_ray import Experiment, List, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-3, 3e-4, 1e-4]),
            lora_rank=4,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_length=48,
        ),
    )


# Time-sliced: one executor and two must give bit-identical runs, and fused groups differ
# between the two layouts (and with them the float rounding).
FIT = dict(num_chunks=4, seed=9, pruner=SuccessiveHalving(eta=2), live_view=False, fusion=False)

TWO_GPUS = textwrap.dedent(
    """
    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, {root!r})
    import ray
    ray.init(num_cpus=2, num_gpus=2, object_store_memory=150 * 2**20, include_dashboard=False)
    from rf_ray import Experiment
    from rf_ray.toy import sft_dataset
    from tests.rf_ray.test_multi_executor import FIT, config
    exp = Experiment("two", experiment_path={path!r})
    exp.run_fit(config(), train_dataset=sft_dataset(32), num_executors=2, **FIT)
    stats = [ray.get(e.stats.remote()) for e in exp._session.executors]
    print("STATS " + json.dumps([{{"loads": s["base_loads"], "swaps": len(s["swap_seconds"])}}
                                  for s in stats]))
    exp.end()
    """
)


@pytest.mark.slow
def test_two_executors_share_the_work_and_match_one(ray_cluster, tmp_path):
    one = Experiment("one", experiment_path=tmp_path)
    one.run_fit(config(), train_dataset=sft_dataset(32), **FIT)
    one.end()

    script = tmp_path / "two.py"
    script.write_text(TWO_GPUS.format(root=ROOT, path=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("STATS "))
    stats = json.loads(line.removeprefix("STATS "))
    assert len(stats) == 2
    for s in stats:
        assert sum(s["loads"].values()) == 1  # each executor loaded the base once
        assert s["swaps"] > 0  # and trained something

    two = Experiment("two", experiment_path=tmp_path)
    pick = ["run_id", "status", "steps_done", "pruned_at", "best_metric"]
    a = one.get_runs_info()[pick]
    b = two.get_runs_info()[pick]
    assert a.equals(b), f"{a}\n{b}"
    ra, rb = one.get_results(), two.get_results()
    assert ra[["run_id", "step", "loss"]].equals(rb[["run_id", "step", "loss"]])


@pytest.mark.parametrize("num_executors", [2, 0])
def test_more_executors_than_gpus_is_refused_before_anything_is_written(
    ray_cluster, tmp_path, num_executors
):
    exp = Experiment("too-many", experiment_path=tmp_path)
    with pytest.raises(ValueError, match=f"num_executors.*{num_executors}"):
        exp.run_fit(config(), train_dataset=sft_dataset(32), num_executors=num_executors, **FIT)
    assert not (tmp_path / "too-many").exists()
