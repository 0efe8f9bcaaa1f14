"""What a run generated at its last chunk end: read back for ``rf-ray samples``
(``rf_ray/cli/samples.py``), ``rf-ray status`` and the live view.

Runs with ``eval_metrics_fn`` keep their last chunk's eval prompts, references and generations
in ``runs/<id>/samples.json`` (``actors.engine.gen_eval``); this reads that file only, so it is safe
while the experiment trains. ``generation_metrics`` gives ``rf-ray status`` and the live view
the runs' last generation metrics from the same files.
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

from actors.engine.gen_eval import read_samples
from actors.storage.layout import ExperimentDir

MAX_COLUMNS = 2
"""At most this many generation metrics get a column in status and the live view."""


def generation_metrics(exp_dir: Path, run_ids: list[int]) -> dict[int, dict[str, float]]:
    """Each run's generation metrics at its last chunk end (runs without samples left out)."""
    out = {}
    for run_id in run_ids:
        try:
            record = read_samples(ExperimentDir(exp_dir).run(run_id).path)
        except (OSError, ValueError):  # being replaced right now, or unreadable: skip it
            continue
        if record is not None:
            names = record.get("metric_names", [])
            out[run_id] = {k: v for k, v in record.get("metrics", {}).items() if k in names}
    return out


def metric_columns(metrics: dict[int, dict[str, float]], skip: str | None = None) -> list[str]:
    """The generation metrics to show as columns (``skip``: already shown, e.g. the pruner's)."""
    names = sorted({k for m in metrics.values() for k in m} - {skip})
    return names[:MAX_COLUMNS]


def side_by_side(record: dict[str, Any], width: int = 100, limit: int | None = None) -> str:
    """The samples as three wrapped columns: prompt | reference | generation."""
    column = max((width - 6) // 3, 10)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.get("metrics", {}).items()))
    lines = [f"run {record.get('run_id')} at step {record.get('step')}: {metrics or 'no metrics'}"]
    rule = "-+-".join("-" * column for _ in range(3))
    lines += [rule, " | ".join(h.ljust(column) for h in ("prompt", "reference", "generation"))]
    for sample in record.get("samples", [])[:limit]:
        lines.append(rule)
        cells = [
            textwrap.wrap(sample.get(key, ""), column) or [""]
            for key in ("prompt", "reference", "generation")
        ]
        for parts in itertools.zip_longest(*cells, fillvalue=""):
            lines.append(" | ".join(p.ljust(column) for p in parts).rstrip())
    return "\n".join(lines)
