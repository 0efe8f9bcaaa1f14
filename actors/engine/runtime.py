"""What the executor's parts share: the device and its precision, what the worker is doing now,
the counters and the timeline.

One ``Runtime`` per executor, handed to each of its parts (``AdapterRegistry``, ``TimeSliced``,
``FusedSlices``, ``Evaluator``) when the executor builds them; no part holds the executor.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from actors.engine.stats import EngineStats
from actors.engine.timeline import Timeline


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (and not overridden), else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_figures(device: torch.device) -> dict[str, float]:
    """Device memory in use and peak (MiB) on CUDA; host RSS (MiB) on CPU."""
    if device.type == "cuda":
        return {
            "device_mem_mib": torch.cuda.memory_allocated(device) / 2**20,
            "device_mem_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20,
        }
    import psutil

    return {"host_rss_mib": psutil.Process(os.getpid()).memory_info().rss / 2**20}


def quiet_libraries() -> None:
    """No per-map and per-load progress bars in actor logs: rf-ray reports progress itself."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Runtime:
    """The device, its precision and the executor's bookkeeping, shared by its parts."""

    device: torch.device
    use_bf16: bool
    """Run slices under bf16 autocast (chosen for CUDA with bf16 support; a test may set it on
    the CPU to run the same path there)."""
    phase: str = "idle"
    """What the executor is doing now, in words (``BaseModelActor.activity`` reports it, and a
    failure names it). Set by the part at work; the actor shell puts it back to idle."""
    stats: EngineStats = field(default_factory=EngineStats)
    timeline: Timeline = field(default_factory=Timeline)
    """Start-up milestones and slice timings (``actors.engine.timeline``), for benchmarks."""

    @classmethod
    def on(cls, device: str | None = None) -> Runtime:
        """A runtime on ``device`` (CUDA when present if ``None``), bf16 where it is supported."""
        chosen = pick_device(device)
        return cls(chosen, chosen.type == "cuda" and torch.cuda.is_bf16_supported())

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast around a whole slice (several optimizer steps), with autocast's weight
        cache OFF: the cache keeps one bf16 copy of each trainable leaf tensor (the LoRA
        weights) for the life of the autocast region, and the optimizer updates the float32
        weights in place without invalidating it, so every forward after the slice's first
        step would see the slice's starting weights (measured: a 2-slice run diverged from a
        1-slice one from the first step of the second slice; tests/actors/test_autocast.py).
        Nothing when ``use_bf16`` is off. Autocast is thread-local: a lane enters its own."""
        if self.use_bf16:
            return torch.autocast(
                device_type=self.device.type, dtype=torch.bfloat16, cache_enabled=False
            )
        return contextlib.nullcontext()

    def reset_peak_memory(self) -> None:
        """Start a slice's peak-memory figure afresh (CUDA only)."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def memory(self) -> dict[str, float]:
        """``memory_figures`` of this runtime's device."""
        return memory_figures(self.device)
