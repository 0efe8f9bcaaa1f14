"""Benchmark: rf-ray beside the usual alternatives, on the same work and machine, in one run.

The same K configs (8 and 16 LoRA SFT configs on the embedded toy Llama, 8 on the ``wide``
model of ``bench/models.py``, and a GRPO case) are tuned five ways, each way a fresh process tree
started from this script as a user would start it:

1. **serial vanilla TRL**: one fresh process per config (``bench/vanilla.py``), each loading the
   model and calling ``SFTTrainer/GRPOTrainer.train()``, evaluated after every chunk's worth of
   steps; no pruning.
1b. **serial TRL, one process**: the same runs as a for-loop in ONE process (imports paid once):
   the cheapest thing a user can do (``vanilla.train_many``).
2. **Ray Tune + ASHAScheduler**: ``tune.Tuner`` over the same configs, each trial a function
   trainable that loads its own model and runs the same vanilla TRL training, reporting the
   comparable metric after each chunk (``training_iteration`` = chunk). ASHA's
   ``grace_period``/``reduction_factor`` are rf-ray's ``min_chunks``/``eta`` and ``max_t`` is the
   number of chunks. Trials run one at a time, as on one GPU: a trial asks for the GPU (on a
   CPU-only machine, all the CPU cores) and ``max_concurrent_trials=1``.
3. **rf-ray + successive halving**: one ``run_fit`` with ``SuccessiveHalving(eta, min_chunks)``.
4. **rf-ray, no pruning**: one ``run_fit`` with ``NoPruning()``.

Every way trains the identical TRL config (``rf_ray.specs.build_trl_config``) over the same
example order, so their metrics after each chunk are the same numbers; only what they run, when,
and at what cost differs. Per way it reports: wall time until the config it finally picks as
best has finished training, wall time overall, time until every config has a first comparable
metric, trained tokens and tokens/s, peak memory of the process tree (RSS and PSS; device
memory where a GPU exists), memory each extra run adds ((peak at K=16 - peak at K=8) / 8;
``bench/bench_memory.py`` measures it at K=1,2,4,8), rf-ray's start-up breakdown, executor busy
fraction (whole run and steady state) and slice overhead (``bench/engine_figures.py``),
base-model loads, busy fraction (executor or trainer busy time over wall), rf-ray's adapter
swap p50/p99 and interactive-control latency (``bench/bench_ops.py``), and whether all ways
picked the same best config. Each (case, way) runs ``--reps`` times (the order of the ways
rotates between repetitions); tables show medians, and the ratio table the median of the
per-repetition ratios rf-ray / peer. A PNG shows every run's learning curve against wall time
with its pruning point, next to the memory comparison. On a CUDA machine it also records device
memory and a bf16 throughput figure.

Run it (full mode: about an hour on 2 CPU cores) with::

    python bench/bench_compare.py                 # results: bench/results/compare_full_<host>.*
    python bench/bench_compare.py --quick         # 2 SFT configs, 1 repetition: the tests' run

``--reps N``, ``--cases sft8,grpo``, ``--no-ops``, ``--out PATH.json`` (the PNG goes next to
it); ``--report PATH.json`` redoes the tables and the PNG of a finished run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402  (needs REPO on sys.path when run as a script)
    OFFLINE_ENV,
    GpuSampler,
    TreeSampler,
    cores,
    cpu_share,
    machine_info,
    machine_line,
    offline_env,
    percentile,
    with_seed,
)
from bench.vanilla import comparable_metric, run_in_process  # noqa: E402

offline_env()

SEED = 42  # run_fit's seed: the SFT example order and each run's TRL seed
TRAIN_SEED, EVAL_SEED, EVAL_SIZE = 0, 1, 64  # the datasets examples/sft_grid.py trains on
WAYS = ("serial", "serial_one", "tune_asha", "rf_sh", "rf_none")
WAY_NAMES = {
    "serial": "serial vanilla TRL",
    "serial_one": "serial TRL, one process",
    "tune_asha": "Ray Tune + ASHA",
    "rf_sh": "rf-ray + SH",
    "rf_none": "rf-ray, no pruning",
}
OBJECT_STORE_MB = 256

# A case: which configs, how much data, how many chunks, and the successive-halving settings
# that rf-ray's SuccessiveHalving and Tune's ASHAScheduler both get.
CASES: dict[str, dict[str, Any]] = {
    # 256 examples (32 steps of 8) per config: start-up dominates on the toy anyway, and the
    # full mode fits in about an hour on 2 CPU cores (61 min measured).
    "sft8": {"kind": "SFT", "grid": "sft8", "train_size": 256, "num_chunks": 4,
             "eta": 2, "min_chunks": 1},
    "sft16": {"kind": "SFT", "grid": "sft16", "train_size": 256, "num_chunks": 4,
              "eta": 2, "min_chunks": 1},
    # examples/grpo_grid.py's 3 learning rates and pruner, on fewer prompts.
    "grpo": {"kind": "GRPO", "grid": "grpo3", "train_size": 128, "num_chunks": 4,
             "eta": 2, "min_chunks": 2},
    # sft8 on bench/models.py's wide model (one optimizer step >= 100 ms on 2 cores), slices of
    # at most 4 steps: per-slice costs show against real compute.
    "sft8w": {"kind": "SFT", "grid": "sft8", "train_size": 256, "num_chunks": 4,
              "eta": 2, "min_chunks": 1, "model": "wide", "max_slice_steps": 4},
    # Quick mode: the first and last config of the 8 (different learning rates and ranks).
    "sft2": {"kind": "SFT", "grid": "sft8", "subset": [0, 7], "train_size": 64,
             "num_chunks": 2, "eta": 2, "min_chunks": 1},
    "grpo2": {"kind": "GRPO", "grid": "grpo3", "subset": [0, 1], "train_size": 16,
              "num_chunks": 2, "eta": 2, "min_chunks": 1},
}  # fmt: skip
MODES: dict[str, dict[str, Any]] = {
    "full": {"cases": ["sft8", "sft16", "grpo", "sft8w"], "reps": 3, "ops_bounds": [1, None],
             "ops_rows": 128, "ops_count": 5},
    # One small SFT case, all four ways; `--cases sft2,grpo2` adds a tiny GRPO case.
    "quick": {"cases": ["sft2"], "reps": 1, "ops_bounds": [], "ops_rows": 64, "ops_count": 2},
}  # fmt: skip
SHORT = {"learning_rate": "lr", "lora.r": "r", "lora.lora_alpha": "alpha"}


# --------------------------------------------------------------------------- the configs


def _subset(runs: list[Any], idx: list[int]) -> list[Any]:
    """RFModelConfigs that expand to exactly ``runs[i] for i in idx`` (checked)."""
    from rf_ray import RFGRPOConfig, RFLoraConfig, RFModelConfig, RFSFTConfig
    from rf_ray.search import RFGridSearch

    chosen = [runs[i] for i in idx]
    cls = {"SFT": RFSFTConfig, "GRPO": RFGRPOConfig}
    subset = [
        RFModelConfig(
            model_name=r.model_name,
            peft_config=RFLoraConfig(**r.lora),
            training_args=cls[r.trainer_type](**r.training_args),
            **({"reward_funcs": r.reward_funcs} if r.reward_funcs else {}),
        )
        for r in chosen
    ]
    rebuilt = RFGridSearch(subset).expand()
    if [r.flat_params() for r in rebuilt] != [r.flat_params() for r in chosen]:
        raise RuntimeError("the subset does not expand to the chosen configs")
    return subset


def case_configs(case: dict[str, Any]) -> tuple[Any, list[Any], list[str]]:
    """(config group for run_fit, the concrete RunConfigs in run-id order, a short key each)."""
    from rf_ray import List, RFGridSearch, RFModelConfig, RFSFTConfig
    from rf_ray.specs import differing_params

    if case["grid"] == "sft8":
        from examples.sft_grid import make_config_group

        group = make_config_group(num_train_epochs=1.0)
    elif case["grid"] == "sft16":
        # examples/sft_grid.py's 8 configs (lora_alpha=16) and the same 8 at lora_alpha=32.
        group = RFGridSearch(
            RFModelConfig(
                model_name="rf-ray/tiny-llama",
                training_args=RFSFTConfig(
                    learning_rate=List([3e-3, 1e-3, 3e-4, 1e-4]),
                    lora_rank=List([4, 16]),
                    lora_alpha=List([16, 32]),
                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                    per_device_train_batch_size=8,
                    num_train_epochs=1.0,
                    lr_scheduler_type="cosine",
                    warmup_steps=2,
                    max_length=64,
                ),
            )
        )
    else:
        from examples.grpo_grid import make_config_group as grpo_group

        group = grpo_group(num_train_epochs=1.0)
    every = group.expand()
    idx = list(case.get("subset") or range(len(every)))
    varying = differing_params([every[i] for i in idx])
    keys = [
        ",".join(f"{SHORT.get(k, k)}={every[i].flat_params()[k]:g}" for k in varying)
        if varying
        else f"run{n + 1}"
        for n, i in enumerate(idx)
    ]
    if case.get("order"):  # the order configs are handed to every way (see run_order)
        idx, keys = [idx[n] for n in case["order"]], [keys[n] for n in case["order"]]
    if idx != list(range(len(every))):
        group = _subset(every, idx)
    return group, [every[i] for i in idx], keys


def run_order(case: dict[str, Any], rep: int, reps: int) -> list[int]:
    """The order the case's configs are handed to every way in repetition ``rep`` of ``reps``.

    Serial runs and one-at-a-time ASHA depend on it: the serial way finishes the config it
    picks as best after the configs listed before it, and ASHA always promotes the first trial
    to reach a rung, so a list that starts with the best config flatters both. So the order is
    one seeded shuffle, rotated by ``rep * K / reps`` places in each repetition: over the
    repetitions every config (the best one included) sits early, in the middle and late, and the
    medians do not hang on the grid's own order. rf-ray trains all configs side by side, so the
    order barely matters there.
    """
    import random

    k = len(case["subset"]) if "subset" in case else len(case_configs(case)[1])
    base = random.Random(f"rf-ray-compare/{k}").sample(range(k), k)
    shift = round(rep * k / max(reps, 1)) % k
    return base[shift:] + base[:shift]


def vanilla_specs(case: dict[str, Any], workdir: Path) -> dict[str, dict[str, Any]]:
    """Key -> the spec of one vanilla TRL run of that config (``bench/vanilla.py``)."""
    _, runs, keys = case_configs(case)
    specs = {}
    for i, (run, key) in enumerate(zip(runs, keys)):
        funcs = [f.__name__ for f in run.reward_funcs or []]
        specs[key] = {
            "run": with_seed(run, SEED).to_json(),
            "reward_funcs": funcs,
            "out_dir": str(workdir / f"vanilla-{i}"),
            "train_size": case["train_size"],
            "num_chunks": case["num_chunks"],
            "seed": SEED,
            "train_seed": TRAIN_SEED,
            "eval_seed": EVAL_SEED,
            "eval_size": EVAL_SIZE,
            "result": str(workdir / f"vanilla-{i}.result.json"),
            "model": case.get("model", "toy"),
        }
    return specs


def _datasets(case: dict[str, Any]) -> tuple[Any, Any]:
    from rf_ray.toy import grpo_reverse_dataset, sft_dataset, sft_eval_dataset

    if case["kind"] == "GRPO":
        return grpo_reverse_dataset(case["train_size"], seed=TRAIN_SEED), None
    return sft_dataset(case["train_size"], seed=TRAIN_SEED), sft_eval_dataset(
        EVAL_SIZE, seed=EVAL_SEED
    )


def _start_ray() -> None:
    """A local Ray cluster of this process only (never one a `ray start` left running)."""
    import logging

    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        address="local",
        num_cpus=cores(),
        object_store_memory=OBJECT_STORE_MB * 2**20,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )


# --------------------------------------------------------------------------- the ways (children)


def child_rf_ray(spec: dict[str, Any]) -> dict[str, Any]:
    """rf-ray: one run_fit over all configs, with or without successive halving."""
    import ray

    from rf_ray import Experiment, NoPruning, SuccessiveHalving

    case = spec["case"]
    group, _, keys = case_configs(case)
    train, evals = _datasets(case)
    metric, _ = comparable_metric(case["kind"])
    t = time.time()
    _start_ray()
    ray_start = time.time() - t
    pruner = (
        SuccessiveHalving(eta=case["eta"], min_chunks=case["min_chunks"])
        if spec["way"] == "rf_sh"
        else NoPruning()
    )
    exp = Experiment(f"compare-{spec['way']}", experiment_path=Path(spec["workdir"]) / "rf")
    model = None
    if case.get("model", "toy") != "toy":
        from bench.models import wide_model

        model = wide_model
    fit_start = time.time()
    try:
        exp.run_fit(group, model, train_dataset=train, eval_dataset=evals,
                    num_chunks=case["num_chunks"], seed=SEED, pruner=pruner, live_view=False,
                    max_slice_steps=case.get("max_slice_steps"))  # fmt: skip
    finally:
        fit_end = time.time()
        exp.end()
    stats, info = exp.stats(), exp.get_runs_info()
    chunks, steps = exp.get_chunk_results(), exp.get_results()
    ray.shutdown()

    runs: dict[str, Any] = {}
    for rid, status, pruned_at in zip(info["run_id"], info["status"], info["pruned_at"]):
        rid = int(rid)
        key = keys[rid - 1]  # run ids follow the group's expansion order
        rows = chunks[chunks["run_id"] == rid].sort_values("chunk")
        mine = steps[steps["run_id"] == rid]
        runs[key] = {
            "status": str(status),
            "pruned_at": None if pruned_at is None or pruned_at != pruned_at else int(pruned_at),
            "chunks": [
                {"chunk": int(c), "metric": float(m), "time": float(e)}
                for c, m, e in zip(rows["chunk"], rows[metric], rows["slice_ended_at"])
            ],
            "steps": len(mine),
            "tokens": int(mine["num_tokens"].max()) if "num_tokens" in mine and len(mine) else 0,
        }
    swaps = [s for e in stats["executors"] for s in e["swap_seconds"]]
    rss = [float(x) for x in chunks.get("host_rss_mib", []) if x == x]
    dev = [float(x) for x in chunks.get("device_mem_peak_mib", []) if x == x]
    from bench.engine_figures import engine_figures

    return {
        "runs": runs,
        "phases": {"ray_start": ray_start, "run_fit": fit_end - fit_start},
        "engine": engine_figures(stats, fit_start, fit_end),
        "base_loads": stats["base_loads"],
        "busy_seconds": sum(e["busy_seconds"] for e in stats["executors"]),
        "engine_busy_fraction": stats["busy_fraction"],
        "swap_seconds": swaps,
        "executor_peak_rss_mib": max(rss, default=None),
        "device_peak_mib": max(dev, default=None),
    }


def child_tune(spec: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune + ASHA: each trial loads its own model and runs vanilla TRL (bench/vanilla.py)."""
    import ray
    import torch
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    case, workdir = spec["case"], Path(spec["workdir"])
    metric, mode = comparable_metric(case["kind"])
    specs = vanilla_specs(case, workdir)
    loads_dir = workdir / "loads"
    loads_dir.mkdir(parents=True, exist_ok=True)
    for s in specs.values():
        s["loads_dir"] = str(loads_dir)
    t = time.time()
    _start_ray()
    ray_start = time.time() - t

    def vanilla_trial(config: dict[str, Any]) -> None:
        from ray import tune

        from bench.vanilla import train_vanilla

        def report(entry: dict[str, Any]) -> None:
            tune.report({metric: entry["metric"], "chunk": entry["chunk"],
                         "chunk_time": entry["time"], "tokens": entry["tokens"],
                         "steps": entry["step"], "train_seconds": entry["train_seconds"],
                         "device_peak_mib": entry.get("device_peak_mib")})  # fmt: skip

        train_vanilla(specs[config["key"]], on_chunk=report)

    # One trial at a time, as on one GPU: the trial holds the GPU, or every CPU core.
    resources = {"cpu": 1, "gpu": 1} if torch.cuda.is_available() else {"cpu": cores()}
    tuner = tune.Tuner(
        tune.with_resources(vanilla_trial, resources),
        param_space={"key": tune.grid_search(list(specs))},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(time_attr="training_iteration", metric=metric, mode=mode,
                                    max_t=case["num_chunks"], grace_period=case["min_chunks"],
                                    reduction_factor=case["eta"]),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(name="compare", storage_path=str(workdir / "tune"), verbose=0),
    )  # fmt: skip
    fit_start = time.time()
    grid = tuner.fit()
    fit_end = time.time()
    runs: dict[str, Any] = {}
    busy = 0.0
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"Tune trial {result.config} failed: {result.error}")
        df = result.metrics_dataframe.sort_values("chunk")
        done = int(df["chunk"].max())
        busy += float(df["train_seconds"].max())
        dev = [float(x) for x in df.get("device_peak_mib", []) if x is not None and x == x]
        runs[result.config["key"]] = {
            "status": "completed" if done >= case["num_chunks"] else "pruned",
            "pruned_at": None if done >= case["num_chunks"] else done,
            "chunks": [
                {"chunk": int(c), "metric": float(m), "time": float(e)}
                for c, m, e in zip(df["chunk"], df[metric], df["chunk_time"])
            ],
            "steps": int(df["steps"].max()),
            "tokens": int(df["tokens"].max()),
            "device_peak_mib": max(dev, default=None),
        }
    ray.shutdown()
    devs = [r["device_peak_mib"] for r in runs.values() if r["device_peak_mib"] is not None]
    return {
        "runs": runs,
        "phases": {"ray_start": ray_start, "tuner_fit": fit_end - fit_start},
        "base_loads": len(list(loads_dir.iterdir())),
        "busy_seconds": busy,
        "device_peak_mib": max(devs, default=None),
    }


def child_ops(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Interactive-control latency (``bench/bench_ops.py``'s measurement) on rf-ray."""
    _start_ray()
    import ray

    from bench.bench_ops import measure

    root = Path(spec["workdir"]) / "ops"
    out = [measure(b, spec["ops_rows"], spec["ops_count"], root) for b in spec["ops_bounds"]]
    ray.shutdown()
    return out


def child_bf16(spec: dict[str, Any]) -> dict[str, Any] | None:
    """On CUDA: bf16 matmul throughput and the toy model's bf16 forward+backward tokens/s."""
    import torch

    if not torch.cuda.is_available():
        return None
    from rf_ray.toy import load_toy_model, sft_dataset

    n = 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t, reps = time.perf_counter(), 50
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    tflops = 2 * n**3 * reps / (time.perf_counter() - t) / 1e12
    model, tok = load_toy_model()
    model = model.cuda().train()
    rows = sft_dataset(256, seed=TRAIN_SEED)
    text = [p + c for p, c in zip(rows["prompt"], rows["completion"])]
    batch = tok(text[:64], return_tensors="pt", padding=True).to("cuda")
    figures: dict[str, Any] = {"bf16_matmul_tflops": tflops}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
        torch.cuda.synchronize()
        t, steps = time.perf_counter(), 20
        for _ in range(steps):
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = model(**batch, labels=batch["input_ids"]).loss
            loss.backward()
        torch.cuda.synchronize()
        tokens = int(batch["attention_mask"].sum()) * steps
        figures[f"toy_train_tokens_per_second_{name}"] = tokens / (time.perf_counter() - t)
    figures["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def child_serial_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Serial vanilla TRL in one process: a for-loop over the configs (``vanilla.train_many``)."""
    from bench.vanilla import train_many

    case, workdir = spec["case"], Path(spec["workdir"])
    specs = vanilla_specs(case, workdir)
    results = train_many(list(specs.values()))
    runs = {
        key: {
            "status": "completed",
            "pruned_at": None,
            "chunks": [{"chunk": c["chunk"], "metric": c["metric"], "time": c["time"]}
                       for c in r["chunks"]],
            "steps": r["optimizer_steps"],
            "tokens": r["tokens"],
        }
        for key, r in zip(specs, results)
    }  # fmt: skip
    devs = [r["device_peak_mib"] for r in results if r["device_peak_mib"] is not None]
    return {
        "runs": runs,
        "base_loads": len(runs),
        "busy_seconds": sum(r["train_seconds"] for r in results),
        "device_peak_mib": max(devs, default=None),
        "phases": {"first_import": results[0]["import_seconds"] if results else None},
    }


CHILDREN = {"rf_sh": child_rf_ray, "rf_none": child_rf_ray, "tune_asha": child_tune,
            "serial_one": child_serial_one, "ops": child_ops, "bf16": child_bf16}  # fmt: skip


def child_main(way: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = CHILDREN[way](spec)
    tmp = Path(spec["result"] + ".tmp")
    tmp.write_text(json.dumps(out, default=str))
    os.replace(tmp, spec["result"])
    return 0


# --------------------------------------------------------------------------- the parent


def _child_env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV, "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"}
    env.pop("RAY_ADDRESS", None)  # its own local cluster, never one someone else started
    # Tune trials run in Ray worker processes: they import bench.vanilla from the repository.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def launch(way: str, spec: dict[str, Any], workdir: Path, timeout: float) -> dict[str, Any]:
    """Run one child (``--child WAY``) in its own session; measure its whole process tree."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, log = workdir / f"{way}.spec.json", workdir / f"{way}.log"
    spec = {**spec, "way": way, "workdir": str(workdir), "result": str(workdir / f"{way}.out")}
    spec_path.write_text(json.dumps(spec))
    gpu_before = GpuSampler.used_mib() if GpuSampler().available else None
    launched = time.time()
    with log.open("w") as logf:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", way, str(spec_path)],
            cwd=str(REPO), env=_child_env(), stdout=logf, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we end it, and nothing else
        )  # fmt: skip
        tree, gpu = TreeSampler(proc.pid, pss=True), GpuSampler()
        try:
            with tree, gpu:
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        except BaseException:  # Ctrl-C or SIGTERM: end this child's whole tree, then stop
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            tree.kill_leftovers()
            raise
    wall = time.time() - launched
    # Ray workers run in their own process groups: end any a failed child left behind, by pid.
    leftovers = tree.kill_leftovers()
    if proc.returncode != 0:
        tail = log.read_text()[-5000:]
        raise RuntimeError(f"{way} failed (exit {proc.returncode}); log {log}:\n{tail}")
    out = json.loads(Path(spec["result"]).read_text())
    return {
        "out": out,
        "launched": launched,
        "wall_seconds": wall,
        "peak_rss_mib": tree.peak_mib,
        "peak_pss_mib": tree.peak_pss_mib,
        "peak_processes": tree.peak_processes,
        "cpu": cpu_share(tree.own_cpu_seconds, tree.machine_busy_seconds, wall, cores()),
        "gpu_used_peak_mib": None
        if gpu.peak_mib is None or gpu_before is None
        else gpu.peak_mib - gpu_before,
        "leftover_processes_killed": leftovers,
    }


def way_serial(case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Serial vanilla TRL: one fresh process per config, one after another."""
    specs = vanilla_specs(case, workdir)
    start = time.time()
    runs: dict[str, Any] = {}
    peak_rss = peak_pss = own = busy_machine = busy = 0.0
    devs, gpu = [], GpuSampler()
    with gpu:
        for i, (key, spec) in enumerate(specs.items()):
            r = run_in_process(spec, workdir / f"vanilla-{i}.spec.json")
            runs[key] = {
                "status": "completed",
                "pruned_at": None,
                "chunks": [
                    {"chunk": c["chunk"], "metric": c["metric"], "time": c["time"]}
                    for c in r["chunks"]
                ],
                "steps": r["optimizer_steps"],
                "tokens": r["tokens"],
            }
            peak_rss = max(peak_rss, r["peak_rss_mib"])
            peak_pss = max(peak_pss, r["peak_pss_mib"] or 0.0)
            own += r["own_cpu_seconds"]
            busy_machine += r["machine_busy_seconds"]
            busy += r["train_seconds"]
            if r["device_peak_mib"] is not None:
                devs.append(r["device_peak_mib"])
    wall = time.time() - start
    return {
        "out": {"runs": runs, "base_loads": len(runs), "busy_seconds": busy,
                "device_peak_mib": max(devs, default=None)},
        "launched": start,
        "wall_seconds": wall,
        "peak_rss_mib": peak_rss,
        "peak_pss_mib": peak_pss or None,
        "peak_processes": 1,
        "cpu": cpu_share(own, busy_machine, wall, cores()),
        "gpu_used_peak_mib": gpu.peak_mib,
    }  # fmt: skip


def summarize(case: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """One way's figures, the same way for every way, from its runs' chunk timestamps."""
    out, t0 = raw["out"], raw["launched"]
    metric, mode = comparable_metric(case["kind"])
    runs = out["runs"]
    for r in runs.values():
        for c in r["chunks"]:
            c["t"] = c.pop("time") - t0  # seconds since the way started
    full = {k: r for k, r in runs.items() if len(r["chunks"]) == case["num_chunks"]}
    finals = {k: r["chunks"][-1]["metric"] for k, r in full.items()}
    best = (max if mode == "max" else min)(finals, key=lambda k: finals[k]) if finals else None
    firsts = [r["chunks"][0]["t"] for r in runs.values() if r["chunks"]]
    tokens = sum(r["tokens"] for r in runs.values())
    wall = raw["wall_seconds"]
    swaps = out.get("swap_seconds") or []
    return {
        "wall_seconds": wall,
        "time_to_best_seconds": full[best]["chunks"][-1]["t"] if best else None,
        "time_to_all_first_metric_seconds": max(firsts) if len(firsts) == len(runs) else None,
        "tokens": tokens,
        "tokens_per_second": tokens / wall,
        "optimizer_steps": sum(r["steps"] for r in runs.values()),
        "peak_rss_mib": raw["peak_rss_mib"],
        "peak_pss_mib": raw["peak_pss_mib"],
        "peak_processes": raw["peak_processes"],
        "executor_peak_rss_mib": out.get("executor_peak_rss_mib"),
        "device_peak_mib": out.get("device_peak_mib"),
        "gpu_used_peak_mib": raw.get("gpu_used_peak_mib"),
        "base_loads": out["base_loads"],
        "busy_fraction": out["busy_seconds"] / wall,
        "engine_busy_fraction": out.get("engine_busy_fraction"),
        "swap_count": len(swaps),
        "swap_p50_seconds": percentile(swaps, 50) if swaps else None,
        "swap_p99_seconds": percentile(swaps, 99) if swaps else None,
        "cpu": raw["cpu"],
        "phases": out.get("phases", {}),
        "engine": out.get("engine") or {},
        "metric": metric,
        "mode": mode,
        "best_config": best,
        "final_metrics": finals,
        "pruned": {k: r["pruned_at"] or len(r["chunks"]) for k, r in runs.items() if k not in full},
        "runs": runs,
    }


def run_fit_defaults() -> dict[str, Any]:
    """The run_fit defaults the rf-ray ways ran with (they pass only configs, data, chunks,
    seed and the pruner): e.g. whether fused multi-adapter slices were on."""
    import inspect

    from rf_ray import Experiment

    params = inspect.signature(Experiment.run_fit).parameters.values()
    return {p.name: repr(p.default) for p in params if p.default is not inspect.Parameter.empty}


def run_way(way: str, case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    if way == "serial":
        raw = way_serial(case, workdir)
    else:
        raw = launch(way, {"case": case}, workdir, timeout=1800)
    return summarize(case, raw)


WAY_ATTEMPTS = 3


def run_way_retrying(
    way: str, case: dict[str, Any], workdir: Path, failures: list[dict[str, Any]]
) -> dict[str, Any]:
    """``run_way``, tried again (from scratch, in a fresh directory) when it fails: one crashed
    attempt must not throw away an hour of measurements. Every failed attempt is recorded in
    the results (``failed_attempts``) and printed; the third failure is fatal."""
    for attempt in range(1, WAY_ATTEMPTS + 1):
        try:
            return run_way(way, case, workdir.with_name(f"{workdir.name}-try{attempt}"))
        except RuntimeError as e:
            failures.append({"way": way, "case": case["grid"], "attempt": attempt,
                             "error": str(e)[-3000:]})  # fmt: skip
            print(f"  {WAY_NAMES[way]} failed (attempt {attempt}): {str(e)[-400:]}", flush=True)
            if attempt == WAY_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def measure_ways(
    case_names: list[str], reps: int, root: Path, partial: Path, failures: list[dict[str, Any]]
) -> dict[str, Any]:
    """Every (repetition, case, way), the ways in a rotating order; {case: {way: [result]}}."""
    results: dict[str, Any] = {name: {w: [] for w in WAYS} for name in case_names}
    partial.parent.mkdir(parents=True, exist_ok=True)
    for rep in range(reps):
        order = WAYS[rep % len(WAYS) :] + WAYS[: rep % len(WAYS)]  # drift hits every way
        for name in case_names:
            case = {**CASES[name], "order": run_order(CASES[name], rep, reps)}
            for way in order:
                t = time.time()
                res = run_way_retrying(way, case, root / f"{name}-{way}-{rep}", failures)
                res["order"] = case_configs(case)[2]
                results[name][way].append(res)
                partial.write_text(json.dumps(results, default=str))
                print(f"  rep {rep + 1}/{reps} {name:6} {WAY_NAMES[way]:20} "
                      f"{time.time() - t:6.1f} s  best {res['best_config']}  "
                      f"pruned {len(res['pruned'])}", flush=True)  # fmt: skip
    return results


def measure_extras(mode: dict[str, Any], machine: dict[str, Any], root: Path, ops: bool) -> dict:
    """rf-ray's IC-op latency and, on CUDA, the bf16 figures; a failure is recorded, not fatal
    (the ways' results are already in)."""
    extra: dict[str, Any] = {}
    if ops and mode["ops_bounds"]:
        spec = {k: mode[k] for k in ("ops_bounds", "ops_rows", "ops_count")}
        try:
            extra["ic_ops"] = launch("ops", spec, root / "ops", timeout=1200)["out"]
            print(f"  IC-op latency: {len(extra['ic_ops'])} slice bounds", flush=True)
        except RuntimeError as e:
            extra["ic_ops_error"] = str(e)[-2000:]
            print(f"  IC-op latency failed: {str(e)[:300]}", flush=True)
    if machine["cuda_device"]:
        try:
            extra["bf16"] = launch("bf16", {}, root / "bf16", timeout=600)["out"]
        except RuntimeError as e:
            extra["bf16_error"] = str(e)[-2000:]
    return extra


def report_only(src: Path, out: Path | None) -> int:
    """Re-render the summary, the markdown and the PNG of a finished run (``--report``)."""
    res = json.loads(src.read_text())
    png = render(res, out or src)
    print(res["markdown"])
    print(f"Written to {out or src} and {png}")
    return 0


def render(res: dict[str, Any], out: Path) -> Path:
    """Add the summary and the markdown to ``res``, draw the PNG next to ``out``, write ``out``."""
    from bench.compare_report import aggregate, markdown, plot

    res["summary"] = aggregate(res)
    res["markdown"] = markdown(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plot(res, png)
    res["png"] = str(png)
    out.write_text(json.dumps(res, indent=1, default=str))
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny mode, for the test suite")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (full 3, quick 1)")
    parser.add_argument("--cases", default=None, help=f"comma-separated, of {sorted(CASES)}")
    parser.add_argument("--no-ops", action="store_true", help="skip the IC-op latency run")
    parser.add_argument("--out", default=None, help="results JSON path (PNG next to it)")
    parser.add_argument(
        "--report",
        default=None,
        metavar="JSON",
        help="redo the tables and the PNG from a results JSON; measure nothing",
    )
    parser.add_argument("--child", nargs=2, metavar=("WAY", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(*args.child)
    # SIGTERM unwinds like Ctrl-C, so the running way's process tree is ended (launch).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.report:
        return report_only(Path(args.report), Path(args.out) if args.out else None)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    reps = args.reps or mode["reps"]
    case_names = args.cases.split(",") if args.cases else mode["cases"]
    unknown = sorted(set(case_names) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {sorted(CASES)}")
    out = Path(
        args.out or REPO / "bench" / "results" / f"compare_{mode_name}_{socket.gethostname()}.json"
    )
    machine = machine_info()
    print(f"Machine: {machine_line(machine)}", flush=True)
    started = time.time()
    partial = out.with_suffix(".partial.json")  # every finished way, in case a later one fails
    with tempfile.TemporaryDirectory(prefix="rf-ray-compare-") as tmp:
        failures: list[dict[str, Any]] = []
        results = measure_ways(case_names, reps, Path(tmp), partial, failures)
        extra = measure_extras(mode, machine, Path(tmp), ops=not args.no_ops)
    res = {
        "mode": mode_name,
        "machine": machine,
        "reps": reps,
        "rf_ray_run_fit_defaults": run_fit_defaults(),
        "setup": {name: {**CASES[name], "configs": case_configs(CASES[name])[2]}
                  for name in case_names},
        "results": results,
        "failed_attempts": failures,
        **extra,
        "total_seconds": time.time() - started,
    }  # fmt: skip
    png = render(res, out)
    partial.unlink(missing_ok=True)
    print()
    print(res["markdown"])
    print(f"\nResults written to {out} and {png} ({res['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
