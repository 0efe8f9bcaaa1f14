"""Measurement helpers shared by the benchmark scripts (``bench_sft.py``, ``bench_compare.py``).

- :class:`TreeSampler`: peak summed RSS (and PSS) of a process and all its descendants, the CPU
  seconds they used, and the CPU seconds the whole machine was busy meanwhile;
- :class:`GpuSampler`: device-wide GPU memory in use, from ``nvidia-smi`` (no CUDA context in
  the measuring process), where a GPU exists;
- :func:`machine_info` / :func:`machine_line`: what the figures were measured on;
- :func:`percentile`, :func:`cpu_share`, :func:`with_seed`, :func:`offline_env`.

Nothing here imports torch or Ray at module level: a script imports this before deciding what
to measure.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RF_RAY_LIVE": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "RAY_DEDUP_LOGS": "1",
}
"""Environment every benchmark process runs with: offline, no live view, quiet progress bars."""


def offline_env() -> None:
    """Apply :data:`OFFLINE_ENV` to this process (hub access is always off)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RF_RAY_LIVE"] = "0"
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


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
    RSS is summed per process, so pages shared between processes count once per process; PSS
    (``pss=True``, sampled every 4th time: it reads ``smaps_rollup``) splits shared pages
    between the processes that map them, so its sum does not double count.

    Every process seen is remembered (pid and start time), so :meth:`kill_leftovers` can end
    what the tree left running without touching a process that merely reused a pid.
    """

    def __init__(self, pid: int, interval: float = 0.25, pss: bool = False) -> None:
        self.pid, self.interval, self.pss = pid, interval, pss
        self.peak_mib = 0.0
        self.peak_pss_mib: float | None = None
        self.peak_processes = 0
        self.seen: dict[int, float] = {}  # pid -> create_time
        self._cpu: dict[int, float] = {}  # pid -> latest cumulative user+system seconds
        self._cpu0: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._busy0 = self._busy1 = 0.0
        self._samples = 0

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
        with_pss = self.pss and self._samples % 4 == 0
        self._samples += 1
        total = pss = 0
        for p in procs:
            with contextlib.suppress(psutil.Error), p.oneshot():
                self.seen.setdefault(p.pid, p.create_time())
                total += p.memory_info().rss
                cpu = p.cpu_times()
                self._cpu[p.pid] = cpu.user + cpu.system
                if with_pss:
                    pss += getattr(p.memory_full_info(), "pss", 0)
        if total / 2**20 > self.peak_mib:
            self.peak_mib, self.peak_processes = total / 2**20, len(procs)
        if with_pss and pss and pss / 2**20 > (self.peak_pss_mib or 0.0):
            self.peak_pss_mib = pss / 2**20

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

    def kill_leftovers(self) -> int:
        """SIGKILL every process of the tree still alive (same pid AND start time); count them."""
        import psutil

        killed = 0
        for pid, created in self.seen.items():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                p = psutil.Process(pid)
                if pid != os.getpid() and p.create_time() == created and p.is_running():
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
        return killed

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


class GpuSampler:
    """Peak device-wide GPU memory in use (MiB), polled from ``nvidia-smi`` once a second.

    Device-wide, so it counts every process on the GPU (ours and anyone else's); the measuring
    process itself never creates a CUDA context. ``available`` is False (and the peak None) on a
    machine without ``nvidia-smi``.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.available = shutil.which("nvidia-smi") is not None
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def used_mib() -> float | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout  # fmt: skip
            return sum(float(line) for line in out.split() if line.strip())
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            used = self.used_mib()
            if used is not None and used > (self.peak_mib or 0.0):
                self.peak_mib = used
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()


def cpu_share(own: float, busy: float, wall: float, cores: int) -> dict[str, float]:
    """CPU figures of one way: its own CPU seconds, other processes' CPU seconds, capacity."""
    return {
        "own_cpu_seconds": own,
        "other_processes_cpu_seconds": max(busy - own, 0.0),
        "cpu_capacity_seconds": wall * cores,
    }


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    import importlib.util

    import peft
    import psutil
    import torch
    import transformers
    import trl

    # The GPU machine runs the executor without Ray (bench/bench_scale.py): no Ray there.
    ray = importlib.import_module("ray") if importlib.util.find_spec("ray") else None

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": cores(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "ray": ray.__version__ if ray is not None else None,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        if cuda
        else None,
    }


def machine_line(m: dict[str, Any]) -> str:
    device = m["cuda_device"] or "no GPU (CPU only)"
    if m.get("cuda_memory_gib"):
        device += f" ({m['cuda_memory_gib']} GiB)"
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {device}; Python {m['python']}, "
        f"torch {m['torch']}, transformers {m['transformers']}, TRL {m['trl']}, "
        f"PEFT {m['peft']}, Ray {m['ray'] or 'not installed'}"
    )


def with_seed(run: Any, seed: int) -> Any:
    """The RunConfig as rf-ray trains it: run_fit's seed is the TRL seed unless the run set one
    (``specs.build_specs``)."""
    import dataclasses

    args = dict(run.training_args)
    args.setdefault("seed", seed)
    return dataclasses.replace(run, training_args=args)
