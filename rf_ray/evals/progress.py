"""How an evals experiment reads in ``rf-ray status`` and the live view: a pipeline's progress in
shards (its chunks) and rows (its steps), and its metrics with their confidence intervals.

After each shard the executor records a pipeline's cumulative metrics with their intervals as
the shard's chunk metrics: ``Recall``, ``Recall/lower``, ``Recall/upper``
(``policies.intervals.flat_metrics``). ``EvalsView`` reads the last shard of each pipeline and
writes them as people read them: ``0.583 [0.412, 0.754]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.storage.store import Store
from policies.settings import stored_settings
from rf_ray.evals.store import has_pipeline_spec

Interval = tuple[float, float, float]
"""``(value, lower, upper)``."""
MAX_COLUMNS = 2
"""Metrics with intervals shown beside the others (the pruner's first)."""


def interval_text(interval: Interval | None) -> str:
    if interval is None:
        return "-"
    value, lower, upper = interval
    return f"{value:.3g} [{lower:.3g}, {upper:.3g}]"


def last_intervals(
    chunks: list[tuple[int, int, dict[str, float]]],
) -> dict[int, dict[str, Interval]]:
    """Per run, the metrics of its last recorded shard that have an interval."""
    last: dict[int, dict[str, float]] = {}
    for run_id, _, metrics in chunks:  # ordered by run and chunk: the last one wins
        last[run_id] = metrics
    out: dict[int, dict[str, Interval]] = {}
    for run_id, metrics in last.items():
        out[run_id] = {
            name: (float(value), float(metrics[f"{name}/lower"]), float(metrics[f"{name}/upper"]))
            for name, value in metrics.items()
            if "/" not in name and f"{name}/lower" in metrics and f"{name}/upper" in metrics
            and value is not None and metrics[f"{name}/lower"] is not None
        }  # fmt: skip
    return out


@dataclass
class EvalsView:
    """An evals experiment's runs as ``rf-ray status`` and the live view show them."""

    metric: str | None
    """The pruner's metric, shown first when it has an interval."""
    intervals: dict[int, dict[str, Interval]] = field(default_factory=dict)

    @classmethod
    def of(cls, exp_dir: Path, run_ids: list[int], meta: dict[str, Any],
           chunks: list[tuple[int, int, dict[str, float]]]) -> EvalsView | None:  # fmt: skip
        """The view of the experiment at ``exp_dir``, or None when it is not an evals one."""
        if not any(has_pipeline_spec(exp_dir, rid) for rid in run_ids):
            return None
        pruner = stored_settings(meta).get("pruner") or {}
        return cls(pruner.get("metric"), last_intervals(chunks))

    @classmethod
    def read(cls, exp_dir: Path, run_ids: list[int]) -> EvalsView | None:
        """``of``, reading the store (read-only)."""
        if not any(has_pipeline_spec(exp_dir, rid) for rid in run_ids):
            return None
        with Store(exp_dir, readonly=True) as store:
            return cls.of(exp_dir, run_ids, store.meta(), store.chunk_metrics())

    def columns(self) -> list[str]:
        """Metrics with intervals to show: the pruner's, then others, at most ``MAX_COLUMNS``."""
        names = sorted({n for per_run in self.intervals.values() for n in per_run})
        if self.metric in names:
            names.remove(self.metric)
            names.insert(0, self.metric)
        return names[:MAX_COLUMNS]

    def cell(self, run_id: int, name: str) -> str:
        return interval_text(self.intervals.get(run_id, {}).get(name))

    @staticmethod
    def progress(row: dict[str, Any]) -> str:
        return f"shard {row['chunks_done']}/{row['total_chunks']}"


__all__ = ["EvalsView", "Interval", "interval_text", "last_intervals"]
