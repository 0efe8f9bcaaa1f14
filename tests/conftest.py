"""Shared fixtures: offline Hugging Face, one Ray cluster per test session.

Tests that need Ray carry the ``ray`` marker, set here so that nobody has to remember it: every
test that uses the ``ray_cluster`` fixture, and every test of the modules in
``STARTS_RAY_IN_A_SUBPROCESS`` (they run a driver, an example or a benchmark in a child process
that starts its own cluster). ``make check`` runs ``-m "not ray and not slow"``: the fast loop.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RF_RAY_LIVE", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest

TESTS = Path(__file__).resolve().parent

STARTS_RAY_IN_A_SUBPROCESS = frozenset(
    {
        "examples/rapidfire/test_rf_colab_rag_fiqa_tutorial.py",
        "examples/test_algorithm_examples.py",
        "examples/test_bench_compare_quick.py",
        "examples/test_bench_evals_quick.py",
        "examples/test_bench_ops_quick.py",
        "examples/test_bench_quick.py",
        "examples/test_rapidfire_port.py",
        "examples/test_rag_eval.py",
        "examples/test_ray_job.py",
        "examples/test_sft_grid.py",
        "rf_ray/test_attach.py",
        "rf_ray/test_dead_head.py",
        "rf_ray/test_noise.py",
        "rf_ray/test_steering.py",
    }
)
"""Test modules (relative to tests/) whose tests start Ray in a child process, not through the
``ray_cluster`` fixture. A new module like them belongs here."""


SLOW_WITHOUT_RAY = frozenset(
    {
        # Trains the same pair of runs over many seeds (a statistical comparison).
        "actors/test_fused.py::test_fused_dropout_matches_statistically",
        # Trains until a simulated out-of-memory, then the whole slice again time-sliced.
        "actors/test_fused.py::test_out_of_memory_mid_slice_falls_back_to_time_slicing",
    }
)
"""Tests that need no Ray but are among the slowest of the suite (137 s and 63 s under a load
of 20 on 2 cores, 2026-11-30): marked ``slow`` so that ``make check`` stays short; ``make test``
runs them. Listed here rather than decorated, so the equivalence test files stay unchanged."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a Ray cluster with ``ray`` (see the module docstring), and
    the slowest of the others with ``slow``."""
    for item in items:
        module = Path(str(item.fspath)).resolve().relative_to(TESTS).as_posix()
        uses_cluster = "ray_cluster" in getattr(item, "fixturenames", ())
        if uses_cluster or module in STARTS_RAY_IN_A_SUBPROCESS:
            item.add_marker(pytest.mark.ray)
        if f"{module}::{item.name}" in SLOW_WITHOUT_RAY:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def no_log_file_left_attached():
    """A test that builds an actor's class in this process (a scheduler, an executor) attaches
    the experiment's log file here and never detaches it; later tests' loggers would then still
    write there and forward to the console their way. Each test starts as a process does."""
    from actors import logs

    before = set(logs.attached())
    yield
    for path in set(logs.attached()) - before:
        logs.detach(path.parent)


@pytest.fixture(scope="session")
def ray_cluster():
    """One small local Ray cluster for the whole session (2 CPUs, small object store)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=200 * 2**20,
            include_dashboard=False,
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()
