"""Resume gives the same winner: an experiment whose driver is killed mid-chunk and resumed
ends with exactly the metrics of an uninterrupted one (chunk metrics, step losses, best and last
metric, the best run and the leaderboard).

The resumed scheduler rebuilds each run's record from the store: its best and last metric, the
step metrics of its partial chunk (so that chunk closes with the same mean) and the pruner's
state, which is stored in the same transaction as the chunk it recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rf_ray import Experiment, List, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from tests.processes import KilledDriver
from tests.waits import store_runs

pytestmark = pytest.mark.slow

ROWS, CHUNKS, STEPS_PER_CHUNK = 24, 2, 3  # 6 optimizer steps per run at batch size 4
FIT = dict(num_chunks=CHUNKS, seed=11, max_slice_steps=1, live_view=False, fusion=False)
BOARD = ["run_id", "status", "steps_done", "chunks_done", "pruned_at", "last_metric", "best_metric"]
CHUNK_METRICS = ["run_id", "chunk", "train_loss", "mean_token_accuracy"]


def _config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 2e-3, 1e-3, 6e-4, 3e-4, 1e-4]),
            lora_rank=4,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_length=48,
        ),
    )


def _fit(exp: Experiment) -> None:
    exp.run_fit(_config(), train_dataset=sft_dataset(ROWS), pruner=SuccessiveHalving(eta=2), **FIT)


def _outcome(exp: Experiment) -> dict[str, object]:
    steps = exp.get_results()
    chunks = exp.get_chunk_results()
    board = exp.get_runs_info().sort_values(["best_metric", "run_id"])[BOARD]
    board = board.astype(object).where(board.notna(), None)  # NaN != NaN
    return {
        "losses": {
            int(r): g.sort_values("step")["loss"].tolist() for r, g in steps.groupby("run_id")
        },
        "chunks": chunks[CHUNK_METRICS].sort_values(["run_id", "chunk"]).to_dict("records"),
        "leaderboard": board.to_dict("records"),
        "best_run": exp.get_best_run(),
    }


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    exp = Experiment("reference", experiment_path=tmp_path_factory.mktemp("resume-ref"))
    try:
        _fit(exp)
    finally:
        exp.end()
    return _outcome(exp)


DRIVER = """
from rf_ray import Experiment
from tests.rf_ray.test_resume_equivalence import _fit
_fit(Experiment("killed", experiment_path={root!r}))
"""


def _partial_chunks(exp_dir: Path) -> list[int]:
    """Runs that have trained part of a chunk (and whose chunk is not closed yet)."""
    return [r["run_id"] for r in store_runs(exp_dir) if r["steps_done"] % STEPS_PER_CHUNK]


def test_a_resumed_experiment_has_the_uninterrupted_winner(reference, tmp_path):
    exp_dir = tmp_path / "killed"
    with KilledDriver(tmp_path, DRIVER.format(root=str(tmp_path)), prefix="rfe") as driver:
        # a run mid-chunk after 3 chunks were closed in all (the store is all we share)
        driver.freeze_when(
            exp_dir,
            "a run mid-chunk after 3 chunks",
            lambda runs: (
                any(r["steps_done"] % STEPS_PER_CHUNK for r in runs)
                and sum(r["chunks_done"] for r in runs) >= 3
            ),
        )
    assert _partial_chunks(exp_dir), "the driver must die with a chunk half trained"
    exp = Experiment("killed", experiment_path=tmp_path)
    try:
        exp.resume(live_view=False)
    finally:
        exp.end()
    outcome = _outcome(exp)
    for key, expected in reference.items():
        assert outcome[key] == expected, (key, outcome[key], expected)
