"""The ``rf-ray`` command: look at experiments, steer running ones, open their MLflow dashboard.

    rf-ray list                      experiments under ./rf_experiments
    rf-ray status sft-grid           one experiment's runs, progress, metrics, differing knobs
    rf-ray status sft-grid --json    the same as JSON, for scripts
    rf-ray dashboard                 the web dashboard on 127.0.0.1:5000 (--mlflow: MLflow UI too)
    rf-ray demo                      examples/sft_grid.py: 8 LoRA SFT configs on the toy model
    rf-ray ops stop sft-grid 3       steer a running experiment's runs (``rf_ray.cli.ops``)
    rf-ray resume sft-grid           continue an experiment whose driver died
    rf-ray samples sft-gen 3         a run's last prompts, references and generations

One module per command group: ``status`` (list, status), ``mlflow_ui`` (what ``dashboard --mlflow``
starts; the dashboard itself is ``rf_ray/dashboard/``), ``demo``, ``ops`` (ops,
resume); ``child`` runs a foreground child process. ``list``, ``status`` and ``dashboard`` only
read an experiment (the store is opened read-only), so they are safe while it trains. A user
error (unknown experiment, busy port, ...) prints one line to stderr and exits with status 2,
like argparse's own usage errors.

Adding a command: write ``add_arguments(parser)`` and ``run(args) -> int`` in a module here and
append its ``Command`` to ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policies.errors import ConfigError, OpError
from rf_ray.cli import demo, ops, samples, status
from rf_ray.dashboard import command as dashboard


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, how it adds its arguments, and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Returns the process exit status; raises ``ConfigError`` for a user error (exit 2)."""


COMMANDS: tuple[Command, ...] = (
    Command("list", "list the experiments under a root", status.add_root, status.cmd_list),
    Command("status", "show one experiment's runs and progress", status.add_status,
            status.cmd_status),
    Command("dashboard", "serve the web dashboard (--mlflow: and the MLflow UI)",
            dashboard.add_arguments, dashboard.run),
    Command("demo", "run examples/sft_grid.py (8 LoRA SFT configs)", demo.add_demo, demo.cmd_demo),
    Command("ops", "steer a running experiment's runs", ops.add_ops, ops.cmd_ops),
    Command("resume", "continue an experiment whose driver died", ops.add_resume,
            ops.cmd_resume),
    Command("samples", "show a run's last prompts, references and generations",
            samples.add_samples, samples.cmd_samples),
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rf-ray",
        description="rf-ray: tune LoRA post-training on the GPUs you have.",
        epilog="Run 'rf-ray COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rf-ray`` script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2): return them like any status
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.run(args))
    except (ConfigError, OpError) as exc:
        print(f"rf-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # another user's directory: one line, not a traceback
        print(f"rf-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        print(f"rf-ray {args.command}: interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "Command", "build_parser", "main"]
