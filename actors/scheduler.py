"""The scheduler: grants slices of executor time to runs and applies the pruning policy.

``SchedulerCore`` is a plain object holding the run table; it asks ``policies`` for every
decision (slice order, pruning, status transitions) and is testable without Ray.
``SchedulerActor`` is the async Ray shell: trials await ``request_slice`` until they are granted
a slice (or told to stop), then ``report`` its outcome; every change is written to the store.

Slice order is least-progress-first across live runs (``policies.order.next_run``), so all runs
reach a rung together and the first comparison of all configs comes after one chunk each.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from policies.chunking import ChunkPlan
from policies.order import next_run
from policies.pruning import Pruner, pruner_from_dict
from policies.state import RunStatus, is_live, transition

logger = logging.getLogger(__name__)


@dataclass
class RunRow:
    """The scheduler's view of one run."""

    run_id: int
    plan: ChunkPlan
    status: RunStatus = RunStatus.PENDING
    steps_done: int = 0
    chunks_done: int = 0
    in_flight: bool = False
    executor: int | None = None
    chunk_steps: list[dict[str, float]] = field(default_factory=list)
    last_metric: float | None = None
    best_metric: float | None = None
    pruned_at: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Grant:
    """Permission for one run to train on one executor up to ``end_step``."""

    run_id: int
    executor: int
    end_step: int
    evaluate: bool


class SchedulerCore:
    """Run table + policies; no Ray, no I/O."""

    def __init__(
        self,
        pruner: Pruner,
        num_executors: int = 1,
        has_eval: bool = False,
        max_slice_steps: int | None = None,
    ) -> None:
        self.pruner = pruner
        self.has_eval = has_eval
        self.max_slice_steps = max_slice_steps
        self.busy = [False] * num_executors
        self.runs: dict[int, RunRow] = {}

    # ------------------------------------------------------------------ run table
    def add_run(self, run_id: int, plan: ChunkPlan) -> None:
        self.runs[run_id] = RunRow(run_id=run_id, plan=plan)

    def set_status(self, run_id: int, status: RunStatus) -> None:
        row = self.runs[run_id]
        row.status = transition(row.status, status, run_id)

    def live(self) -> dict[int, int]:
        return {r.run_id: r.chunks_done for r in self.runs.values() if is_live(r.status)}

    def done(self) -> bool:
        return not any(is_live(r.status) or r.in_flight for r in self.runs.values())

    # ------------------------------------------------------------------ decisions
    def grant_for(self, run_id: int) -> Grant | RunStatus | None:
        """A ``Grant`` if ``run_id`` trains next, its final status if it is over, else None
        (wait: another run goes first or no executor is free)."""
        row = self.runs[run_id]
        if not is_live(row.status):
            return row.status
        free = [i for i, b in enumerate(self.busy) if not b]
        if row.in_flight or not free:
            return None
        live = self.live()
        candidates = {
            rid: chunks
            for rid, chunks in live.items()
            if not self.runs[rid].in_flight and self.pruner.may_advance(rid, chunks, live)
        }
        if next_run(candidates) != run_id:
            return None
        # Stay on the executor that holds the adapter when it is free.
        executor = row.executor if row.executor in free else free[0]
        _, chunk_end = row.plan.chunk_bounds(row.chunks_done)
        end = chunk_end
        if self.max_slice_steps:
            end = min(end, row.steps_done + self.max_slice_steps)
        if row.status is RunStatus.PENDING:
            self.set_status(run_id, RunStatus.RUNNING)
        row.in_flight, row.executor = True, executor
        self.busy[executor] = True
        return Grant(run_id, executor, end, evaluate=self.has_eval and end == chunk_end)

    def on_result(
        self,
        run_id: int,
        end_step: int,
        step_metrics: list[dict[str, float]],
        eval_metrics: dict[str, float] | None,
    ) -> tuple[tuple[int, dict[str, float]] | None, set[int]]:
        """Apply a finished slice. Returns (closed chunk and its metrics, or None; pruned runs).

        A chunk's metrics are the means of its step metrics (``loss`` as ``train_loss``) plus
        the eval metrics of its last slice; the pruner's metric is looked up among them.
        """
        row = self._release(run_id)
        row.steps_done = end_step
        row.chunk_steps.extend(step_metrics)
        closed = None
        if row.plan.chunks_done(end_step) > row.chunks_done:
            row.chunks_done += 1
            metrics = _chunk_means(row.chunk_steps)
            metrics.update(eval_metrics or {})
            value = metrics.get(self.pruner.metric or "train_loss")
            self.pruner.record(run_id, row.chunks_done, value)
            row.last_metric = value
            if value is not None and math.isfinite(value):
                better = row.best_metric is None or (
                    value > row.best_metric
                    if self.pruner.mode == "max"
                    else value < row.best_metric
                )
                row.best_metric = value if better else row.best_metric
            closed = (row.chunks_done, metrics)
            row.chunk_steps = []
        if row.steps_done >= row.plan.total_steps and is_live(row.status):
            self.set_status(run_id, RunStatus.COMPLETED)
        pruned = set()
        for rid in sorted(self.pruner.decide(self.live())):
            self.set_status(rid, RunStatus.PRUNED)
            self.runs[rid].pruned_at = self.runs[rid].chunks_done
            pruned.add(rid)
        return closed, pruned

    def on_failure(self, run_id: int, error: str) -> set[int]:
        """Mark a run failed; the others go on. Returns runs pruned as a consequence."""
        row = self._release(run_id)
        row.error = error
        if is_live(row.status):
            self.set_status(run_id, RunStatus.FAILED)
        pruned = set()
        # A failed run leaves its rung: a synchronous rung may now be complete.
        for rid in sorted(self.pruner.decide(self.live())):
            self.set_status(rid, RunStatus.PRUNED)
            self.runs[rid].pruned_at = self.runs[rid].chunks_done
            pruned.add(rid)
        return pruned

    def _release(self, run_id: int) -> RunRow:
        row = self.runs[run_id]
        if row.in_flight and row.executor is not None:
            self.busy[row.executor] = False
        row.in_flight = False
        return row

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "run_id": r.run_id,
                "status": r.status.value,
                "chunks_done": r.chunks_done,
                "total_chunks": r.plan.total_chunks,
                "steps_done": r.steps_done,
                "total_steps": r.plan.total_steps,
                "last_metric": r.last_metric,
                "best_metric": r.best_metric,
                "pruned_at": r.pruned_at,
                "error": r.error,
            }
            for r in sorted(self.runs.values(), key=lambda r: r.run_id)
        ]


def _chunk_means(steps: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for m in steps:
        for k, v in m.items():
            if k not in ("step", "learning_rate"):
                sums.setdefault("train_loss" if k == "loss" else k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


class SchedulerActor:
    """Async Ray shell over ``SchedulerCore`` that also writes every change to the store.

    Created by the driver as a named actor (``rf_ray:<experiment>`` in namespace ``rf_ray``) so
    that other processes can find a running experiment.
    """

    def __init__(
        self,
        experiment_dir: str,
        pruner: dict[str, Any],
        num_executors: int,
        has_eval: bool,
        max_slice_steps: int | None,
    ) -> None:
        from actors.store import Store

        self.store = Store(experiment_dir)
        self.core = SchedulerCore(
            pruner_from_dict(pruner), num_executors, has_eval, max_slice_steps
        )
        self._cond: asyncio.Condition | None = None

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:  # must be created inside the actor's event loop
            self._cond = asyncio.Condition()
        return self._cond

    async def add_runs(self, plans: dict[int, dict[str, Any]]) -> None:
        for run_id, plan in plans.items():
            self.core.add_run(int(run_id), ChunkPlan.from_dict(plan))
        async with self.cond:
            self.cond.notify_all()

    async def request_slice(self, run_id: int) -> dict[str, Any]:
        """Wait until ``run_id`` may train; return the grant, or ``{"exit": status}``."""
        async with self.cond:
            while True:
                decision = self.core.grant_for(run_id)
                if isinstance(decision, Grant):
                    self.store.update_run(run_id, status=self.core.runs[run_id].status.value)
                    return {"grant": decision.__dict__}
                if isinstance(decision, RunStatus):
                    row = self.core.runs[run_id]
                    return {"exit": decision.value, "pruned_at": row.pruned_at}
                await self.cond.wait()

    async def report(
        self,
        run_id: int,
        end_step: int,
        step_metrics: list[dict[str, float]],
        eval_metrics: dict[str, float] | None,
        extra_chunk_metrics: dict[str, float],
        checkpoint: str | None,
    ) -> dict[str, Any]:
        async with self.cond:
            closed, pruned = self.core.on_result(run_id, end_step, step_metrics, eval_metrics)
            row = self.core.runs[run_id]
            chunk = None
            if closed is not None:
                chunk = (closed[0], {**closed[1], **extra_chunk_metrics})
            self.store.record_slice(
                run_id,
                step_metrics,
                chunk,
                status=row.status.value,
                steps_done=row.steps_done,
                chunks_done=row.chunks_done,
                checkpoint=checkpoint,
                last_metric=row.last_metric,
                best_metric=row.best_metric,
            )
            self._write_pruned(pruned)
            self.cond.notify_all()
            return {"status": row.status.value, "chunk": chunk}

    async def report_failure(self, run_id: int, error: str) -> None:
        async with self.cond:
            pruned = self.core.on_failure(run_id, error)
            self.store.update_run(run_id, status=RunStatus.FAILED.value, error=error)
            self._write_pruned(pruned)
            self.cond.notify_all()

    def _write_pruned(self, pruned: set[int]) -> None:
        for rid in pruned:
            r = self.core.runs[rid]
            self.store.update_run(rid, status=r.status.value, pruned_at=r.pruned_at)

    async def snapshot(self) -> list[dict[str, Any]]:
        return self.core.snapshot()

    async def done(self) -> bool:
        return self.core.done()

    async def pruner_state(self) -> dict[str, Any]:
        return self.core.pruner.to_dict()
