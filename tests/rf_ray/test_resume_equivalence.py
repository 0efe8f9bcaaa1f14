"""Resume gives the same winner: an experiment whose driver is killed mid-chunk and resumed
ends with exactly the metrics of an uninterrupted one (chunk metrics, step losses, best and last
metric, the best run and the leaderboard).

The resumed scheduler rebuilds each run's record from the store: its best and last metric, the
step metrics of its partial chunk (so that chunk closes with the same mean) and the pruner's
state, which is stored in the same transaction as the chunk it recorded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from rf_ray import Experiment, List, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from tests.rf_ray.test_durability import _kill_started_under
from tests.waits import store_runs, wait_for_store

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


DRIVER = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RF_RAY_LIVE"] = "0"
    sys.path.insert(0, {repo!r})
    import ray
    ray.init(num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
             _temp_dir={ray_tmp!r})
    from rf_ray import Experiment
    from tests.rf_ray.test_resume_equivalence import _fit
    _fit(Experiment("killed", experiment_path={root!r}))
    """
)


def _partial_chunks(exp_dir: Path) -> list[int]:
    """Runs that have trained part of a chunk (and whose chunk is not closed yet)."""
    return [r["run_id"] for r in store_runs(exp_dir) if r["steps_done"] % STEPS_PER_CHUNK]


def _wait_for_a_partial_chunk(exp_dir: Path, after_chunks: int, timeout: float = 300) -> None:
    """Until some run is mid-chunk after ``after_chunks`` chunks were closed in all. The driver
    runs in another process: its store is all we share (tests/waits.py)."""
    wait_for_store(
        exp_dir,
        f"a run mid-chunk after {after_chunks} chunks",
        lambda runs: (
            any(r["steps_done"] % STEPS_PER_CHUNK for r in runs)
            and sum(r["chunks_done"] for r in runs) >= after_chunks
        ),
        timeout,
    )


def _signal_tree(pid: int, sig: int) -> None:
    import psutil

    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def _freeze_mid_chunk(pid: int, exp_dir: Path, after_chunks: int, tries: int = 20) -> None:
    """Stop (SIGSTOP) the driver's whole tree at a moment the store shows a run mid-chunk.

    Seeing a run mid-chunk and killing the tree are not one step: a slice that closes the
    chunk can land in between (slices of the toy take milliseconds). So the tree is frozen
    first and the store read again; if the chunk closed meanwhile, the tree goes on and we wait
    for the next partial chunk."""
    for _ in range(tries):
        _wait_for_a_partial_chunk(exp_dir, after_chunks)
        _signal_tree(pid, signal.SIGSTOP)
        if _partial_chunks(exp_dir):
            return
        _signal_tree(pid, signal.SIGCONT)
    raise AssertionError(f"no run stayed mid-chunk in {tries} tries")


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (Ray's head processes and workers) at once."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


def test_a_resumed_experiment_has_the_uninterrupted_winner(reference, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "driver.py"
    ray_tmp = tempfile.mkdtemp(prefix="rfe", dir="/tmp")
    script.write_text(DRIVER.format(repo=repo, root=str(tmp_path), ray_tmp=ray_tmp))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    exp_dir = tmp_path / "killed"
    try:
        _freeze_mid_chunk(proc.pid, exp_dir, after_chunks=3)
    finally:
        _kill_tree(proc.pid)  # the driver and its Ray cluster at once: no slice lands later
        proc.wait(timeout=60)
        _kill_started_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert _partial_chunks(exp_dir), "the driver must die with a chunk half trained"
    exp = Experiment("killed", experiment_path=tmp_path)
    try:
        exp.resume(live_view=False)
    finally:
        exp.end()
    outcome = _outcome(exp)
    for key, expected in reference.items():
        assert outcome[key] == expected, (key, outcome[key], expected)
