"""A slice past its deadline fails only its run: a formatting function that hangs inside the
executor (fault injection) must not stop the experiment.

The hung run fails with an error naming the run, the slice and ``slice_timeout``; its executor
process is restarted, and the other runs, re-placed from their checkpoints, end with exactly the
losses of an experiment that never had the bad run (time-sliced, same seed).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from rf_ray import Experiment, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

pytestmark = pytest.mark.slow

ROWS = 16  # 4 optimizer steps at batch size 4; 2 chunks, slices of 1 step
ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, max_length=48, lora_rank=4)
FIT = dict(num_chunks=2, seed=3, max_slice_steps=1, fusion=False)
SLICE_TIMEOUT = 30.0
"""Far above a healthy toy slice (about a second); far below the hang."""


def in_executor() -> bool:
    """True inside a BaseModelActor process (Ray titles it ``ray::BaseModelActor...``)."""
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().startswith(b"ray::BaseModelActor")


def hang_in_executor(example: dict[str, Any]) -> str:
    """A formatting function that hangs, but only where the run trains."""
    if in_executor():
        time.sleep(3600)
    return example["prompt"] + example["completion"]


def exit_in_executor(example: dict[str, Any]) -> str:
    """A formatting function that kills the executor process (as a segfault would)."""
    if in_executor():
        os._exit(1)
    return example["prompt"] + example["completion"]


def healthy(lr: float) -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME, training_args=RFSFTConfig(learning_rate=lr, **ARGS)
    )


def faulty(fn: Any) -> RFModelConfig:
    # TRL refuses a formatting_func together with completion-only loss before calling it.
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        formatting_func=fn,
        training_args=RFSFTConfig(learning_rate=1e-3, completion_only_loss=False, **ARGS),
    )


def fit(exp: Experiment, configs: list[RFModelConfig], slice_timeout: float | None) -> Any:
    """run_fit with ``slice_timeout``."""
    kwargs = dict(train_dataset=sft_dataset(ROWS), live_view=False, **FIT)
    try:
        return exp.run_fit(
            configs, slice_timeout=slice_timeout, pruner=NoPruning(), **kwargs
        ).set_index("run_id")
    finally:
        exp.end()


def losses_by_lr(exp: Experiment, info: Any) -> dict[float, list[float]]:
    df = exp.get_results()
    out = {}
    for run_id, rows in df.groupby("run_id"):
        config = info.loc[run_id, "config"]
        lr = float(next(v for k, v in config.items() if k.endswith("learning_rate")))
        out[lr] = rows.sort_values("step")["loss"].tolist()
    return out


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    exp = Experiment("reference", experiment_path=tmp_path_factory.mktemp("deadline-ref"))
    info = fit(exp, [healthy(3e-3), healthy(3e-4)], SLICE_TIMEOUT)
    return losses_by_lr(exp, info)


def test_a_hung_slice_fails_its_run_and_the_others_match_a_run_without_it(reference, tmp_path):
    exp = Experiment("hung", experiment_path=tmp_path)
    info = fit(exp, [healthy(3e-3), faulty(hang_in_executor), healthy(3e-4)], SLICE_TIMEOUT)
    bad = info.loc[2]
    assert bad["status"] == "failed"
    for part in ("run 2", "steps 0..1", "chunk 1", f"slice_timeout={SLICE_TIMEOUT:g} s"):
        assert part in bad["error"], bad["error"]
    assert "the executor was doing:" in bad["error"]
    good = info.drop(index=2)
    assert (good["status"] == "completed").all(), info[["status", "error"]]
    assert good["error"].isna().all()
    assert (good["failures"] == 0).all()  # the restart was not charged to the runs it hit
    assert losses_by_lr(exp, good) == reference
