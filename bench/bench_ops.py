"""Interactive-control latency: how long after ``stop(run)`` the run actually stops training.

An op changes the run's status at once, but a slice already granted runs to its end: the op takes
effect at the next slice boundary. ``max_slice_steps`` bounds a slice in optimizer steps, and so
the latency. This script runs 4 SFT configs on the toy model, sends ``stop`` to a random live run
at random moments (then ``resume``s it), and measures the time from the call until the scheduler
shows the run no longer in flight. It does this for several slice bounds.

    python bench/bench_ops.py            # ~2 minutes on 2 CPU cores
    python bench/bench_ops.py --quick    # the test suite's run
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RF_RAY_LIVE", "0")
import ray

from rf_ray import Experiment, List, NoPruning, OpError, RFModelConfig, RFSFTConfig
from rf_ray.cluster import ensure_ray
from rf_ray.ops import attach
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset


def _config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-3, 3e-4, 1e-4]),
            lora_rank=8,
            per_device_train_batch_size=8,
            num_train_epochs=1,
            max_length=64,
        ),
    )


def measure(max_slice_steps: int | None, rows: int, ops: int, root: Path) -> dict:
    exp = Experiment(f"ops-{max_slice_steps}", experiment_path=root)
    exp.run_fit(
        _config(), train_dataset=sft_dataset(rows), num_chunks=2, pruner=NoPruning(),
        max_slice_steps=max_slice_steps, live_view=False, blocking=False,
    )  # fmt: skip
    scheduler = attach(exp.dir)  # the experiment's named scheduler, as rf-ray ops finds it
    rng = random.Random(0)
    latencies: list[float] = []
    while len(latencies) < ops:
        snap = ray.get(scheduler.snapshot.remote())
        if not any(r["status"] in ("pending", "running") for r in snap):
            break  # every run finished
        flying = [r["run_id"] for r in snap if r["in_flight"] and r["status"] == "running"]
        if not flying:
            time.sleep(0.01)  # trials still starting, or between slices
            continue
        run_id = rng.choice(flying)
        start = time.perf_counter()
        try:
            exp.stop(run_id)
        except OpError:  # it completed meanwhile
            continue
        while any(
            r["run_id"] == run_id and r["in_flight"] for r in ray.get(scheduler.snapshot.remote())
        ):
            time.sleep(0.002)
        latencies.append(time.perf_counter() - start)
        try:
            exp.resume(run_id)
        except OpError:
            break  # the experiment ended: every other run finished meanwhile
        time.sleep(rng.uniform(0.05, 0.3))
    exp.wait()
    slices = exp.get_chunk_results()["slice_seconds"].tolist()
    exp.end()
    return {
        "max_slice_steps": max_slice_steps,
        "ops": len(latencies),
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_max_s": max(latencies) if latencies else None,
        "chunk_slice_seconds_p50": statistics.median(slices) if slices else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows, ops = (128, 3) if args.quick else (512, 10)
    bounds = [1, None] if args.quick else [1, 4, None]
    ensure_ray()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(b, rows, ops, Path(tmp)) for b in bounds]
    print("| max_slice_steps | ops | latency p50 (s) | latency max (s) | chunk-end slice p50 (s) |")
    print("|---|---|---|---|---|")
    for r in results:
        cells = [r["max_slice_steps"] or "chunk", r["ops"], r["latency_p50_s"],
                 r["latency_max_s"], r["chunk_slice_seconds_p50"]]  # fmt: skip
        print(
            "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
