"""``rf-ray demo``: run ``examples/sft_grid.py`` from a source checkout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rf_ray.cli.child import run_child
from rf_ray.cli.status import add_root


def add_demo(p: argparse.ArgumentParser) -> None:
    add_root(p)
    p.add_argument("--no-live", action="store_true", help="no live terminal view")


def find_demo_script() -> Path | None:
    """``examples/sft_grid.py`` of a source checkout; the installed package does not ship it."""
    script = Path(__file__).resolve().parents[2] / "examples" / "sft_grid.py"
    return script if script.is_file() else None


def demo_command(script: Path, path: str | None = None, live: bool = True) -> list[str]:
    cmd = [sys.executable, str(script)]
    if path is not None:
        cmd += ["--path", path]
    if not live:
        cmd.append("--no-live")
    return cmd


def cmd_demo(args: argparse.Namespace) -> int:
    script = find_demo_script()
    if script is None:
        print(
            "The demo is examples/sft_grid.py in the rf-ray source repository; it is not part of "
            "the installed package.\nClone the repository and run, from its root:\n"
            "    python examples/sft_grid.py",
            file=sys.stderr,
        )
        return 1
    return run_child(demo_command(script, args.path, live=not args.no_live))
