"""The scheduler: grants slices of executor time to runs and applies the pruning policy.

``SchedulerCore`` is a plain object holding the run table; it asks ``policies`` for every
decision (slice order, pruning, status transitions) and is testable without Ray.
``SchedulerActor`` is the async Ray shell: trials await ``request_slice`` until they are granted
a slice (or told to stop), then ``report`` its outcome; every change is written to the store.

Slice order is least-progress-first across live runs (``policies.order.next_run``), so all runs
reach a rung together and the first comparison of all configs comes after one chunk each.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from actors.messages import Grant, RunEntry
from policies.errors import IllegalTransitionError, OpError
from policies.fusion import Candidate, FusionPolicy, form_group
from policies.order import next_run
from policies.pruning import Pruner
from policies.settings import ExperimentSettings
from policies.state import OPS, FailedBy, RunStatus, is_live, transition

logger = logging.getLogger(__name__)


MAX_CHARGED_DEATHS = 2
"""Executor deaths charged to one run, with no slice of it recorded in between, before the run
fails. A death is charged to the run whose call was in flight; the run's next recorded slice
clears its charges. So a run whose slice kills the executor each time it is re-run fails at the
second try, while deaths that only happened to fall during its slices at different points (a
kill from outside, host memory taken by another process) never add up against it."""

MAX_TRIAL_RESTARTS = 2
"""New trials started for one run whose trial process died (killed, out of host memory, a call
of its own that failed in transit) with no slice of it recorded in between; the next death fails
the run. As with executor deaths, the run's next recorded slice clears the count, so deaths that
fall far apart in a long sweep never add up against it."""


@dataclass
class RunRow(RunEntry):
    """The scheduler's one record of one run: the run's ``RunEntry`` (what it trains and its
    progress, kept current here) plus what only the scheduler tracks while it runs. There is no
    second table beside it, and no field of the entry copied into it."""

    in_flight: bool = False
    executor: int | None = None
    group: tuple[int, ...] = ()
    """The runs of its grant in flight (itself included; more than one: a fused pass)."""
    alone_after: tuple[int, ...] = ()
    """Set to the runs of a fused pass it was in that hung or lost its executor (whose code
    did it is not known): the run is time-sliced until its next recorded slice (``on_lost``).
    Empty: it may fuse."""
    trial_restarts: int = 0
    """Trials restarted for this run since its last recorded slice, in this session (see
    ``on_trial_lost``)."""
    trial: int = 0
    """Which of the run's trials is its current one (counts up as trials are started): only
    the current trial is granted slices. A dead trial's request can still be waiting in the
    scheduler (Ray runs an actor call to its end even when the caller died); granting it would
    leave the run in flight forever and its executor busy."""

    @classmethod
    def of(cls, entry: RunEntry) -> RunRow:
        """The row of a registered run (its own copy of the entry's fields)."""
        row = cls(**{f.name: getattr(entry, f.name) for f in dataclasses.fields(RunEntry)})
        row.chunk_steps = list(entry.chunk_steps)
        return row


class SchedulerCore:
    """Run table + policies; no Ray, no I/O."""

    def __init__(
        self,
        pruner: Pruner,
        num_executors: int = 1,
        has_eval: bool = False,
        max_slice_steps: int | None = None,
        fusion: FusionPolicy | None = None,
        deadline_s: float | None = None,
    ) -> None:
        self.pruner = pruner
        self.deadline_s = deadline_s
        """Wall-clock bound of every slice granted (the experiment's ``slice_timeout``)."""
        self.has_eval = has_eval
        self.max_slice_steps = max_slice_steps
        self.fusion = fusion
        """Admission rule for fused groups; ``None`` time-slices every run."""
        self.busy = [0] * num_executors
        """Runs in flight per executor (a fused group counts each of its runs)."""
        self.pending: dict[int, Grant] = {}
        """Grants made to a group's members, until their trials pick them up."""
        self.granted_any = False
        """Whether any slice was granted yet (start-up: the first trial up goes first)."""
        self.trials_up: set[int] = set()
        """Runs whose trial is up (it has asked for a slice and not been sent away): only these
        join a fused group, so a group never waits for a trial that is still starting."""
        self.runs: dict[int, RunRow] = {}
        self.holds: set[str] = set()
        """Tokens of drivers that may still add runs (a Tune search): the experiment stays open
        while any is held, even with no live run."""
        self.pruning_error: str | None = None
        """Why pruning stopped (a chunk lacked the pruner's metric), or None while it runs."""

    @classmethod
    def of(cls, settings: ExperimentSettings, pruner: Pruner, num_executors: int) -> SchedulerCore:
        """The core of an experiment with ``settings``; ``pruner`` carries its recorded state
        (fresh, or read back from the store on resume)."""
        return cls(
            pruner,
            num_executors,
            has_eval=settings.has_eval,
            max_slice_steps=settings.max_slice_steps,
            fusion=settings.fusion,
            deadline_s=settings.slice_timeout,
        )

    # ------------------------------------------------------------------ run table
    def add_run(self, entry: RunEntry) -> RunRow:
        """Register a run, possibly with progress (a resumed experiment, a warm clone)."""
        if entry.run_id in self.runs:
            raise OpError(f"run {entry.run_id} is already registered; run ids are never reused")
        row = self.runs[entry.run_id] = RunRow.of(entry)
        return row

    def set_status(self, run_id: int, status: RunStatus) -> None:
        row = self.runs[run_id]
        row.status = transition(row.status, status, run_id, row.failed_by)

    def live(self) -> dict[int, int]:
        return {r.run_id: r.chunks_done for r in self.runs.values() if is_live(r.status)}

    def done(self) -> bool:
        if self.holds:
            return False
        return not any(is_live(r.status) or r.in_flight for r in self.runs.values())

    # ------------------------------------------------------------------ decisions
    def grant_for(self, run_id: int) -> Grant | RunStatus | None:
        """A ``Grant`` if ``run_id`` trains next, its final status if it is over, else None
        (wait: another run goes first or no executor is free)."""
        decision = self._decide(run_id)
        if isinstance(decision, RunStatus):
            self.trials_up.discard(run_id)  # its trial ends; a resume starts a new one
        else:
            self.trials_up.add(run_id)
        return decision

    def _decide(self, run_id: int) -> Grant | RunStatus | None:
        if run_id in self.pending:  # granted as a member of another run's fused group
            return self.pending.pop(run_id)
        row = self.runs[run_id]
        if not is_live(row.status):
            return row.status
        if not row.exclusive:
            return self._grant_beside(row)
        free = [i for i, b in enumerate(self.busy) if not b]
        if row.in_flight or not free:
            return None
        live = self.live()
        # Start-up, time-sliced: until the first grant, only runs whose trial is up (has asked)
        # compete, so the first trial up trains at once instead of waiting for a lower-numbered
        # run's trial to start. From then on least progress first over every live run, as the
        # design says. A run that may fuse waits for the least-progressed one from the start,
        # so the group forms whole (a fused pass of N runs costs little more than one slice).
        up_only = not self.granted_any and (self.fusion is None or row.fusion_key is None)
        candidates = {
            rid: chunks
            for rid, chunks in live.items()
            if not self.runs[rid].in_flight
            and self.runs[rid].exclusive
            and (not up_only or rid == run_id or rid in self.trials_up)
            and (self.pruning_error is not None or self.pruner.may_advance(rid, chunks, live))
        }
        executor = self._executor_for(run_id, free, candidates)
        if executor is None:
            return None
        group = self._group_for(row, executor, candidates)
        grants = [self._grant(self.runs[rid], executor, tuple(group)) for rid in group]
        for grant in grants[1:]:
            self.pending[grant.run_id] = grant
        return grants[0]

    def _grant_beside(self, row: RunRow) -> Grant | None:
        """A run that does not occupy its executor (an evals API pipeline) goes as soon as the
        pruner lets it: it neither waits for the executor nor holds up the runs that do."""
        held = self.pruning_error is None and not self.pruner.may_advance(
            row.run_id, row.chunks_done, self.live()
        )  # once pruning stopped (``pruning_error``), no rung holds a run back
        if row.in_flight or held:
            return None
        return self._grant(row, row.executor or 0, (row.run_id,))

    def _grant(self, row: RunRow, executor: int, group: tuple[int, ...]) -> Grant:
        _, chunk_end = row.plan.chunk_bounds(row.chunks_done)
        end = chunk_end
        if self.max_slice_steps:
            end = min(end, row.steps_done + self.max_slice_steps)
        if row.status is RunStatus.PENDING:
            self.set_status(row.run_id, RunStatus.RUNNING)
        row.in_flight, row.executor, row.group = True, executor, group
        if row.exclusive:
            self.busy[executor] += 1
            self.granted_any = True
        evaluate = self.has_eval and end == chunk_end
        return Grant(
            row.run_id, executor, end, evaluate, group, row.steps_done, self.deadline_s,
            chunk=row.chunks_done + 1,
        )  # fmt: skip

    def _group_for(self, leader: RunRow, executor: int, candidates: dict[int, int]) -> list[int]:
        """The leader and the runs that share its fused pass (``policies.fusion``)."""
        if self.fusion is None or leader.fusion_key is None or leader.alone_after:
            return [leader.run_id]
        others = [
            _candidate(self.runs[rid])
            for rid in candidates
            if rid != leader.run_id
            and rid in self.trials_up
            and not self.runs[rid].alone_after
            and self.runs[rid].executor in (None, executor)
        ]
        return form_group(_candidate(leader), others, self.fusion)

    def on_fusion_oom(self, group_tokens: int) -> None:
        """A fused pass of ``group_tokens`` ran out of memory: halve the token budget below it."""
        if self.fusion is not None:
            budget = max(1, min(self.fusion.max_tokens, group_tokens // 2))
            self.fusion = FusionPolicy(self.fusion.max_runs, budget)

    def _executor_for(self, run_id: int, free: list[int], candidates: dict[int, int]) -> int | None:
        """The free executor on which ``run_id`` trains next, if any.

        Each free executor, in turn, takes the least-progressed candidate among the runs it holds
        (or that no executor holds yet). A run stays where its adapter and optimizer state live;
        an executor that would otherwise idle takes a run whose own executor is busy: moving costs
        one reload from the run's checkpoint, idling costs a whole slice.
        """
        pool = dict(candidates)
        for executor in free:
            own = {r: c for r, c in pool.items() if self.runs[r].executor in (None, executor)}
            movable = {r: c for r, c in pool.items() if self.runs[r].executor not in free}
            chosen = next_run(own) if own else next_run(movable)
            if chosen == run_id:
                return executor
            if chosen is not None:
                del pool[chosen]  # spoken for by this executor
        return None

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
        chunks_before = row.chunks_done
        row.steps_done = end_step
        # The slice went through: earlier executor or trial deaths were not this slice's doing,
        # and a run re-run alone after a lost fused pass may fuse again.
        row.failures = row.trial_restarts = 0
        row.alone_after = ()
        row.chunk_steps.extend(step_metrics)
        closed = None
        if row.chunks_done > chunks_before:
            metrics = chunk_metrics(row.chunk_steps, eval_metrics)
            value = self._metric_of(run_id, row.chunks_done, metrics)
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
        return closed, self.apply_pruner()

    def _metric_of(self, run_id: int, chunk: int, metrics: dict[str, float]) -> float | None:
        """The pruner's metric among a closed chunk's metrics, recorded with the pruner. The
        first chunk without it stops pruning for good (``pruning_error``): a value that no run
        reports is never pruned on, and the runs go on unpruned."""
        metric = self.pruner.metric or "train_loss"
        value = metrics.get(metric)
        if value is None and self.pruning_error is None:
            self.pruning_error = (
                f"pruning stopped: chunk {chunk} of run {run_id} has no {metric!r}, the "
                f"pruner's metric; the runs report {', '.join(sorted(metrics)) or 'nothing'}. "
                "The runs go on unpruned. Name one of these as the pruner's metric (e.g. "
                f"SuccessiveHalving(metric=...)), or have every run report {metric!r}"
            )
            logger.warning("%s", self.pruning_error)
        if self.pruning_error is None:
            # ``observe`` records the metric's value; a pruner that needs more of the chunk's
            # metrics (an interval's bounds: ``IntervalPruner``) reads them there.
            self.pruner.observe(run_id, chunk, metrics)
        return value

    def apply_pruner(self) -> set[int]:
        """Ask the pruner which live runs to stop now and mark them pruned (none once pruning
        stopped: see ``_metric_of``)."""
        if self.pruning_error is not None:
            return set()
        pruned = set()
        for rid in sorted(self.pruner.decide(self.live())):
            self.set_status(rid, RunStatus.PRUNED)
            self.runs[rid].pruned_at = self.runs[rid].chunks_done
            pruned.add(rid)
        return pruned

    def on_failure(self, run_id: int, error: str, failed_by: FailedBy = FailedBy.RUN) -> set[int]:
        """Mark a run failed, by its own code or by the infrastructure (then ``resume`` may
        continue it); the others go on. Returns runs pruned as a consequence."""
        row = self._release(run_id)
        row.error = error
        if row.alone_after:
            row.error += (
                f" (this slice ran alone after the fused pass of runs {list(row.alone_after)} "
                "did not finish: the fault is this run's own)"
            )
        if is_live(row.status):
            self.set_status(run_id, RunStatus.FAILED)
            row.failed_by = FailedBy(failed_by)
        # A failed run leaves its rung: a synchronous rung may now be complete.
        return self.apply_pruner()

    def on_lost(self, run_id: int, error: str | None = None) -> set[int] | None:
        """The run's executor died (or was restarted past the slice deadline) before its slice
        finished: hand the grant back (the slice is re-run from the run's last durable
        checkpoint). ``error``: the death happened while this run's call was in flight.

        A time-sliced run is charged with it; at the ``MAX_CHARGED_DEATHS``-th charge with no
        slice recorded in between the run fails (returns the runs pruned as a consequence, as
        ``on_failure`` does; ``None`` while the run goes on). A run of a fused pass is not
        charged: any member's code may have hung or killed the pass. It re-runs its slice
        alone (time-sliced), where a hang or a death is its own and charged as above, so the
        culprit fails and the others go on (they fuse again after that slice)."""
        group = self.runs[run_id].group
        row = self._release(run_id)
        if error is None or not is_live(row.status):
            return None
        if len(group) > 1:
            row.alone_after = group
            return None
        row.failures += 1
        if row.failures < MAX_CHARGED_DEATHS:
            return None
        return self.on_failure(
            run_id,
            f"the executor process died {_times(row.failures)} while this run's slice was in "
            f"flight, with no slice of it completing in between: {error}",
        )

    def on_trial_lost(self, run_id: int, error: str) -> tuple[bool, set[int]]:
        """The run's trial process died. Hands back the run's grant (the executor finishes or
        has finished the slice; a new trial's identical grant finds the result). Returns
        (start a new trial?, runs pruned as a consequence): a live run with restarts left gets
        a new trial; at the death after ``MAX_TRIAL_RESTARTS`` restarts it fails."""
        row = self._release(run_id)
        if not is_live(row.status):
            return False, set()
        if row.trial_restarts < MAX_TRIAL_RESTARTS:
            row.trial_restarts += 1
            return True, set()
        pruned = self.on_failure(
            run_id,
            f"the run's trial actor died {row.trial_restarts + 1} times (restarted "
            f"{row.trial_restarts} times); last: {error}",
        )
        return False, pruned

    # ------------------------------------------------------------------ interactive control
    def apply_op(self, op: str, run_id: int) -> set[int]:
        """Apply ``stop``, ``resume``, ``delete`` or ``prune`` to a run.

        Raises ``OpError`` (nothing changed) for an unknown run or an op its status forbids.
        A run in flight finishes its slice first: the op takes effect at the slice boundary.
        Returns runs the pruner stopped as a consequence (a rung may have become complete).
        """
        targets = OPS
        if op not in targets:
            raise OpError(f"unknown op {op!r}; ops are: {', '.join(targets)}, clone_modify")
        row = self.row_for_op(run_id)
        if op == "resume" and row.status is RunStatus.DELETED:
            raise OpError(f"run {run_id} is deleted; a deleted run cannot be resumed")
        if op == "resume" and row.steps_done >= row.plan.total_steps:
            raise OpError(f"run {run_id} has already trained all its {row.plan.total_steps} steps")
        try:
            self.set_status(run_id, targets[op])
        except IllegalTransitionError as e:
            raise OpError(f"cannot {op} run {run_id}: {e}") from e
        if op == "prune":
            row.pruned_at = row.chunks_done
        if op == "resume":
            row.pruned_at = None
            row.error = row.failed_by = None  # a run failed by the infrastructure goes on
        return self.apply_pruner()

    def row_for_op(self, run_id: int) -> RunRow:
        row = self.runs.get(run_id)
        if row is None:
            known = ", ".join(str(r) for r in sorted(self.runs)) or "none"
            raise OpError(f"run {run_id!r} does not exist in this experiment (runs: {known})")
        return row

    def _release(self, run_id: int) -> RunRow:
        row = self.runs[run_id]
        if row.in_flight and row.executor is not None and row.exclusive:
            self.busy[row.executor] -= 1
        row.in_flight, row.group = False, ()
        self.pending.pop(run_id, None)
        return row

    def snapshot(self) -> list[dict[str, Any]]:
        """Every run's progress (its store columns), sizes and whether it is in flight."""
        return [
            {
                "run_id": r.run_id,
                **r.columns(),
                "total_chunks": r.plan.total_chunks,
                "total_steps": r.plan.total_steps,
                "in_flight": r.in_flight,
            }
            for r in sorted(self.runs.values(), key=lambda r: r.run_id)
        ]


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


def _candidate(row: RunRow) -> Candidate:
    return Candidate(row.run_id, row.fusion_key, row.fusion_tokens, row.chunks_done, row.steps_done)


def chunk_metrics(
    steps: list[dict[str, float]], eval_metrics: dict[str, float] | None
) -> dict[str, float]:
    """A closed chunk's metrics: the means of its step metrics (``loss`` as ``train_loss``;
    ``step`` and ``learning_rate`` left out) and the eval metrics of its last slice. The
    pruner's metric is one of them (``rf_ray.metric_names`` says which a run reports)."""
    sums: dict[str, list[float]] = {}
    for m in steps:
        for k, v in m.items():
            if k not in ("step", "learning_rate"):
                sums.setdefault("train_loss" if k == "loss" else k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()} | dict(eval_metrics or {})
