"""policies/ is the pure bottom layer: importing it must not pull in any heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import policies

ROOT = Path(__file__).resolve().parents[2]

CHECK = (
    "import policies, sys; assert not any(m.split('.')[0] in "
    "{'ray','torch','transformers','trl','peft','mlflow','numpy'} for m in sys.modules)"
)


def test_importing_policies_pulls_in_no_heavy_library() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_check_would_catch_a_heavy_import() -> None:
    # The seam is real: the same check fails once a forbidden module is in sys.modules.
    code = CHECK.replace(
        "import policies, sys;",
        "import policies, sys, types; sys.modules['numpy'] = types.ModuleType('numpy');",
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0


def test_all_names_are_exported() -> None:
    assert sorted(policies.__all__) == sorted(set(policies.__all__))
    for name in policies.__all__:
        assert getattr(policies, name) is not None
    public = {n for n in dir(policies) if not n.startswith("_")}
    submodules = {"chunking", "errors", "fusion", "order", "pruning", "redact", "settings",
                  "state", "annotations", "intervals", "interval_pruning"}  # fmt: skip
    assert public - submodules == set(policies.__all__)
