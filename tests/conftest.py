"""Shared fixtures: offline Hugging Face, one Ray cluster per test session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RF_RAY_LIVE", "0")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest


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
