"""Benchmark: rf-ray's interleaved SFT grid against the same grid run serially with vanilla TRL.

Both ways train the 8 LoRA SFT configs of ``examples/sft_grid.py`` (4 learning rates x 2 LoRA
ranks on the embedded toy Llama), with no pruning, on the same machine, the same data
(``rf_ray.toy.sft_dataset(N)``, eval on ``sft_eval_dataset(64)``), the same example order and
the same number of epochs:

1. **rf-ray**: one ``Experiment.run_fit(..., pruner=NoPruning(), num_chunks=4)``: one Ray
   executor holds ONE base model, every config is a LoRA adapter on it, evaluated after each
   chunk.
2. **serial vanilla TRL**: for each config a fresh Python process (as a user runs one script per
   config today) that loads the model, adds the same LoRA adapter (same seed) and calls
   ``trl.SFTTrainer(...).train()`` with the identical ``SFTConfig`` (built by
   ``rf_ray.config.build_trl_config``), sequential sampling over rf-ray's epoch order, and an
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
import contextlib
import dataclasses
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RF_RAY_LIVE"] = "0"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

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


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), without numpy."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class TreeSampler:
    """Samples a process and all its descendants in a thread: peak summed RSS (MiB), and the CPU
    seconds the tree used against the CPU seconds the whole machine was busy meanwhile.

    The difference is CPU taken by processes outside the benchmark (on a shared machine they
    slow both ways down, by different amounts; the report shows it so a reader can judge).
    RSS is summed per process, so pages shared between processes count once per process.
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.peak_mib = 0.0
        self.peak_processes = 0
        self._cpu: dict[int, float] = {}  # pid -> latest cumulative user+system seconds
        self._cpu0: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._busy0 = self._busy1 = 0.0

    @staticmethod
    def _machine_busy() -> float:
        import psutil

        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error), p.oneshot():
                total += p.memory_info().rss
                cpu = p.cpu_times()
                self._cpu[p.pid] = cpu.user + cpu.system
        if total / 2**20 > self.peak_mib:
            self.peak_mib, self.peak_processes = total / 2**20, len(procs)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    @property
    def own_cpu_seconds(self) -> float:
        return sum(self._cpu.values()) - sum(self._cpu0.values())

    @property
    def machine_busy_seconds(self) -> float:
        return self._busy1 - self._busy0

    def __enter__(self) -> TreeSampler:
        self._busy0 = self._machine_busy()
        self._sample()
        self._cpu0 = dict(self._cpu)  # CPU the tree had used before the window opened
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._busy1 = self._machine_busy()


def cpu_share(own: float, busy: float, wall: float, cores: int) -> dict[str, float]:
    """CPU figures of one way: its own CPU seconds, other processes' CPU seconds, capacity."""
    return {
        "own_cpu_seconds": own,
        "other_processes_cpu_seconds": max(busy - own, 0.0),
        "cpu_capacity_seconds": wall * cores,
    }


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    import peft
    import psutil
    import ray
    import torch
    import transformers
    import trl

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = _cores()
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": cores,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "ray": ray.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def machine_line(m: dict[str, Any]) -> str:
    device = m["cuda_device"] or "no GPU (CPU only)"
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {device}; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, TRL {m['trl']}, "
        f"PEFT {m['peft']}, Ray {m['ray']}"
    )


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


def with_seed(run: Any, seed: int) -> Any:
    """The RunConfig as rf-ray trains it: run_fit's seed is the TRL seed unless the run set one
    (``launch.build_specs``)."""
    from rf_ray.config import RunConfig

    args = dict(run.training_args)
    args.setdefault("seed", seed)
    return RunConfig(**{**run.__dict__, "training_args": args})


# --------------------------------------------------------------------------- rf-ray


def bench_rf_ray(mode: dict[str, Any], workdir: Path, import_seconds: float) -> dict[str, Any]:
    import ray

    from rf_ray import Experiment, NoPruning
    from rf_ray.launch import ensure_ray
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
        "swap_p50_seconds": percentile(swaps, 50),
        "swap_p99_seconds": percentile(swaps, 99),
        "busy_fraction": stats["busy_fraction"],
        "busy_seconds": sum(e["busy_seconds"] for e in stats["executors"]),
        "slice_seconds_sum": sum(slice_secs),
        "steady_busy_fraction": steady,
        "peak_rss_mib": rss.peak_mib,
        "peak_rss_processes": rss.peak_processes,
        "cpu": cpu_share(rss.own_cpu_seconds, rss.machine_busy_seconds, wall, _cores()),
        "executor_peak_rss_mib": max((float(x) for x in rss_col), default=None),
        "device_peak_mib": max((float(x) for x in dev_col), default=None),
        "optimizer_steps": opt_steps,
        "final_eval_loss": final_eval,
        "best_config": min(final_eval, key=lambda k: final_eval[k]),
        "statuses": sorted(set(info["status"])),
    }


# --------------------------------------------------------------------------- serial vanilla TRL


def serial_worker(spec_path: str) -> None:
    """One vanilla TRL run in this (fresh) process; writes its JSON result next to the spec."""
    started = time.time()
    spec = json.loads(Path(spec_path).read_text())
    t = time.perf_counter()
    import torch
    from peft import get_peft_model
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from policies.chunking import ChunkPlan, epoch_order
    from rf_ray.config import RunConfig, build_lora_config, build_trl_config
    from rf_ray.toy import load_toy_model, sft_dataset, sft_eval_dataset

    import_seconds = time.perf_counter() - t

    run = RunConfig.from_json(spec["run"])
    cuda = torch.cuda.is_available()
    args = build_trl_config(run, spec["out_dir"], use_cpu=not cuda)
    n = spec["train_size"]
    plan = ChunkPlan(
        num_examples=n,
        batch_size=args.per_device_train_batch_size,
        grad_accum=args.gradient_accumulation_steps,
        num_chunks=spec["num_chunks"],
        num_train_epochs=float(args.num_train_epochs),
        max_steps=int(args.max_steps),
        drop_last=bool(args.dataloader_drop_last),
    )
    steps_per_chunk = plan.chunk_bounds(0)[1]
    args = dataclasses.replace(
        args,
        train_sampling_strategy="sequential",
        eval_strategy="steps",
        eval_steps=steps_per_chunk,
    )
    train = sft_dataset(n, seed=spec["train_seed"]).select(epoch_order(n, spec["seed"], 0))
    evals = sft_eval_dataset(spec["eval_size"], seed=spec["eval_seed"])

    t = time.perf_counter()
    model, tokenizer = load_toy_model()
    load_seconds = time.perf_counter() - t
    torch.manual_seed(args.seed)  # as rf-ray seeds each adapter's initialisation
    model = get_peft_model(model, build_lora_config(run))

    evals_at: list[float] = []
    eval_losses: list[float] = []

    class FirstEval(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evals_at.append(time.time())
            if metrics and "eval_loss" in metrics:
                eval_losses.append(float(metrics["eval_loss"]))

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that also counts trained tokens the way rf-ray's executor does."""

        bench_tokens = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            if "attention_mask" in inputs:
                self.bench_tokens += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = CountingSFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizer,
        callbacks=[FirstEval()],
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t
    trl_tokens = max(
        (int(h["num_tokens"]) for h in trainer.state.log_history if "num_tokens" in h), default=0
    )
    result = {
        "process_start": started,
        "import_seconds": import_seconds,
        "model_load_seconds": load_seconds,
        "train_seconds": train_seconds,
        "optimizer_steps": int(trainer.state.global_step),
        "tokens": trl_tokens,
        "tokens_attention_mask": trainer.bench_tokens,
        "first_eval_time": evals_at[0] if evals_at else None,
        "eval_count": len(evals_at),
        "eval_losses": eval_losses,
        "final_eval_loss": eval_losses[-1] if eval_losses else None,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "steps_per_chunk": steps_per_chunk,
    }
    Path(spec["result"]).write_text(json.dumps(result))


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
        spec_path.write_text(
            json.dumps(
                {
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
            )
        )
        launched = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serial-worker", str(spec_path)],
            cwd=str(REPO),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        with TreeSampler(proc.pid) as rss:
            _, err = proc.communicate(timeout=900)
        wall = time.time() - launched
        if proc.returncode != 0:
            raise RuntimeError(f"serial run {key} failed (exit {proc.returncode}):\n{err[-4000:]}")
        result = json.loads(result_path.read_text())
        # The sampler can miss a short peak; the child's own high-water mark cannot.
        result.update(
            key=key, wall_seconds=wall, peak_rss_mib=max(rss.peak_mib, result["max_rss_mib"])
        )
        result["first_metric_seconds"] = (
            result["first_eval_time"] - serial_start if result["first_eval_time"] else None
        )
        peak_rss = max(peak_rss, result["peak_rss_mib"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # exact, the child was reaped
        own_cpu += (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        busy_cpu += rss.machine_busy_seconds
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
        "cpu": cpu_share(own_cpu, busy_cpu, wall, _cores()),
        "device_peak_mib": max(devs) if devs else None,
        "optimizer_steps": {r["key"]: r["optimizer_steps"] for r in per_config},
        "final_eval_loss": final_eval,
        "best_config": min(final_eval, key=lambda k: final_eval[k]),
        "per_config": per_config,
    }


# --------------------------------------------------------------------------- report


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
        ("Adapter swap p50 / p99 (ms)",
         f"{rf['swap_p50_seconds'] * 1e3:.3f} / {rf['swap_p99_seconds'] * 1e3:.3f} "
         f"({rf['swap_count']} swaps)", "- (one process per config)"),
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
    parser.add_argument("--serial-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serial_worker:
        serial_worker(args.serial_worker)
        return 0

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
