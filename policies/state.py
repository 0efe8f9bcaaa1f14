"""The run state machine: one ``Enum`` of statuses and one guarded ``transition()``.

Every status change of a run goes through :func:`transition`, which checks it against
:data:`ALLOWED_TRANSITIONS` and raises :class:`~policies.errors.IllegalTransitionError` on a move
the table forbids (the httpx ``_client.py`` pattern). Nothing here stores state; the caller keeps
each run's status keyed by run id.

    PENDING ──> RUNNING ──> COMPLETED ──┐
       │          │  ^                   │
       │          v  │                   v
       ├──────> STOPPED / PRUNED ─────> DELETED
       └──────> FAILED ─────────────────^
                  │
                  └──> RUNNING   only a run failed by the infrastructure (``FailedBy``)

A run fails by its own code (an exception, a NaN loss, a hung function: it would fail again)
or by the infrastructure (a checkpoint that could not be written or read back: a full disk, a
read-only file system, a damaged file). Only the second may be resumed, once the cause is gone.
"""

from __future__ import annotations

from enum import Enum

from policies.errors import IllegalTransitionError


class RunStatus(str, Enum):
    """The life cycle of one run (one LoRA configuration)."""

    PENDING = "pending"
    """Created, not trained yet."""
    RUNNING = "running"
    """Live: schedulable, or being trained right now."""
    STOPPED = "stopped"
    """Paused by a user; keeps its checkpoint and can be resumed."""
    PRUNED = "pruned"
    """Stopped by the pruner; keeps its checkpoint and can be resumed."""
    COMPLETED = "completed"
    """Trained through all of its chunks."""
    FAILED = "failed"
    """A slice raised, ran out of memory or produced a NaN/inf loss."""
    DELETED = "deleted"
    """Removed by a user; its adapter is gone."""


ALLOWED_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset(
        {
            RunStatus.RUNNING,
            RunStatus.STOPPED,
            RunStatus.PRUNED,
            RunStatus.FAILED,
            RunStatus.DELETED,
            # A run whose plan has nothing left to train (e.g. a clone made at the end).
            RunStatus.COMPLETED,
        }
    ),
    RunStatus.RUNNING: frozenset(
        {
            RunStatus.STOPPED,
            RunStatus.PRUNED,
            RunStatus.COMPLETED,
            RunStatus.FAILED,
            RunStatus.DELETED,
        }
    ),
    RunStatus.STOPPED: frozenset({RunStatus.RUNNING, RunStatus.DELETED}),
    RunStatus.PRUNED: frozenset({RunStatus.RUNNING, RunStatus.DELETED}),
    RunStatus.COMPLETED: frozenset({RunStatus.DELETED}),
    RunStatus.FAILED: frozenset({RunStatus.DELETED}),
    RunStatus.DELETED: frozenset(),
}
"""For each status, the statuses a run may move to next."""

RESUME_FAILED = (RunStatus.FAILED, RunStatus.RUNNING)
"""The one move beyond the table: only for a run failed by the infrastructure (``FailedBy``)."""


class FailedBy(str, Enum):
    """What failed a run: it decides whether ``resume`` may continue it."""

    RUN = "run"
    """Its own code: an exception, a NaN loss, a hung function. It stays failed."""
    INFRASTRUCTURE = "infrastructure"
    """The machine: a checkpoint could not be written or read. Resumable once fixed."""


_LIVE = frozenset({RunStatus.PENDING, RunStatus.RUNNING})
_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.DELETED})


OPS: dict[str, RunStatus] = {
    "stop": RunStatus.STOPPED,
    "resume": RunStatus.RUNNING,
    "delete": RunStatus.DELETED,
    "prune": RunStatus.PRUNED,
}
"""The interactive-control ops that change a run's status, and the status each one sets (the one
table of op names; ``clone_modify`` adds a run instead)."""


def transition(
    current: RunStatus,
    new: RunStatus,
    run_id: int | None = None,
    failed_by: FailedBy | str | None = None,
) -> RunStatus:
    """Return ``new`` if a run may move from ``current`` to it, else raise. ``failed_by``: what
    failed a FAILED run (only one failed by the infrastructure may run again).

    Raises:
        IllegalTransitionError: the table forbids the move; the message names the run, both
            statuses and what is allowed from ``current``.
    """
    current, new = RunStatus(current), RunStatus(new)
    allowed = ALLOWED_TRANSITIONS[current]
    who = "a run" if run_id is None else f"run {run_id}"
    if (current, new) == RESUME_FAILED:
        if failed_by is not None and FailedBy(failed_by) is FailedBy.INFRASTRUCTURE:
            return new
        raise IllegalTransitionError(
            f"{who} failed in its own code, so it cannot run again (it would fail the same way); "
            "fix the code and clone the run (clone_modify, `rf-ray ops clone`), or delete it. "
            "Only a run failed by the infrastructure (a checkpoint that could not be written or "
            "read) can be resumed"
        )
    if new in allowed:
        return new
    options = ", ".join(sorted(s.value for s in allowed)) or "nothing (it is final)"
    raise IllegalTransitionError(
        f"{who} cannot go from {current.value!r} to {new.value!r}; "
        f"from {current.value!r} it may go to: {options}"
    )


def is_live(status: RunStatus) -> bool:
    """True for runs the scheduler may still train (PENDING or RUNNING)."""
    return RunStatus(status) in _LIVE


def is_terminal(status: RunStatus) -> bool:
    """True for runs that will never train again (COMPLETED, FAILED, DELETED)."""
    return RunStatus(status) in _TERMINAL


__all__ = [
    "ALLOWED_TRANSITIONS",
    "OPS",
    "RESUME_FAILED",
    "FailedBy",
    "RunStatus",
    "is_live",
    "is_terminal",
    "transition",
]
