"""Start-up breakdown, busy fraction and slice overhead of one rf-ray ``run_fit``, from the
executors' timelines (``actors.engine.timeline``, in ``Experiment.stats()``).

* start-up: seconds from ``run_fit``'s call to Ray being up (measured by the caller), the first
  executor's base model being resident, the first slice starting, and every run placed on an
  executor (its trial up and asking);
* busy fraction: the executors' slice time (checkpoint capture included) over the ``run_fit``
  wall time, and in steady state: from every run placed to the last slice's end;
* slice overhead: the share of time-sliced slices' time not spent in forward, backward and
  optimizer steps (batch collation, adapter switch, evaluation, checkpoint capture); fused
  passes are left out (their compute is not timed separately).
"""

from __future__ import annotations

from typing import Any


def engine_figures(stats: dict[str, Any], fit_start: float, fit_end: float) -> dict[str, Any]:
    timelines = [e["timeline"] for e in stats.get("executors", []) if "timeline" in e]
    slices = [s for t in timelines for s in t["slices"]]
    if not slices:
        return {}
    loaded = [t["base_loaded_at"] for t in timelines if t["base_loaded_at"]]
    added = [a for t in timelines for a in t["added_at"].values()]
    first = min(s["started_at"] for s in slices)
    last = max(s["ended_at"] for s in slices)
    all_up = max(added) if added else first
    n = len(timelines)
    busy = sum(s["ended_at"] - s["started_at"] for s in slices)
    steady = sum(
        max(0.0, s["ended_at"] - max(s["started_at"], all_up)) for s in slices
    )  # the part of each slice after every run was placed
    timed = [s for s in slices if s["compute_seconds"] is not None]
    timed_total = sum(s["ended_at"] - s["started_at"] for s in timed)
    return {
        "executor_created_s": min(t["created_at"] for t in timelines) - fit_start,
        "executor_ready_s": (min(loaded) - fit_start) if loaded else None,
        "first_slice_start_s": first - fit_start,
        "first_slice_end_s": min(s["ended_at"] for s in slices) - fit_start,
        "all_trials_up_s": all_up - fit_start,
        "busy_fraction_whole": busy / max((fit_end - fit_start) * n, 1e-9),
        "busy_fraction_steady": steady / max((last - all_up) * n, 1e-9) if last > all_up else None,
        "slice_overhead": (1 - sum(s["compute_seconds"] for s in timed) / timed_total)
        if timed_total
        else None,
        "slices": len(slices),
        "fused_passes": len(slices) - len(timed),
        "checkpoint_queue_peak_mib": max(
            (e.get("checkpoint_queue_peak_mib") or 0.0 for e in stats["executors"]), default=0.0
        ),
    }
