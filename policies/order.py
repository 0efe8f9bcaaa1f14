"""Slice order: which live run gets the executor next.

Least progress first, ties broken by the smaller run id. That one rule is enough: every run
reaches a rung together, so the first comparison of all N configurations arrives after one chunk
each, and the pruner never waits on a straggler that the scheduler starved.
"""

from __future__ import annotations

from collections.abc import Mapping


def next_run(candidates: Mapping[int, int]) -> int | None:
    """The run to train next, or None when there is none.

    Args:
        candidates: run id -> chunks done, for the live runs that are free to train now (the
            caller has already left out runs a pruner holds at a rung).
    """
    if not candidates:
        return None
    return min(candidates, key=lambda run_id: (candidates[run_id], run_id))


__all__ = ["next_run"]
