"""``rf-ray samples``: read what a run generated at its last chunk end, side by side.

    rf-ray samples sft-gen 3                 prompts, references and generations of run 3
    rf-ray samples sft-gen 3 --limit 5 --width 120
    rf-ray samples sft-gen 3 --json          the stored record as JSON

Runs with ``eval_metrics_fn`` keep their last chunk's eval prompts, references and generations
in ``runs/<id>/samples.json`` (``actors.gen_eval``); this reads that file only, so it is safe
while the experiment trains. ``generation_metrics`` gives ``rf-ray status`` and the live view
the runs' last generation metrics from the same files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

from actors.gen_eval import SAMPLES_FILE, read_samples
from actors.store import Store
from policies.errors import ConfigError
from rf_ray.cli import Command, register
from rf_ray.experiment import DEFAULT_ROOT

MAX_COLUMNS = 2
"""At most this many generation metrics get a column in status and the live view."""


def generation_metrics(exp_dir: Path, run_ids: list[int]) -> dict[int, dict[str, float]]:
    """Each run's generation metrics at its last chunk end (runs without samples left out)."""
    out = {}
    for run_id in run_ids:
        try:
            record = read_samples(Path(exp_dir) / "runs" / str(run_id))
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


def _add_samples(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name")
    p.add_argument("run_id", type=int, help="run id (see rf-ray status)")
    p.add_argument("--path", default=DEFAULT_ROOT, help="experiments root")
    p.add_argument("--limit", type=int, default=None, help="show at most this many samples")
    p.add_argument("--width", type=int, default=120, help="line width (default 120)")
    p.add_argument("--json", action="store_true", help="print the stored record as JSON")


def cmd_samples(args: argparse.Namespace) -> int:
    exp_dir = Path(args.path) / args.experiment
    if not Store.exists(exp_dir):
        raise ConfigError(f"no experiment {args.experiment!r} under {Path(args.path).resolve()}")
    run_dir = exp_dir / "runs" / str(args.run_id)
    record = read_samples(run_dir)
    if record is None:
        raise ConfigError(
            f"run {args.run_id} of {args.experiment!r} has no {SAMPLES_FILE} yet: it is kept at "
            "each chunk end by runs with RFModelConfig(eval_metrics_fn=...) and an eval_dataset"
        )
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(side_by_side(record, args.width, args.limit))
    return 0


register(
    Command("samples", "show a run's last prompts, references and generations", _add_samples,
            cmd_samples)
)  # fmt: skip
