"""``rf-ray ops`` and ``rf-ray resume``: steer a running experiment, or restart a stopped one.

    rf-ray ops stop sft-grid 3                     pause run 3 at its next slice boundary
    rf-ray ops resume sft-grid 3                   train it again
    rf-ray ops prune|delete sft-grid 3
    rf-ray ops clone sft-grid 3 learning_rate=1e-4 lora_rank=16 [--warm-start]
    rf-ray resume sft-grid [--path ROOT]           continue after the driver died

``ops`` attaches to the Ray cluster the experiment runs on: ``RAY_ADDRESS`` when set, else
the cluster its driver recorded in the experiment directory (``cluster.json``: so a plain
script's private cluster is reachable too, with Ray's token authentication kept on), else a
``ray start`` head on this machine; it then finds the experiment by its directory. Values on
the command line are parsed as JSON when they can be (``1e-4``, ``16``, ``true``,
``["q_proj","v_proj"]``), else kept as text.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from actors.storage.trust import check_trusted
from policies.errors import ConfigError
from rf_ray.cli.status import add_trust
from rf_ray.experiment import DEFAULT_ROOT


def add_ops(p: argparse.ArgumentParser) -> None:
    p.add_argument("op", choices=["stop", "resume", "delete", "prune", "clone"])
    p.add_argument("experiment", help="experiment name")
    p.add_argument("run_id", type=int, help="run id (see rf-ray status)")
    p.add_argument("changes", nargs="*", help="for clone: knob=value pairs")
    p.add_argument("--warm-start", action="store_true", help="clone: copy the parent's state")
    p.add_argument("--path", default=DEFAULT_ROOT, help="experiments root")
    add_trust(p)


def parse_changes(pairs: list[str]) -> dict[str, Any]:
    """``["learning_rate=1e-4", "lora_rank=16"]`` -> ``{"learning_rate": 1e-4, ...}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected knob=value, got {pair!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def cmd_ops(args: argparse.Namespace) -> int:
    from rf_ray import ops

    exp_dir = (Path(args.path) / args.experiment).resolve()
    check_trusted(exp_dir, args.trust)  # before its cluster.json is read or its specs loaded
    scheduler = ops.attach(exp_dir)
    if args.op == "clone":
        result = ops.clone_modify(
            scheduler, exp_dir, args.run_id, parse_changes(args.changes), args.warm_start
        )
    else:
        if args.changes:
            raise ConfigError(f"{args.op} takes no knob=value changes")
        result = ops.apply(scheduler, args.op, args.run_id)
    print(json.dumps(result))
    return 0


def add_resume(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", help="experiment name")
    p.add_argument("--path", default=DEFAULT_ROOT, help="experiments root")
    p.add_argument("--no-live", action="store_true", help="no live terminal view")
    add_trust(p)


def cmd_resume(args: argparse.Namespace) -> int:
    from rf_ray.experiment import Experiment

    exp = Experiment(args.experiment, experiment_path=args.path, trust=args.trust)
    try:
        info = exp.resume(live_view=not args.no_live)
        print(info[["run_id", "status", "chunks_done", "best_metric"]].to_string(index=False))
    finally:
        exp.end()
    return 0
