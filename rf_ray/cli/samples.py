"""``rf-ray samples``: a run's last chunk-end prompts, references and generations, side by side.

    rf-ray samples sft-gen 3                 prompts, references and generations of run 3
    rf-ray samples sft-gen 3 --limit 5 --width 120
    rf-ray samples sft-gen 3 --json          the stored record as JSON

It reads ``runs/<id>/samples.json`` only (``rf_ray.samples``), so it is safe while the experiment
trains.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from actors.engine.gen_eval import read_samples
from actors.storage.layout import SAMPLES_FILE, ExperimentDir
from actors.storage.store import Store
from actors.storage.trust import check_trusted
from policies.errors import ConfigError
from rf_ray.cli.status import add_trust
from rf_ray.experiment import DEFAULT_ROOT
from rf_ray.samples import side_by_side


def add_samples(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name")
    p.add_argument("run_id", type=int, help="run id (see rf-ray status)")
    p.add_argument("--path", default=DEFAULT_ROOT, help="experiments root")
    p.add_argument("--limit", type=int, default=None, help="show at most this many samples")
    p.add_argument("--width", type=int, default=120, help="line width (default 120)")
    p.add_argument("--json", action="store_true", help="print the stored record as JSON")
    add_trust(p)


def cmd_samples(args: argparse.Namespace) -> int:
    exp_dir = Path(args.path) / args.experiment
    check_trusted(exp_dir, args.trust)  # another user's directory: say whose, first
    if not Store.exists(exp_dir):
        raise ConfigError(f"no experiment {args.experiment!r} under {Path(args.path).resolve()}")
    record = read_samples(ExperimentDir(exp_dir).run(args.run_id).path)
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
