"""End to end through ``Experiment.run_fit``: real Ray actors, real TRL and PEFT, real MLflow.

One module-scoped 4-config grid (2 learning rates x 2 LoRA ranks, successive halving with eta=2
over 4 chunks) is trained once; most tests read its store, its MLflow runs and its exported
adapter. Two smaller experiments cover what the grid cannot: two distinct base models, and runs
that fail (an exception, a NaN loss) next to one that does not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from actors.storage.checkpoint import EXPORTED_WEIGHTS
from actors.storage.layout import ExperimentDir
from rf_ray import (
    ConfigError,
    Experiment,
    ExperimentExistsError,
    List,
    NoPruning,
    RFModelConfig,
    RFSFTConfig,
    SuccessiveHalving,
)
from rf_ray.toy import TOY_MODEL_NAME, TOY_MODEL_PATH, load_toy_model, sft_dataset, sft_eval_dataset

# 32 examples at batch size 4: 8 optimizer steps; 4 chunks of 2 steps, rungs after chunks 1, 2, 4.
TRAIN_ROWS = 32
NUM_CHUNKS = 4
STEPS_PER_CHUNK = 2
TRAIN_ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, max_length=48)
TARGETS = ["q_proj", "v_proj"]
LEARNING_RATES = [3e-3, 1e-4]
RANKS = [2, 8]


def _grid_config() -> RFModelConfig:
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List(LEARNING_RATES),
            lora_rank=List(RANKS),
            lora_alpha=16,
            target_modules=TARGETS,
            **TRAIN_ARGS,
        ),
    )


@pytest.fixture(scope="module")
def grid(ray_cluster, tmp_path_factory):
    """The 4-config grid, trained once for the whole module."""
    root = tmp_path_factory.mktemp("grid")
    exp = Experiment("grid-e2e", experiment_path=root)
    try:
        info = exp.run_fit(
            _grid_config(),
            train_dataset=sft_dataset(TRAIN_ROWS, seed=0),
            eval_dataset=sft_eval_dataset(16, seed=1),
            num_chunks=NUM_CHUNKS,
            seed=42,
            pruner=SuccessiveHalving(eta=2),
            live_view=False,
        )
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, root=root, info=info.set_index("run_id", drop=False))


# --------------------------------------------------------------------------- successive halving


def test_run_fit_returns_one_row_per_grid_point(grid):
    info = grid.info
    assert sorted(info["run_id"]) == [1, 2, 3, 4]
    points = {(c["learning_rate"], c["lora.r"]) for c in info["config"]}
    assert points == {(lr, r) for lr in LEARNING_RATES for r in RANKS}
    assert grid.exp.get_runs_info()["run_id"].tolist() == [1, 2, 3, 4]
    assert info["error"].isna().all()


def test_successive_halving_keeps_half_at_each_rung(grid):
    info = grid.info
    assert sorted(info["status"]) == ["completed", "pruned", "pruned", "pruned"]
    pruned_at = info.loc[info["status"] == "pruned", "pruned_at"]
    # 4 runs -> ceil(4/2) = 2 survive rung 1 -> ceil(2/2) = 1 survives rung 2 and completes.
    assert sorted(pruned_at.astype(int)) == [1, 1, 2]
    assert info.loc[info["status"] == "completed", "pruned_at"].isna().all()


def test_progress_stops_where_the_run_was_pruned(grid):
    for row in grid.info.itertuples():
        chunks = NUM_CHUNKS if row.status == "completed" else int(row.pruned_at)
        assert row.chunks_done == chunks, row
        assert row.steps_done == chunks * STEPS_PER_CHUNK, row
        assert row.total_steps == NUM_CHUNKS * STEPS_PER_CHUNK
        assert row.total_chunks == NUM_CHUNKS


def test_survivors_are_the_best_eval_loss_at_each_rung(grid):
    chunks = grid.exp.get_chunk_results()
    info = grid.info
    # One chunk row per run and chunk done, each with the eval metric the pruner compared.
    assert len(chunks) == info["chunks_done"].sum()
    assert chunks["eval_loss"].map(math.isfinite).all()
    alive = sorted(info["run_id"])
    for rung in (1, 2):
        at_rung = chunks[(chunks["chunk"] == rung) & chunks["run_id"].isin(alive)]
        assert sorted(at_rung["run_id"]) == alive
        # Lower eval_loss is better; ties go to the smaller run id (policies.pruning).
        ranked = sorted(zip(at_rung["eval_loss"], at_rung["run_id"]))
        keep = {rid for _, rid in ranked[: math.ceil(len(ranked) / 2)]}
        for rid in set(alive) - keep:
            assert info.loc[rid, "status"] == "pruned"
            assert int(info.loc[rid, "pruned_at"]) == rung
        alive = sorted(keep)
    assert [int(r) for r in info.loc[info["status"] == "completed", "run_id"]] == alive


def test_best_run_is_the_completed_one(grid):
    completed = grid.info.loc[grid.info["status"] == "completed", "run_id"].tolist()
    assert grid.exp.get_best_run() == completed[0]


def test_best_and_last_metric_come_from_the_chunk_results(grid):
    chunks = grid.exp.get_chunk_results()
    for row in grid.info.itertuples():
        mine = chunks[chunks["run_id"] == row.run_id].sort_values("chunk")
        assert row.last_metric == pytest.approx(mine["eval_loss"].iloc[-1])
        assert row.best_metric == pytest.approx(mine["eval_loss"].min())


def test_step_results_have_one_row_per_run_and_optimizer_step(grid):
    res = grid.exp.get_results()
    assert {"run_id", "step", "loss", "learning_rate", "grad_norm"} <= set(res.columns)
    assert not res.duplicated(["run_id", "step"]).any()
    for row in grid.info.itertuples():
        mine = res[res["run_id"] == row.run_id].sort_values("step")
        assert mine["step"].tolist() == list(range(1, row.steps_done + 1))
        for col in ("loss", "learning_rate", "grad_norm"):
            assert mine[col].map(math.isfinite).all(), (row.run_id, col)
        assert (mine["learning_rate"] > 0).all()
        assert mine["learning_rate"].iloc[0] <= row.config["learning_rate"] * (1 + 1e-9)


def test_base_model_loaded_once_for_all_runs(grid):
    assert grid.exp.stats()["base_loads"] == 1


def test_pruned_runs_keep_their_checkpoint(grid):
    for row in grid.info.itertuples():
        ckpt = Path(row.checkpoint)
        assert ckpt.is_dir(), row
        assert ckpt.is_relative_to(ExperimentDir(grid.exp.dir).run(row.run_id).path)
        state = json.loads((ckpt / "state.json").read_text())
        assert state["steps_done"] == row.steps_done


# --------------------------------------------------------------------------- MLflow


def test_mlflow_has_one_experiment_with_one_run_per_run(grid):
    exp = grid.exp
    assert exp.tracking_uri == f"sqlite:///{ExperimentDir(exp.dir).mlflow_db}"
    client = MlflowClient(tracking_uri=exp.tracking_uri)
    named = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in named] == [exp.name]
    runs = client.search_runs([named[0].experiment_id], max_results=100)
    assert len(runs) == 4
    assert {r.info.run_id for r in runs} == set(grid.info["mlflow_run_id"])


def test_mlflow_runs_mirror_the_store(grid):
    client = MlflowClient(tracking_uri=grid.exp.tracking_uri)
    results = grid.exp.get_results()
    mlflow_status = {"completed": "FINISHED", "pruned": "KILLED"}
    for row in grid.info.itertuples():
        run = client.get_run(row.mlflow_run_id)
        params, tags = run.data.params, run.data.tags
        assert float(params["learning_rate"]) == row.config["learning_rate"]
        assert int(params["lora.r"]) == row.config["lora.r"]
        assert int(params["lora.lora_alpha"]) == 16
        assert tags["rf_ray.run_id"] == str(row.run_id)
        assert tags["rf_ray.status"] == row.status
        assert run.info.status == mlflow_status[row.status]
        if row.status == "pruned":
            assert tags["rf_ray.pruned_at_chunk"] == str(int(row.pruned_at))
        else:
            assert "rf_ray.pruned_at_chunk" not in tags
        # One loss value per optimizer step, equal to the store's.
        history = sorted(client.get_metric_history(row.mlflow_run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, row.steps_done + 1))
        stored = results[results["run_id"] == row.run_id].sort_values("step")["loss"]
        assert [m.value for m in history] == pytest.approx(stored.tolist())
        for key in ("learning_rate", "grad_norm"):
            assert len(client.get_metric_history(row.mlflow_run_id, key)) == row.steps_done
        evals = client.get_metric_history(row.mlflow_run_id, "chunk/eval_loss")
        assert len(evals) == row.chunks_done


# --------------------------------------------------------------------------- export


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(
        ["copy: q x b = q x b", "sort: 3 1 2 = 1 2 3", "add: 12 7 = 19"],
        return_tensors="pt",
        padding=True,
    )
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_export_loads_with_peft_and_equals_the_final_checkpoint(grid, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    best = grid.exp.get_best_run()
    row = grid.info.loc[best]
    out = grid.exp.export(best, tmp_path / "best-adapter")

    config = json.loads((Path(out) / "adapter_config.json").read_text())
    assert config["r"] == row["config"]["lora.r"]
    assert config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(TARGETS)

    base, tokenizer = load_toy_model()
    base_logits = _logits(base, tokenizer)
    exported = PeftModel.from_pretrained(base, str(out))
    exported_logits = _logits(exported, tokenizer)

    # Reference: the run's last durable checkpoint, loaded by hand into a fresh LoRA model.
    ckpt = Path(row["checkpoint"])
    assert json.loads((ckpt / "state.json").read_text())["steps_done"] == row["total_steps"]
    ref_base, _ = load_toy_model()
    lora = LoraConfig(task_type="CAUSAL_LM", r=config["r"], lora_alpha=16, target_modules=TARGETS)
    reference = get_peft_model(ref_base, lora)
    loaded = set_peft_model_state_dict(reference, load_file(str(ckpt / "adapter.safetensors")))
    assert not loaded.unexpected_keys
    assert not [k for k in loaded.missing_keys if "lora_" in k]
    reference_logits = _logits(reference, tokenizer)

    torch.testing.assert_close(exported_logits, reference_logits)
    assert not torch.allclose(exported_logits, base_logits), "the adapter changes nothing"


def test_a_pruned_run_keeps_an_exportable_adapter(grid, tmp_path):
    """A pruned run can be resumed or inspected: its adapter as it stood is exported too."""
    pruned = int(grid.info.loc[grid.info["status"] == "pruned", "run_id"].iloc[0])
    path = grid.exp.export(pruned, tmp_path / "pruned")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["r"] == grid.info.set_index("run_id").loc[pruned, "config"]["lora.r"]


def test_export_of_an_unknown_run_says_why_it_cannot(grid, tmp_path):
    with pytest.raises(ConfigError, match="run 99"):
        grid.exp.export(99, tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


# --------------------------------------------------------------------------- same name, new data


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime, leaving out SQLite's connection files: a reader of a WAL
    database (even read-only) may create the ``-shm`` index and an empty ``-wal``; an empty WAL
    holds no write, so only a non-empty one counts."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
        and not p.name.endswith("-shm")
        and not (p.name.endswith("-wal") and p.stat().st_size == 0)
    }


def test_same_name_with_different_data_is_refused_and_writes_nothing(grid):
    before = _tree(grid.exp.dir)
    again = Experiment(grid.exp.name, experiment_path=grid.root)
    with pytest.raises(ExperimentExistsError) as excinfo:
        again.run_fit(
            _grid_config(),
            train_dataset=sft_dataset(TRAIN_ROWS, seed=5),
            eval_dataset=sft_eval_dataset(16, seed=1),
            num_chunks=NUM_CHUNKS,
            live_view=False,
        )
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    assert grid.exp.name in message
    assert "experiment_name" in message  # how to start fresh
    assert "continue" in message  # how to get back to the old one
    assert _tree(grid.exp.dir) == before
    assert len(again.get_runs_info()) == 4


# --------------------------------------------------------------------------- two base models


def test_list_over_model_name_loads_each_distinct_model_once(ray_cluster, tmp_path):
    exp = Experiment("two-models", experiment_path=tmp_path)
    config = RFModelConfig(
        # Two spellings of the toy: two model keys, so two resident bases.
        model_name=List([TOY_MODEL_NAME, str(TOY_MODEL_PATH)]),
        training_args=RFSFTConfig(learning_rate=List([3e-3, 1e-3]), **TRAIN_ARGS),
    )
    try:
        info = exp.run_fit(
            config,
            train_dataset=sft_dataset(TRAIN_ROWS),
            num_chunks=2,
            pruner=NoPruning(),
            live_view=False,
        )
    finally:
        exp.end()
    assert len(info) == 4
    assert (info["status"] == "completed").all(), info[["run_id", "status", "error"]]
    assert {c["model_name"] for c in info["config"]} == {TOY_MODEL_NAME, str(TOY_MODEL_PATH)}
    assert exp.stats()["base_loads"] == 2
    # Without an eval set the pruning metric is the chunk's mean train loss.
    assert "train_loss" in exp.get_chunk_results().columns


# --------------------------------------------------------------------------- failure isolation


def _boom(example):
    raise ValueError("boom")


@pytest.fixture(scope="module")
def boom(ray_cluster, tmp_path_factory):
    """Run 1's formatting_func raises (TRL applies it when the run's trainer is built); run 2 is
    healthy. MLFLOW_TRACKING_URI points at a sqlite file outside the experiment directory."""
    root = tmp_path_factory.mktemp("boom")
    tracking_db = root / "elsewhere" / "mlflow.db"
    tracking_db.parent.mkdir()
    configs = [
        RFModelConfig(
            model_name=TOY_MODEL_NAME,
            formatting_func=_boom,
            # TRL refuses a formatting_func together with completion-only loss before calling it.
            training_args=RFSFTConfig(completion_only_loss=False, **TRAIN_ARGS),
        ),
        RFModelConfig(model_name=TOY_MODEL_NAME, training_args=RFSFTConfig(**TRAIN_ARGS)),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracking_db}")
        exp = Experiment("boom-e2e", experiment_path=root)
    try:
        info = exp.run_fit(
            configs,
            train_dataset=sft_dataset(TRAIN_ROWS),
            num_chunks=2,
            pruner=NoPruning(),
            live_view=False,
        )
    finally:
        exp.end()
    return SimpleNamespace(
        exp=exp, info=info.set_index("run_id", drop=False), tracking_db=tracking_db
    )


def test_a_raising_formatting_func_fails_only_its_run(boom):
    failed, healthy = boom.info.loc[1], boom.info.loc[2]
    assert failed["status"] == "failed"
    assert "ValueError" in failed["error"]
    assert "boom" in failed["error"]
    assert failed["steps_done"] == 0
    assert healthy["status"] == "completed"
    assert healthy["steps_done"] == healthy["total_steps"]
    assert pd.isna(healthy["error"])
    assert (ExperimentDir(boom.exp.dir).run(2).adapter_dir / EXPORTED_WEIGHTS).exists()


def test_a_failed_run_is_failed_in_mlflow_with_its_error(boom):
    client = MlflowClient(tracking_uri=boom.exp.tracking_uri)
    failed = client.get_run(boom.info.loc[1, "mlflow_run_id"])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["rf_ray.status"] == "failed"
    assert failed.data.tags["rf_ray.error"] == boom.info.loc[1, "error"]
    healthy = client.get_run(boom.info.loc[2, "mlflow_run_id"])
    assert healthy.info.status == "FINISHED"
    assert healthy.data.tags["rf_ray.status"] == "completed"
    assert "rf_ray.error" not in healthy.data.tags


def test_mlflow_tracking_uri_from_the_environment_is_respected(boom):
    assert boom.exp.tracking_uri == f"sqlite:///{boom.tracking_db}"
    assert not ExperimentDir(boom.exp.dir).mlflow_db.exists()
    client = MlflowClient(tracking_uri=boom.exp.tracking_uri)
    experiment = client.get_experiment_by_name(boom.exp.name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == set(boom.info["mlflow_run_id"])


@pytest.fixture(scope="module")
def nan(ray_cluster, tmp_path_factory):
    """Run 1 is healthy; run 2's loss goes NaN in its first slice, between run 1's two chunks.

    The toy's RMSNorms keep the loss finite for any finite adapter weights (1e36 included); a
    learning rate near float32's limit makes Adam's first update of the LoRA B matrices
    overflow, so run 2's second step has a NaN loss.
    """
    exp = Experiment("nan-e2e", experiment_path=tmp_path_factory.mktemp("nan"))
    configs = [
        RFModelConfig(model_name=TOY_MODEL_NAME, training_args=RFSFTConfig(**TRAIN_ARGS)),
        RFModelConfig(
            model_name=TOY_MODEL_NAME,
            training_args=RFSFTConfig(learning_rate=1e38, **TRAIN_ARGS),
        ),
    ]
    try:
        info = exp.run_fit(
            configs,
            train_dataset=sft_dataset(TRAIN_ROWS),
            num_chunks=2,
            pruner=NoPruning(),
            live_view=False,
        )
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, info=info.set_index("run_id", drop=False))


def test_a_nan_loss_fails_its_run_with_a_clear_error(nan):
    row = nan.info.loc[2]
    assert row["status"] == "failed"
    assert "loss became nan" in row["error"]
    assert "learning rate" in row["error"]  # what to do about it
    # Nothing of the failed slice is recorded.
    assert row["steps_done"] == 0
    assert (nan.exp.get_results()["run_id"] != 2).all()
    run = MlflowClient(tracking_uri=nan.exp.tracking_uri).get_run(row["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["rf_ray.error"] == row["error"]


def test_a_nan_loss_does_not_poison_the_other_runs(nan):
    row = nan.info.loc[1]
    assert row["status"] == "completed", row["error"]
    assert row["steps_done"] == row["total_steps"]


def test_wait_survives_a_scheduler_call_failing_in_transit(ray_cluster, tmp_path, monkeypatch):
    """A call to a live scheduler can fail in transit (ActorUnavailableError: seen as a connection
    reset on a loaded 2-core machine, 16 runs in flight). ``wait`` asks again instead of failing
    an experiment that is still running. Fault injection: the driver's first two ``ray.get``
    calls on the done-reference raise it."""
    import ray
    from ray.exceptions import ActorUnavailableError

    from rf_ray import session as sessions

    exp = Experiment("unavailable", experiment_path=tmp_path)
    real_get, injected = ray.get, []

    def flaky_get(refs, *args, **kwargs):
        session = exp._session
        if session is not None and refs is session.done_ref and len(injected) < 2:
            injected.append(refs)
            raise ActorUnavailableError("injected: connection reset by peer", None)
        return real_get(refs, *args, **kwargs)

    monkeypatch.setattr(sessions, "SCHEDULER_UNAVAILABLE_RETRIES", 3)
    try:
        exp.run_fit(
            RFModelConfig(
                model_name=TOY_MODEL_NAME,
                training_args=RFSFTConfig(
                    learning_rate=List([3e-3, 1e-3]), target_modules=TARGETS, **TRAIN_ARGS
                ),
            ),
            train_dataset=sft_dataset(16),
            num_chunks=2,
            pruner=NoPruning(),
            live_view=False,
            blocking=False,
        )
        monkeypatch.setattr(ray, "get", flaky_get)
        info = exp.wait()
    finally:
        monkeypatch.setattr(ray, "get", real_get)
        exp.end()
    assert len(injected) == 2  # the fault was hit, twice, and waited through
    assert list(info["status"]) == ["completed", "completed"]
    assert (exp.get_chunk_results().groupby("run_id")["chunk"].max() == 2).all()


def test_a_second_run_fit_on_the_same_object_stops_the_old_actors_first(ray_cluster, tmp_path):
    """Issue 12, item 13: the old session's executor kept the device and its scheduler the
    experiment's lock, so the new session could never start; before, run_fit refused."""
    import ray
    from ray.exceptions import RayActorError

    exp = Experiment("twice", experiment_path=tmp_path)
    data = sft_dataset(64)
    slow = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=1, max_length=48, lora_rank=2),
    )
    quick = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=4, max_steps=2, max_length=48,
                                  lora_rank=2),
    )  # fmt: skip
    try:
        exp.run_fit(slow, train_dataset=data, num_chunks=8, max_slice_steps=1, live_view=False,
                    blocking=False)  # fmt: skip
        old = exp._session  # the session's actors, to check they are gone
        assert old is not None
        assert not old.finished
        info = exp.run_fit(quick, train_dataset=data, num_chunks=1, live_view=False)
    finally:
        exp.end()
    for actor in [old.scheduler, *old.executors]:
        with pytest.raises(RayActorError):
            ray.get(actor.__ray_ready__.remote(), timeout=60)
    assert info.set_index("run_id").loc[2, "status"] == "completed"


def test_a_later_run_fit_takes_ids_after_every_used_one(ray_cluster, tmp_path):
    """Issue 12, item 6: a refused clone burns an id, so ids have gaps; run_fit computed the next
    id as len(runs)+1, reused a taken one and overwrote that run's spec before failing."""
    exp = Experiment("ids", experiment_path=tmp_path)
    data = sft_dataset(64)
    slow = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=1, max_length=48, lora_rank=2),
    )
    quick = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=4, max_steps=2, max_length=48,
                                  lora_rank=2),
    )  # fmt: skip
    try:
        exp.run_fit(slow, train_dataset=data, num_chunks=8, max_slice_steps=1, live_view=False,
                    blocking=False)  # fmt: skip
        with pytest.raises(ConfigError, match="rejected the run"):  # after its id was reserved
            exp.clone_modify(1, {"optim": "not-an-optimizer"})
        assert exp.clone_modify(1, {"max_steps": 2})["run_id"] == 3
        exp.stop(1)
        exp.wait()
        spec_3 = ExperimentDir(exp.dir).run(3).spec_file.read_bytes()
        info = exp.run_fit(quick, train_dataset=data, num_chunks=1, live_view=False)
    finally:
        exp.end()
    assert info["run_id"].tolist() == [1, 3, 4]
    assert info.set_index("run_id").loc[4, "status"] == "completed"
    assert ExperimentDir(exp.dir).run(3).spec_file.read_bytes() == spec_3
