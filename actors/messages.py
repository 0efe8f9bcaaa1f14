"""The typed messages that cross actor boundaries (Ray pickles them): no dicts read by string key.

    driver ──RunEntry──▶ SchedulerActor ──Grant | Exit──▶ TrialActor ──▶ BaseModelActor
                              ▲                               │              │
                              └────────────Report─────────────┘◀─SliceResult─┘
                                          ReportAck

* ``RunEntry``: everything the scheduler needs to register a run (new, resumed or cloned).
* ``Grant``: permission for one run to train one slice on one executor; ``Exit``: the run is over.
* ``SliceResult``: what the executor's slice produced, including its durable checkpoint.
* ``Report``: what a trial tells the scheduler after a slice; ``ReportAck``: the answer.

This module imports neither torch nor Ray (only ``policies``), so the lean trial processes can
import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from policies.chunking import ChunkPlan
from policies.state import FailedBy, RunStatus

PROGRESS_COLUMNS = (
    "status",
    "steps_done",
    "pruned_at",
    "error",
    "checkpoint",
    "mlflow_run_id",
    "last_metric",
    "best_metric",
    "failures",
    "failed_by",
)
"""The fields of a ``RunEntry`` that are columns of the store's ``runs`` table: what a run has
done so far. ``RunEntry.columns`` writes them (with ``chunks_done``), ``RunEntry.with_columns``
reads them back; the store's run rows, the scheduler's snapshot rows, ``get_runs_info`` and
``rf-ray status`` all show these names."""


@dataclass
class RunEntry:
    """One run as the scheduler knows it: what it trains and what it has done so far.

    The driver registers a run with it (``SchedulerActor.add_runs``: new, resumed or cloned);
    the scheduler's row of the run *is* this record, extended with what only the scheduler
    tracks (``actors.scheduler.RunRow``), so no field exists twice. A new run has only the
    first group of fields; a resumed run (or a warm clone) also carries its progress, so that
    the scheduler's view equals the one it had before the driver died.
    """

    run_id: int
    plan: ChunkPlan
    """How the run's data is cut into chunks (a ``ChunkPlan.to_dict()`` is accepted too)."""
    spec_blob: bytes
    """The run's ``RunSpec``, serialised for the executor (opaque to trial and scheduler)."""
    params: dict[str, Any]
    tags: dict[str, str]
    fusion_key: str | None = None
    """Runs with equal keys may share a fused pass; ``None``: always time-sliced."""
    fusion_tokens: int = 0
    parent_run_id: int | None = None
    warm_start: bool = False
    exclusive: bool = True
    """Its slices occupy the executor (training, local generation). False for an evals API
    pipeline, whose shard mostly waits on a network endpoint: it runs beside the executor's
    other work and is granted without waiting for the executor (``SchedulerCore``)."""
    # ---- progress (``PROGRESS_COLUMNS``; defaults: a new run)
    status: RunStatus = RunStatus.PENDING
    """One enum everywhere (a status string given here is turned into it)."""
    steps_done: int = 0
    pruned_at: int | None = None
    error: str | None = None
    checkpoint: str | None = None
    """The run's last durable checkpoint (recorded with its slice)."""
    mlflow_run_id: str | None = None
    last_metric: float | None = None
    best_metric: float | None = None
    failures: int = 0
    """Executor deaths charged to this run since its last recorded slice."""
    failed_by: FailedBy | None = None
    """What failed the run: its own code, or the infrastructure (only that may be resumed)."""
    chunk_steps: list[dict[str, float]] = field(default_factory=list)
    """Step metrics of the chunk in progress (steps after the last closed chunk): a resumed run
    closes that chunk with the same mean as an uninterrupted run."""

    def __post_init__(self) -> None:
        if isinstance(self.plan, Mapping):
            self.plan = ChunkPlan.from_dict(dict(self.plan))
        self.status = RunStatus(self.status)
        if self.failed_by is not None:
            self.failed_by = FailedBy(self.failed_by)

    @property
    def chunks_done(self) -> int:
        """Chunks completed, by the chunk plan and the steps done."""
        return self.plan.chunks_done(self.steps_done)

    def columns(self) -> dict[str, Any]:
        """The run's progress as the store's columns (``PROGRESS_COLUMNS`` and
        ``chunks_done``), plain JSON values."""
        out = {name: getattr(self, name) for name in PROGRESS_COLUMNS}
        out["status"] = self.status.value
        out["failed_by"] = self.failed_by.value if self.failed_by is not None else None
        out["chunks_done"] = self.chunks_done
        return out

    def with_columns(self, row: Mapping[str, Any], **more: Any) -> RunEntry:
        """A copy with the progress of ``row`` (a store row); ``more``: other fields, which
        win over the row's."""
        stored = {name: row[name] for name in PROGRESS_COLUMNS if name in row}
        stored["failures"] = int(stored.get("failures") or 0)
        return replace(self, **{**stored, **more})


@dataclass(frozen=True)
class Grant:
    """Permission for one run to train on one executor from ``start_step`` up to ``end_step``.

    ``group`` lists the runs granted together for one fused pass (this one included, leader
    first); a time-sliced grant's group is just the run. ``deadline_s`` bounds the slice's wall
    time (``None``: no deadline); past it the run fails and its executor is restarted.
    """

    run_id: int
    executor: int
    end_step: int
    evaluate: bool
    group: tuple[int, ...] = ()
    start_step: int = 0
    deadline_s: float | None = None
    chunk: int = 1
    """The chunk (1-based) the slice trains in: named in a deadline error."""


@dataclass(frozen=True)
class Exit:
    """The run is over (completed, pruned, stopped, failed, deleted): its trial winds up."""

    status: str
    pruned_at: int | None = None


@dataclass
class SliceResult:
    """What one slice produced: per-step metrics, optional eval metrics, timings, checkpoint."""

    run_id: int
    start_step: int
    end_step: int
    step_metrics: list[dict[str, float]]
    eval_metrics: dict[str, float] | None
    seconds: float
    train_seconds: float
    swap_seconds: float
    tokens: int
    memory: dict[str, float]
    started_at: float
    """Wall-clock (``time.time()``) start and end of the slice, for timelines."""
    ended_at: float
    fused_with: int = 1
    """How many runs shared the pass that trained this slice (1: time-sliced)."""
    checkpoint: str | None = None
    """The durable checkpoint written after the slice (set by ``BaseModelActor``)."""
    fusion_oom_tokens: int | None = None
    """Token size of the fused group, when this slice's fused pass ran out of memory."""

    def chunk_extras(self) -> dict[str, float]:
        """Per-slice figures logged with the chunk metrics."""
        return {
            "slice_seconds": self.seconds,
            "slice_started_at": self.started_at,
            "slice_ended_at": self.ended_at,
            "tokens_per_second": self.tokens / max(self.train_seconds, 1e-9),
            "fused_with": self.fused_with,
            **self.memory,
        }


@dataclass(frozen=True)
class Report:
    """A trial's account of one finished slice (``SchedulerActor.report``)."""

    run_id: int
    end_step: int
    step_metrics: list[dict[str, float]]
    eval_metrics: dict[str, float] | None
    chunk_extras: dict[str, float]
    checkpoint: str | None
    fusion_oom_tokens: int | None = None

    @classmethod
    def of(cls, result: SliceResult) -> Report:
        return cls(
            run_id=result.run_id,
            end_step=result.end_step,
            step_metrics=result.step_metrics,
            eval_metrics=result.eval_metrics,
            chunk_extras=result.chunk_extras(),
            checkpoint=result.checkpoint,
            fusion_oom_tokens=result.fusion_oom_tokens,
        )


@dataclass(frozen=True)
class ReportAck:
    """The scheduler's answer to a ``Report``: the run's status and the chunk it closed."""

    status: str
    chunk: tuple[int, dict[str, float]] | None = None
