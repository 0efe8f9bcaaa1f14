"""What an executor has done, as one typed record (``Experiment.stats()["executors"]``).

The parts of the executor (``actors.engine.registry``, ``time_sliced``, ``fused_slice``,
``evaluation``) add to the fields declared here; nothing adds a field anywhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FusionStats:
    """What the fused paths did (``docs/fusion.md``)."""

    slices: int = 0
    """Fused training passes completed (each over two or more runs)."""
    runs: int = 0
    """Run-slices those passes trained."""
    train_seconds: float = 0.0
    """Time in those passes' training (evaluation and generation not counted)."""
    fallbacks: int = 0
    """Fused training passes that failed part-way and were finished time-sliced."""
    oom: int = 0
    """Of those, the ones that ran out of device memory."""
    last_oom_tokens: int = 0
    """Token size (``RunSpec.fusion_tokens`` summed) of the last group that ran out of memory;
    0: none yet. The scheduler's fusion budget shrinks below it."""
    shared_calls: int = 0
    """GRPO input-preparation model calls (old and reference log-probs, generations) served
    from a pass shared by several runs."""
    eval_groups: int = 0
    """Fused evaluations (one lock-step pass over two or more runs)."""
    eval_fallbacks: int = 0
    """Runs whose fused evaluation failed and that were evaluated again alone."""


@dataclass
class EngineStats:
    """Counters of one executor since it started."""

    base_loads: dict[str, int] = field(default_factory=dict)
    """``create_model_fn`` calls per base model key (1 each, unless the executor restarted)."""
    swap_seconds: list[float] = field(default_factory=list)
    """Time of each adapter switch (``AdapterRegistry.activate``): a pointer move."""
    busy_seconds: float = 0.0
    """Time spent training and evaluating slices."""
    fusion: FusionStats = field(default_factory=FusionStats)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
