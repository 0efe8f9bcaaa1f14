"""Benchmark: rf-ray's interleaved SFT grid against the same grid run serially with vanilla TRL.

Both ways train the 8 LoRA SFT configs of ``examples/sft_grid.py`` (4 learning rates x 2 LoRA
ranks on the embedded toy Llama), with no pruning, on the same machine, the same data
(``rf_ray.toy.sft_dataset(N)``, eval on ``sft_eval_dataset(64)``), the same example order and
the same number of epochs:

1. **rf-ray**: one ``Experiment.run_fit(..., pruner=NoPruning(), num_chunks=4)``: one Ray
   executor holds ONE base model, every config is a LoRA adapter on it, evaluated after each
   chunk.
2. **serial vanilla TRL**: for each config a fresh Python process (``bench/vanilla.py``, as a
   user runs one script per config today) that loads the model, adds the same LoRA adapter
   (same seed) and calls ``trl.SFTTrainer(...).train()`` with the identical ``SFTConfig`` (built by
   ``rf_ray.specs.build_trl_config``), sequential sampling over rf-ray's epoch order, and an
   evaluation every "chunk" worth of steps so it produces the same comparable metrics.

It reports wall time and tokens/s of each way, rf-ray's overhead per trained token, the time until
every config has its first comparable metric (eval after chunk 1), base-model loads, adapter swap
time p50/p99, executor busy fraction (whole run_fit and steady state), peak RSS of each process
tree, device memory on CUDA, the machine, and whether both ways pick the same best config by final
eval_loss. It prints a table and a markdown table, and writes everything as JSON to ``--out``.

Run it (full mode, < 15 min on 2 CPU cores) with::

    python bench/bench_sft.py

``--quick`` runs a tiny version (2 configs, 64 examples, 2 chunks) for the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402  (needs REPO on sys.path when run as a script)
    TreeSampler,
    cores,
    cpu_share,
    machine_info,
    machine_line,
    offline_env,
    percentile,
    with_seed,
)
from bench.vanilla import run_in_process  # noqa: E402  (one vanilla TRL run per process)

offline_env()

SEED = 42  # run_fit's default seed: the example order (epoch_order) and each run's TRL seed
TRAIN_SEED, EVAL_SEED, EVAL_SIZE = 0, 1, 64  # the datasets examples/sft_grid.py trains on

MODES: dict[str, dict[str, Any]] = {
    "full": {"train_size": 512, "num_chunks": 4, "configs": None, "epochs": 1.0},
    # First and last config of the grid: different learning rates and LoRA ranks.
    "quick": {"train_size": 64, "num_chunks": 2, "configs": [0, 7], "epochs": 1.0},
}


# --------------------------------------------------------------------------- small helpers


def config_key(flat: dict[str, Any]) -> str:
    """A short, human-readable identity of a run: the knobs the grid varies."""
    return f"lr={flat['learning_rate']:g},r={flat['lora.r']}"


# --------------------------------------------------------------------------- the configs


def select_runs(mode: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The config group handed to rf-ray and the concrete RunConfigs, in run-id order.

    Full mode hands rf-ray ``make_config_group()`` itself; quick mode a list of RFModelConfigs
    rebuilt from a subset of its expansion (checked to expand to the very same RunConfigs).
    """
    from examples.sft_grid import make_config_group
    from rf_ray import RFLoraConfig, RFModelConfig, RFSFTConfig
    from rf_ray.search import RFGridSearch

    group = make_config_group(num_train_epochs=mode["epochs"])
    runs = group.expand()
    if mode["configs"] is None:
        return group, runs
    chosen = [runs[i] for i in mode["configs"]]
    subset = [
        RFModelConfig(
            model_name=r.model_name,
            peft_config=RFLoraConfig(**r.lora),
            training_args=RFSFTConfig(**r.training_args),
        )
        for r in chosen
    ]
    rebuilt = RFGridSearch(subset).expand()
    assert [r.flat_params() for r in rebuilt] == [r.flat_params() for r in chosen], (
        "the quick-mode subset does not expand to the chosen configs"
    )
    return subset, chosen


# --------------------------------------------------------------------------- rf-ray


def bench_rf_ray(mode: dict[str, Any], workdir: Path, import_seconds: float) -> dict[str, Any]:
    import ray

    from rf_ray import Experiment, NoPruning
    from rf_ray.cluster import ensure_ray
    from rf_ray.toy import sft_dataset, sft_eval_dataset

    group, runs = select_runs(mode)
    n_runs = len(runs)
    train = sft_dataset(mode["train_size"], seed=TRAIN_SEED)
    evals = sft_eval_dataset(EVAL_SIZE, seed=EVAL_SEED)

    with TreeSampler(os.getpid()) as rss:
        t0 = time.perf_counter()
        ensure_ray()
        ray_start = time.perf_counter() - t0

        exp = Experiment("bench-sft", experiment_path=workdir / "rf")
        seen: dict[tuple[int, int], float] = {}  # (run_id, chunk) -> seconds after run_fit start
        stop = threading.Event()
        fit_start = time.perf_counter()

        def poll() -> None:
            while not stop.is_set():
                try:
                    df = exp.get_chunk_results()
                except Exception:  # store not written yet, or mid-write
                    df = None
                now = time.perf_counter() - fit_start
                if df is not None and not df.empty:
                    for rid, chunk in zip(df["run_id"], df["chunk"]):
                        seen.setdefault((int(rid), int(chunk)), now)
                stop.wait(0.25)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            exp.run_fit(
                group,
                train_dataset=train,
                eval_dataset=evals,
                num_chunks=mode["num_chunks"],
                seed=SEED,
                pruner=NoPruning(),
                live_view=False,
            )
            fit_seconds = time.perf_counter() - fit_start
        finally:
            stop.set()
            poller.join()
            exp.end()
            ray.shutdown()
        wall = time.perf_counter() - t0

    stats = exp.stats()
    info = exp.get_runs_info()
    steps = exp.get_results()
    chunks = exp.get_chunk_results()
    # Late-seen chunks (closed after the poller's last look) get the end of run_fit.
    for rid, chunk in zip(chunks["run_id"], chunks["chunk"]):
        seen.setdefault((int(rid), int(chunk)), fit_seconds)

    keys = {int(r): config_key(c) for r, c in zip(info["run_id"], info["config"])}
    first_metric = {keys[r]: seen[(r, 1)] for r in keys if (r, 1) in seen}
    final_eval, opt_steps, tokens = {}, {}, 0
    for rid, key in keys.items():
        rows = chunks[chunks["run_id"] == rid].sort_values("chunk")
        final_eval[key] = float(rows["eval_loss"].iloc[-1]) if len(rows) else float("nan")
        run_steps = steps[steps["run_id"] == rid]
        opt_steps[key] = len(run_steps)
        if "num_tokens" in run_steps and len(run_steps):  # TRL's cumulative trained tokens
            tokens += int(run_steps["num_tokens"].max())

    # Steady state: slices (one per chunk here) over the window from the first slice's start
    # (its end as seen by the poller minus its length) to the last slice's end.
    slice_secs = [float(s) for s in chunks.get("slice_seconds", [])]
    ends = [seen[(int(r), int(c))] for r, c in zip(chunks["run_id"], chunks["chunk"])]
    steady = None
    if slice_secs:
        first_start = min(e - s for e, s in zip(ends, slice_secs))
        window = max(ends) - first_start
        steady = min(sum(slice_secs) / window, 1.0) if window > 0 else None

    all_first = max(first_metric.values()) if len(first_metric) == n_runs else None
    swaps = [s for e in stats["executors"] for s in e["swap_seconds"]]
    rss_col = chunks.get("host_rss_mib", [])
    dev_col = chunks.get("device_mem_peak_mib", [])
    total = import_seconds + wall
    return {
        "wall_seconds": total,
        "driver_import_seconds": import_seconds,
        "ray_start_seconds": ray_start,
        "run_fit_seconds": fit_seconds,
        "engine_wall_seconds": stats.get("wall_seconds"),
        "tokens": tokens,
        "tokens_per_second": tokens / total if total > 0 else 0.0,
        # From run_fit's start (as rf-ray users see it) and from the start of this way (driver
        # imports and Ray start included: the clock the serial way's figure runs on).
        "time_to_all_first_metric_seconds": all_first,
        "time_to_all_first_metric_from_start_seconds": None
        if all_first is None
        else import_seconds + ray_start + all_first,
        "first_metric_seconds": first_metric,
        "base_loads": stats["base_loads"],
        "swap_count": len(swaps),
        "swap_p50_seconds": percentile(swaps, 50) if swaps else None,  # fused slices switch none
        "swap_p99_seconds": percentile(swaps, 99) if swaps else None,
        "busy_fraction": stats["busy_fraction"],
        "busy_seconds": sum(e["busy_seconds"] for e in stats["executors"]),
        "slice_seconds_sum": sum(slice_secs),
        "steady_busy_fraction": steady,
        "peak_rss_mib": rss.peak_mib,
        "peak_rss_processes": rss.peak_processes,
        "cpu": cpu_share(rss.own_cpu_seconds, rss.machine_busy_seconds, wall, cores()),
        "executor_peak_rss_mib": max((float(x) for x in rss_col), default=None),
        "device_peak_mib": max((float(x) for x in dev_col), default=None),
        "optimizer_steps": opt_steps,
        "final_eval_loss": final_eval,
        "best_config": min(final_eval, key=lambda k: final_eval[k]),
        "statuses": sorted(set(info["status"])),
    }


# --------------------------------------------------------------------------- serial vanilla TRL


def bench_serial(mode: dict[str, Any], workdir: Path) -> dict[str, Any]:
    _, runs = select_runs(mode)
    per_config = []
    serial_start = time.time()
    peak_rss = own_cpu = busy_cpu = 0.0
    for i, run in enumerate(runs):
        run = with_seed(run, SEED)
        key = config_key(run.flat_params())
        spec_path = workdir / f"serial-{i}.json"
        result_path = workdir / f"serial-{i}.result.json"
        spec = {
            "run": run.to_json(),
            "out_dir": str(workdir / f"serial-{i}"),
            "train_size": mode["train_size"],
            "num_chunks": mode["num_chunks"],
            "seed": SEED,
            "train_seed": TRAIN_SEED,
            "eval_seed": EVAL_SEED,
            "eval_size": EVAL_SIZE,
            "result": str(result_path),
        }
        try:
            result = run_in_process(spec, spec_path)
        except RuntimeError as e:
            raise RuntimeError(f"serial run {key} failed: {e}") from None
        result["key"] = key
        result["first_metric_seconds"] = (
            result["first_eval_time"] - serial_start if result["first_eval_time"] else None
        )
        wall = result["wall_seconds"]
        peak_rss = max(peak_rss, result["peak_rss_mib"])
        own_cpu += result["own_cpu_seconds"]
        busy_cpu += result["machine_busy_seconds"]
        per_config.append(result)
        print(f"  serial {i + 1}/{len(runs)} {key}: {wall:.1f} s", flush=True)

    wall = time.time() - serial_start
    tokens = sum(r["tokens"] for r in per_config)
    final_eval = {r["key"]: r["final_eval_loss"] for r in per_config}
    firsts = [r["first_metric_seconds"] for r in per_config]
    devs = [r["device_peak_mib"] for r in per_config if r["device_peak_mib"] is not None]
    return {
        "wall_seconds": wall,
        "import_seconds": sum(r["import_seconds"] for r in per_config),
        "model_load_seconds": sum(r["model_load_seconds"] for r in per_config),
        "train_seconds": sum(r["train_seconds"] for r in per_config),
        "tokens": tokens,
        "tokens_attention_mask": sum(r["tokens_attention_mask"] for r in per_config),
        "tokens_per_second": tokens / wall if wall > 0 else 0.0,
        # Config k's first metric arrives after k-1 full runs and its own first eval.
        "time_to_all_first_metric_seconds": max(firsts) if None not in firsts else None,
        "first_metric_seconds": {r["key"]: r["first_metric_seconds"] for r in per_config},
        "base_loads": len(per_config),
        "peak_rss_mib": peak_rss,
        "cpu": cpu_share(own_cpu, busy_cpu, wall, cores()),
        "device_peak_mib": max(devs) if devs else None,
        "optimizer_steps": {r["key"]: r["optimizer_steps"] for r in per_config},
        "final_eval_loss": final_eval,
        "best_config": min(final_eval, key=lambda k: final_eval[k]),
        "per_config": per_config,
    }


# --------------------------------------------------------------------------- report


def _swaps(rf: dict[str, Any]) -> str:
    if not rf["swap_count"]:
        return "no switch (every slice fused)"
    p50, p99 = rf["swap_p50_seconds"] * 1e3, rf["swap_p99_seconds"] * 1e3
    return f"{p50:.3f} / {p99:.3f} ({rf['swap_count']} swaps)"


def _fmt(v: Any, spec: str = ".1f", none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def markdown_table(res: dict[str, Any]) -> str:
    rf, se, cmp_ = res["rf_ray"], res["serial"], res["comparison"]
    n = res["setup"]["configs"]

    def mib(v: Any) -> str:
        return _fmt(v, ".0f")

    rows = [
        ("Wall time (s)",
         f"{rf['wall_seconds']:.1f} (imports {rf['driver_import_seconds']:.1f} + Ray start "
         f"{rf['ray_start_seconds']:.1f} + run_fit {rf['run_fit_seconds']:.1f})",
         f"{se['wall_seconds']:.1f} (imports {se['import_seconds']:.1f}, model loads "
         f"{se['model_load_seconds']:.1f}, train() {se['train_seconds']:.1f})"),
        ("Tokens trained", f"{rf['tokens']:,}", f"{se['tokens']:,}"),
        ("Tokens/s (tokens / wall)", f"{rf['tokens_per_second']:.0f}",
         f"{se['tokens_per_second']:.0f}"),
        ("rf-ray overhead per trained token (µs; < 0 = faster)",
         f"{cmp_['overhead_us_per_token']:+.1f}", "-"),
        (f"Time until all {n} configs have a first eval (s)",
         f"{_fmt(rf['time_to_all_first_metric_seconds'])} after run_fit starts "
         f"({_fmt(rf['time_to_all_first_metric_from_start_seconds'])} incl. imports, Ray start)",
         f"{_fmt(se['time_to_all_first_metric_seconds'])} (config k waits for k-1 full runs)"),
        ("Base-model loads", str(rf["base_loads"]), str(se["base_loads"])),
        ("Adapter swap p50 / p99 (ms)", _swaps(rf), "- (one process per config)"),
        ("Executor busy fraction: run_fit / steady state",
         f"{rf['busy_fraction']:.0%} / {_fmt(rf['steady_busy_fraction'], '.0%')}", "-"),
        ("Peak RSS, process tree (MiB)",
         f"{mib(rf['peak_rss_mib'])} (executor {mib(rf['executor_peak_rss_mib'])})",
         f"{mib(se['peak_rss_mib'])} (largest single run)"),
        ("CPU s used by this way / by other processes meanwhile",
         f"{rf['cpu']['own_cpu_seconds']:.0f} / {rf['cpu']['other_processes_cpu_seconds']:.0f}",
         f"{se['cpu']['own_cpu_seconds']:.0f} / {se['cpu']['other_processes_cpu_seconds']:.0f}"),
        ("Best config by final eval_loss", rf["best_config"], se["best_config"]),
        ("Optimizer steps per config", _steps(rf["optimizer_steps"]),
         _steps(se["optimizer_steps"])),
    ]  # fmt: skip
    if rf["device_peak_mib"] is not None or se["device_peak_mib"] is not None:
        rows.append(("Peak device memory (MiB)", mib(rf["device_peak_mib"]),
                     mib(se["device_peak_mib"])))  # fmt: skip
    out = [
        f"Machine: {machine_line(res['machine'])}",
        "",
        f"{n} LoRA SFT configs, {res['setup']['train_size']} examples x "
        f"{res['setup']['epochs']:g} epoch, {res['setup']['num_chunks']} chunks, eval on "
        f"{EVAL_SIZE} examples after each chunk, no pruning "
        f"(`python bench/bench_sft.py{' --quick' if res['mode'] == 'quick' else ''}`).",
        "",
        "| | rf-ray (one resident base model) | serial vanilla TRL (one process per config) |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        f"Best configs agree: {'yes' if cmp_['best_config_agree'] else 'NO'}; largest final "
        f"eval_loss difference between the two ways: {cmp_['max_abs_final_eval_loss_diff']:.2e}.",
    ]
    return "\n".join(out)


def _steps(d: dict[str, int]) -> str:
    values = sorted(set(d.values()))
    return ", ".join(str(v) for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny mode (2 configs, 64 examples)")
    parser.add_argument("--out", default=None, help="results JSON path")
    args = parser.parse_args(argv)

    t = time.perf_counter()
    import peft  # noqa: F401  (the driver's one-time import cost, charged to rf-ray)
    import ray  # noqa: F401
    import torch
    import trl  # noqa: F401

    import rf_ray  # noqa: F401

    import_seconds = time.perf_counter() - t

    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    out = Path(
        args.out or REPO / "bench" / "results" / f"sft_{mode_name}_{socket.gethostname()}.json"
    )
    machine = machine_info()
    print(f"Machine: {machine_line(machine)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="rf-ray-bench-") as tmp:
        workdir = Path(tmp)
        print(f"[1/2] rf-ray ({mode_name} mode) ...", flush=True)
        rf = bench_rf_ray(mode, workdir, import_seconds)
        print(f"  rf-ray: {rf['wall_seconds']:.1f} s", flush=True)
        print("[2/2] serial vanilla TRL ...", flush=True)
        se = bench_serial(mode, workdir)

    keys = list(se["final_eval_loss"])
    diffs = [abs(rf["final_eval_loss"][k] - se["final_eval_loss"][k]) for k in keys]
    tokens = se["tokens"] or rf["tokens"]
    res: dict[str, Any] = {
        "mode": mode_name,
        "machine": machine,
        "setup": {
            "configs": len(keys),
            "config_keys": keys,
            "train_size": mode["train_size"],
            "eval_size": EVAL_SIZE,
            "num_chunks": mode["num_chunks"],
            "epochs": mode["epochs"],
            "seed": SEED,
        },
        "rf_ray": rf,
        "serial": se,
        "comparison": {
            "overhead_us_per_token": (rf["wall_seconds"] - se["wall_seconds"]) / tokens * 1e6,
            "speedup": se["wall_seconds"] / rf["wall_seconds"],
            "best_config_agree": rf["best_config"] == se["best_config"],
            "max_abs_final_eval_loss_diff": max(diffs),
        },
        "cuda_max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
    }
    res["markdown"] = markdown_table(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))

    print()
    print(f"{'':44}{'rf-ray':>14}{'serial TRL':>14}")
    for label, a, b in [
        ("wall (s)", rf["wall_seconds"], se["wall_seconds"]),
        ("tokens/s", rf["tokens_per_second"], se["tokens_per_second"]),
        ("all configs have a first eval (s)", rf["time_to_all_first_metric_from_start_seconds"],
         se["time_to_all_first_metric_seconds"]),
        ("base-model loads", rf["base_loads"], se["base_loads"]),
        ("peak RSS, process tree (MiB)", rf["peak_rss_mib"], se["peak_rss_mib"]),
    ]:  # fmt: skip
        print(f"{label:44}{_fmt(a):>14}{_fmt(b):>14}")
    print()
    print(res["markdown"])
    print(f"\nResults written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
