"""Offline ``evaluate`` metrics for the ports of RapidFire AI's notebooks.

The notebooks' ``compute_metrics`` call ``evaluate.load("rouge")`` and ``evaluate.load("bleu")``,
which download metric scripts from the Hugging Face Hub; CI has no network. ``evaluate`` falls
back to a cached copy of a script under ``$HF_MODULES_CACHE/evaluate_modules/metrics/`` (what a
machine that loaded the metric once has). This conftest writes such a cache, with the scripts of
``evaluate_metrics/`` (our own, scoring with rouge_score and NLTK as the hub's do), into a
temporary directory and points ``HF_MODULES_CACHE`` at it when the tests are collected: before
Ray starts, so the executors that run ``compute_metrics`` inherit it. The notebooks' code then
runs as written. ``HF_EVALUATE_OFFLINE`` skips the hub lookup."""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _offline_metric_cache() -> Path:
    root = Path(tempfile.mkdtemp(prefix="rf-ray-hf-modules-"))
    atexit.register(shutil.rmtree, root, True)
    metrics = root / "evaluate_modules" / "metrics"
    for package in (root / "evaluate_modules", metrics):
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").touch()
    for script in sorted((HERE / "evaluate_metrics").glob("*.py")):
        name = script.stem
        digest = hashlib.sha256(script.read_bytes()).hexdigest()  # evaluate reads 64 hex chars
        target = metrics / f"evaluate-metric--{name}" / digest
        target.mkdir(parents=True)
        (target.parent / "__init__.py").touch()
        (target / "__init__.py").touch()
        shutil.copy(script, target / script.name)
    return root


if "HF_MODULES_CACHE" not in os.environ:
    os.environ["HF_MODULES_CACHE"] = str(_offline_metric_cache())
    os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
