"""When the executor did what: start-up milestones and each slice's compute and total time.

Benchmarks read it (``Experiment.stats()["executors"][i]["timeline"]``) to break start-up down
(executor up, base model loaded, runs placed, first slice), to compute the executor's busy
fraction over a whole ``run_fit`` and in steady state, and the slice overhead: the part of a
slice's time on the executor that is not forward, backward and optimizer step (batch collation,
adapter switch, evaluation, checkpoint capture). Wall-clock times are ``time.time()``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SliceTiming:
    run_id: int
    started_at: float
    ended_at: float
    """The slice's whole time on the executor's worker thread, checkpoint capture included."""
    compute_seconds: float | None
    """Forward, backward and optimizer step; ``None`` for a fused pass (not measured there)."""
    runs: int = 1
    """Runs trained by the pass (a fused group counts each member)."""


@dataclass
class Timeline:
    created_at: float = field(default_factory=time.time)
    """When the executor object was built (torch imported, datasets loaded)."""
    base_loaded_at: float | None = None
    """When its first base model was resident."""
    added_at: dict[int, float] = field(default_factory=dict)
    """When each run was first placed here (its trial was up and asked)."""
    slices: list[SliceTiming] = field(default_factory=list)
    compute_seconds: float = 0.0
    """Running total of forward/backward/optimizer time (``TimeSliced._optimizer_step``)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["added_at"] = {str(k): v for k, v in self.added_at.items()}
        return out
