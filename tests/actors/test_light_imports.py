"""The processes that hold no model stay light: importing what they import pulls in no torch.

Ray imports an actor's module wherever one of its handles is deserialized: every trial holds a
``BaseModelActor`` handle, so a module-level ``import torch`` in ``actors/base_model_actor.py``
would load torch into every trial process (about 250 MiB each, measured by bench/bench_compare.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "trl", "peft", "datasets")


@pytest.mark.parametrize(
    "module",
    ["actors.base_model_actor", "actors.trial_actor", "actors.scheduler_actor", "actors.tracking"],
)
def test_module_imports_no_heavy_library(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"importing {module} loads {out.stdout.strip()}"
