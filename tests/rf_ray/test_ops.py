"""Interactive control of a running experiment: stop, resume, delete, prune, clone_modify.

Ops are applied at slice boundaries; slices here are one optimizer step, so ops land mid-run.
Stopping and resuming evicts a run from the executor and re-seeds it from its checkpoint, so a
run steered that way must end exactly where an unsteered run of the same config ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import ray

from rf_ray import (
    ConfigError,
    Experiment,
    List,
    NoPruning,
    OpError,
    RFModelConfig,
    RFSFTConfig,
    UnknownKnobError,
)
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

pytestmark = pytest.mark.slow

ROWS = 48  # 12 optimizer steps per run


def _config(rates) -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List(rates),
            lora_rank=4,
            lora_dropout=0.1,
            per_device_train_batch_size=4,
            num_train_epochs=1,
            max_length=48,
        ),
    )


# Time-sliced: these tests hold steered runs to bit-identity with unsteered ones, which only
# time-slicing gives (a fused pass's float rounding depends on its group; see test_fusion.py for
# the same ops under fusion, to a tolerance).
FIT = dict(
    num_chunks=3, seed=3, max_slice_steps=1, pruner=NoPruning(), live_view=False, fusion=False
)


def _start(tmp_path, name, rates) -> Experiment:
    exp = Experiment(name, experiment_path=tmp_path)
    exp.run_fit(_config(rates), train_dataset=sft_dataset(ROWS), blocking=False, **FIT)
    return exp


def _losses(exp: Experiment) -> dict[int, list[float]]:
    df = exp.get_results()
    return {int(r): g.sort_values("step")["loss"].tolist() for r, g in df.groupby("run_id")}


def _wait_steps(exp: Experiment, run_id: int, at_least: int, timeout: float = 240) -> None:
    row = exp.wait_for_progress(run_id, steps=at_least, timeout=timeout)  # the scheduler's event
    assert row["steps_done"] >= at_least, row


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    """The same three configs, never steered."""
    exp = Experiment("unsteered", experiment_path=tmp_path_factory.mktemp("ref"))
    exp.run_fit(_config([3e-3, 1e-3, 3e-4, 1e-4]), train_dataset=sft_dataset(ROWS), **FIT)
    exp.end()
    return _losses(exp)


def test_stop_resume_delete_prune_and_their_errors(reference, tmp_path):
    # Four configs: run 4 keeps the experiment alive while the others are steered (an
    # experiment whose runs are all stopped or pruned is over).
    exp = _start(tmp_path, "steered", [3e-3, 1e-3, 3e-4, 1e-4])
    assert exp.stop(1)["status"] == "stopped"
    assert exp.prune(2)["status"] == "pruned"
    with pytest.raises(OpError, match=r"run 99 does not exist"):
        exp.stop(99)
    with pytest.raises(OpError, match=r"cannot stop run 1"):
        exp.stop(1)  # already stopped: nothing changes
    # A run that is no longer live ends the wait at once; one that never comes says so.
    assert exp.wait_for_progress(1, steps=10**6, timeout=60)["status"] == "stopped"
    with pytest.raises(TimeoutError, match=r"run 99 .* not registered"):
        exp.wait_for_progress(99, steps=1, timeout=1)
    _wait_steps(exp, 3, at_least=2)  # the others train on meanwhile
    assert exp.resume(1)["status"] == "running"
    assert exp.resume(2)["status"] == "running"
    assert exp.delete(3)["status"] == "deleted"
    with pytest.raises(OpError, match=r"run 3 is deleted"):
        exp.resume(3)
    info = exp.wait().set_index("run_id")
    with pytest.raises(OpError, match="is finished"):  # read from the directory: no Ray call
        exp.stop(1)
    exp.end()
    with pytest.raises(OpError, match="is finished"):
        exp.stop(1)
    assert info.loc[1, "status"] == "completed"
    assert info.loc[2, "status"] == "completed"
    assert info.loc[3, "status"] == "deleted"
    # Paused, evicted, re-seeded from checkpoints: the same numbers as never paused.
    losses = _losses(exp)
    assert losses[1] == reference[1]
    assert losses[2] == reference[2]


def test_clone_modify_cold_and_warm(reference, tmp_path):
    exp = _start(tmp_path, "clones", [3e-3])
    _wait_steps(exp, 1, at_least=4)
    runs_before = len(exp.get_runs_info())
    with pytest.raises(UnknownKnobError, match="learnin_rate"):
        exp.clone_modify(1, {"learnin_rate": 1e-3})
    with pytest.raises(ConfigError, match="learning_rate"):
        exp.clone_modify(1, {"learning_rate": -1.0})
    with pytest.raises(ConfigError, match=r"lora\.r"):
        exp.clone_modify(1, {"lora_rank": 8}, warm_start=True)
    assert len(exp.get_runs_info()) == runs_before  # refused ops changed nothing

    warm = exp.clone_modify(1, {"learning_rate": 3e-3}, warm_start=True)["run_id"]
    cold = exp.clone_modify(1, {"learning_rate": 1e-3, "lora_rank": 8})["run_id"]
    info = exp.wait().set_index("run_id")
    exp.end()
    assert set(info["status"]) == {"completed"}
    assert info.loc[warm, "parent_run_id"] == 1
    assert info.loc[cold, "parent_run_id"] == 1
    assert info.loc[cold, "config"]["lora.r"] == 8
    losses = _losses(exp)
    # A warm clone with the parent's config continues exactly as the parent did.
    start = len(reference[1]) - len(losses[warm])
    assert start >= 4
    assert losses[warm] == reference[1][start:]
    assert len(losses[cold]) == len(reference[1])  # cold: from step 1
    from mlflow.tracking import MlflowClient

    run = MlflowClient(exp.tracking_uri).get_run(info.loc[warm, "mlflow_run_id"])
    assert run.data.tags["rf_ray.parent_run_id"] == "1"


def test_concurrent_ops_from_two_clients_apply_once_in_order(ray_cluster, tmp_path):
    exp = _start(tmp_path, "concurrent", [3e-3, 1e-3])
    results: list[list[dict]] = [[], []]

    def client(k: int) -> None:
        for _ in range(3):
            results[k].append(exp.clone_modify(1, {"learning_rate": 2e-3 + k * 1e-4}))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    # A third client in another process, through the CLI, at the same time.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    cli = subprocess.run(
        [sys.executable, "-m", "rf_ray.cli", "ops", "stop", "concurrent", "2",
         "--path", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    for t in threads:
        t.join()
    assert cli.returncode == 0, cli.stderr
    stopped = json.loads(cli.stdout.strip().splitlines()[-1])
    assert stopped["status"] == "stopped"
    exp.resume(2)
    info = exp.wait().set_index("run_id")
    exp.end()
    clones = [r["run_id"] for rs in results for r in rs]
    assert len(set(clones)) == 6
    assert sorted(clones) == list(range(3, 9))
    seqs = [r["seq"] for rs in results for r in rs] + [stopped["seq"]]
    assert len(set(seqs)) == len(seqs)  # each op applied exactly once
    for rs in results:  # and in the order each client sent them
        assert [r["seq"] for r in rs] == sorted(r["seq"] for r in rs)
    assert set(info["status"]) == {"completed"}
    assert len(info) == 8
