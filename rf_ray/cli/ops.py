"""``rf-ray ops`` and ``rf-ray resume``: steer a running experiment, or restart a stopped one.

    rf-ray ops stop sft-grid 3                     pause run 3 at its next slice boundary
    rf-ray ops resume sft-grid 3                   train it again
    rf-ray ops prune sft-grid 3                    prune it by hand (it can be resumed)
    rf-ray ops delete sft-grid 3                   stop it for good
    rf-ray ops clone sft-grid 3 learning_rate=1e-4 lora_rank=16
    rf-ray ops clone sft-grid 3 learning_rate=1e-4 --warm-start
    rf-ray resume sft-grid --path ROOT             continue after the driver died

``ops`` first reads the experiment directory and answers at once, in one line, when the op
cannot apply: no such experiment, finished, not running (``rf-ray resume`` it), or starting
(retry). Otherwise a short-lived child process attaches to the Ray cluster the experiment runs
on (``RAY_ADDRESS`` when set, else the cluster its driver recorded in ``cluster.json``, with
Ray's token authentication kept on), sends the op and relays the scheduler's answer; it is
bounded by ``--timeout`` (``rf_ray.remote``). Values on the command line are parsed as JSON when
they can be (``1e-4``, ``16``, ``true``, ``["q_proj","v_proj"]``), else kept as text; functions
(``formatting_func``, ``reward_funcs``, ...) cannot be given as text: clone from Python.

A warm start (``--warm-start``) copies the parent's adapter, optimizer, LR schedule and data
position, so the clone must keep the adapter's shape (``lora_rank``, ``target_modules``) and the
data plan (batch size, accumulation, epochs); any other knob, e.g. the learning rate, may change.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from actors.storage.trust import check_trusted
from policies.errors import ConfigError
from rf_ray.cli.status import add_trust
from rf_ray.experiment import DEFAULT_ROOT
from rf_ray.remote import OP_TIMEOUT_S


def add_ops(p: argparse.ArgumentParser) -> None:
    p.add_argument("op", choices=["stop", "resume", "delete", "prune", "clone"])
    p.add_argument("experiment", help="experiment name")
    p.add_argument("run_id", type=int, help="run id (see rf-ray status)")
    p.add_argument("changes", nargs="*", help="for clone: knob=value pairs")
    p.add_argument(
        "--warm-start",
        action="store_true",
        help="clone: copy the parent's adapter, optimizer and data position (keep lora_rank)",
    )
    p.add_argument("--path", default=DEFAULT_ROOT, help="experiments root")
    p.add_argument(
        "--timeout",
        type=seconds,
        default=OP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long to wait for the answer (default {OP_TIMEOUT_S:g})",
    )
    add_trust(p)


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0 (``nan``, ``inf``, 0 and negative
    numbers ended the op's child at once, or never)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def parse_value(text: str) -> Any:
    """A value as typed: JSON when it parses (``1e-4``, ``16``, ``true``), else the text (also
    for JSON Python will not read: an integer of thousands of digits, arrays nested thousands
    deep; the knob's own check then refuses the text, naming it)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return text


def parse_changes(pairs: list[str]) -> dict[str, Any]:
    """``["learning_rate=1e-4", "lora_rank=16"]`` -> ``{"learning_rate": 1e-4, ...}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            hint = (
                " (brackets in usage lines mark an optional part: type --warm-start without them)"
                if pair.startswith("[")
                else ""
            )
            raise ConfigError(f"expected knob=value, got {pair!r}{hint}")
        out[key] = parse_value(text)
    return out


def cmd_ops(args: argparse.Namespace) -> int:
    from rf_ray import ops, remote

    exp_dir = (Path(args.path) / args.experiment).resolve()
    check_trusted(exp_dir, args.trust)  # before its cluster.json is read or its specs loaded
    if args.op == "clone":
        changes = parse_changes(args.changes)
        if not changes:
            raise ConfigError("clone needs at least one knob=value change, e.g. learning_rate=1e-4")
        ops.check_function_changes(ops.flat_changes(changes))  # before any process starts
        if args.warm_start:
            ops.check_warm_changes(changes)
        request = remote.OpRequest("clone", args.run_id, changes, args.warm_start)
    else:
        if args.changes or args.warm_start:
            raise ConfigError(f"{args.op} takes no knob=value changes and no --warm-start")
        request = remote.OpRequest(args.op, args.run_id)
    print(json.dumps(remote.send(exp_dir, request, args.timeout)))
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
