"""Benchmark: the memory each extra run adds to an rf-ray experiment (process-tree PSS).

For K = 1, 2, 4, 8 SFT configs on the embedded toy model, a fresh process runs one ``run_fit``
(its own local Ray cluster: driver, Ray's own processes, scheduler, tracking actor, executor, one
trial per run) while this script samples the whole process tree: peak summed PSS (shared pages
split between the processes that map them) and RSS. Per extra run: the slope between K=1 and
K=8, ``(PSS(8) - PSS(1)) / 7``, and between neighbours. Also the PSS of one trial process by
itself at the end of the K=8 run (what a lean trial costs; a bare Ray actor is the floor).

Run it (a few minutes on 2 cores)::

    python bench/bench_memory.py                  # results: bench/results/memory_<host>.json
    python bench/bench_memory.py --ks 1,2 --rows 32   # the tests' quick run
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import OFFLINE_ENV, TreeSampler, cores, machine_info, machine_line  # noqa: E402

RATES = [3e-3, 1e-3, 3e-4, 1e-4, 2e-3, 5e-4, 2e-4, 5e-5]
WATCHED = ["torch", "transformers", "trl", "peft", "datasets", "pandas", "mlflow", "sqlalchemy",
           "pyarrow", "numpy", "ray.tune", "ray.data", "ray.train"]  # fmt: skip
"""Modules whose presence in a trial process the results list (a trial needs none of them)."""


def child(k: int, rows: int, workdir: str, result: str) -> int:
    """One run_fit over ``k`` configs; writes the trial processes' own PSS at the end."""
    import logging

    import psutil
    import ray

    from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
    from rf_ray.cluster import NAMESPACE, scheduler_name
    from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=cores(), object_store_memory=128 * 2**20,
             include_dashboard=False, logging_level=logging.WARNING)  # fmt: skip
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(learning_rate=List(RATES[:k]), lora_rank=4,
                                  per_device_train_batch_size=4, max_length=48,
                                  num_train_epochs=1.0),
    )  # fmt: skip
    exp = Experiment(f"memory-k{k}", experiment_path=workdir)
    exp.run_fit(config, train_dataset=sft_dataset(rows), num_chunks=2, seed=0,
                pruner=NoPruning(), live_view=False, blocking=False)  # fmt: skip
    scheduler = ray.get_actor(scheduler_name(exp.dir), namespace=NAMESPACE)
    ray.get(scheduler.wait_done.remote(), timeout=1800)
    trials = []
    for run_id in range(1, k + 1):  # every trial is still alive until the driver lets go
        trial = ray.get(scheduler.trial_of.remote(run_id))
        pid = ray.get(trial.pid.remote())
        info = psutil.Process(pid).memory_full_info()
        trials.append({"run_id": run_id, "pss_mib": info.pss / 2**20, "rss_mib": info.rss / 2**20,
                       "imported": ray.get(trial.loaded_modules.remote(WATCHED))})  # fmt: skip
    processes = _tree_breakdown()  # every process of the tree, while every actor is still up
    exp.wait()
    exp.end()
    Path(result).write_text(json.dumps({"trials": trials, "processes": processes}))
    return 0


def _tree_breakdown() -> list[dict[str, Any]]:
    """This process and its descendants (Ray's own processes and workers), each with its PSS:
    what the tree's floor is made of. A Ray worker is named by its process title
    (``ray::ExecutorActor...``), any other process by its program."""
    import psutil

    me = psutil.Process()
    rows = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            cmd = proc.cmdline()
            pss = proc.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        name = "driver" if proc.pid == me.pid else _label(cmd or [proc.name()])
        rows.append({"pid": proc.pid, "name": name[:60], "pss_mib": round(pss, 1)})
    return sorted(rows, key=lambda r: -r["pss_mib"])


def _label(cmd: list[str]) -> str:
    """``ray::TrialActor`` for a Ray worker (its process title), ``python -u monitor.py`` for a
    Python script, the program's name otherwise (``raylet``, ``gcs_server``)."""
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    if len(cmd) == 1:  # a process that rewrote its title into one string
        cmd = cmd[0].split()
    program = Path(cmd[0]).name
    if program.startswith("python"):
        return " ".join([program, *(Path(c).name for c in cmd[1:3])])
    return program


def measure(k: int, rows: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    result = workdir / f"k{k}.json"
    env = {**os.environ, **OFFLINE_ENV, "HF_HUB_OFFLINE": "1", "RF_RAY_LIVE": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    with (workdir / f"k{k}.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(k), str(rows),
             str(workdir / f"exp{k}"), str(result)],
            cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        tree = TreeSampler(proc.pid, pss=True)
        try:
            with tree:
                proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            tree.kill_leftovers()
    if proc.returncode != 0:
        raise RuntimeError(f"K={k} failed; see {workdir / f'k{k}.log'}")
    trials = json.loads(result.read_text())["trials"]
    return {
        "k": k,
        "peak_pss_mib": tree.peak_pss_mib,
        "peak_rss_mib": tree.peak_mib,
        "peak_processes": tree.peak_processes,
        "trial_pss_mib": sorted(t["pss_mib"] for t in trials),
        "trial_imported": sorted({m for t in trials for m in t["imported"]}),
        "processes_at_end": json.loads(result.read_text())["processes"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,4,8", help="comma-separated numbers of configs")
    parser.add_argument("--rows", type=int, default=64, help="training examples per run")
    parser.add_argument("--out", default=None, help="results JSON path")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        k, rows, workdir, result = args.child
        return child(int(k), int(rows), workdir, result)
    import tempfile

    machine = machine_info()
    print(f"Machine: {machine_line(machine)}", flush=True)
    ks = [int(x) for x in args.ks.split(",")]
    points = []
    with tempfile.TemporaryDirectory(prefix="rf-ray-memory-") as tmp:
        for k in ks:
            t = time.time()
            points.append(measure(k, args.rows, Path(tmp) / f"k{k}"))
            print(f"  K={k}: tree PSS {points[-1]['peak_pss_mib']:.0f} MiB, "
                  f"{time.time() - t:.0f} s", flush=True)  # fmt: skip
            for row in points[-1]["processes_at_end"][:8]:
                print(f"    {row['pss_mib']:7.1f} MiB  {row['name']}")
    slopes = [
        (b["peak_pss_mib"] - a["peak_pss_mib"]) / (b["k"] - a["k"])
        for a, b in itertools.pairwise(points)
        if a["peak_pss_mib"] and b["peak_pss_mib"]
    ]
    first, last = points[0], points[-1]
    res = {
        "machine": machine,
        "load_average": os.getloadavg(),
        "points": points,
        "pss_per_extra_run_mib": (last["peak_pss_mib"] - first["peak_pss_mib"])
        / max(last["k"] - first["k"], 1),
        "pss_slopes_between_neighbours_mib": slopes,
    }
    out = Path(args.out or REPO / "bench" / "results" / f"memory_{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"PSS per extra run: {res['pss_per_extra_run_mib']:.0f} MiB "
          f"(load average {res['load_average'][0]:.1f}); written to {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
