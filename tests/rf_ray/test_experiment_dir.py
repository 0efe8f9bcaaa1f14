"""A finished experiment's directory, walked file by file (issue 21, items 9 and 16).

One real experiment (Ray actors, TRL, PEFT, MLflow's sqlite store; two runs with an eval set and
generation metrics, so every kind of file exists), then ``exp.end()``:

* nothing is left that only a running experiment needs: no ``scheduler.lock``, no SQLite
  ``-wal``/``-shm`` beside any database, and reading it afterwards leaves none either;
* every file is 0600 and every directory 0700 (docs/security.md);
* a copy of the directory elsewhere still finds its own MLflow store;
* built-in metric names are stored by name: no pickle anywhere.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from actors.storage.layout import EMBEDDED_TRACKING_URI, ExperimentDir
from actors.storage.store import Store
from rf_ray import Experiment, List, NoPruning, RFModelConfig, RFSFTConfig
from rf_ray.cli import main
from rf_ray.plan import Plan
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("at-rest")
    exp = Experiment("at-rest", experiment_path=root)
    config = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            learning_rate=List([3e-3, 1e-4]), lora_rank=4, per_device_train_batch_size=4,
            num_train_epochs=1, max_length=48,
        ),
        generation_config={"max_new_tokens": 4, "do_sample": False},
        eval_metrics_fn=["rougeL"],
        eval_generations=2,
    )  # fmt: skip
    try:
        exp.run_fit(
            config, train_dataset=sft_dataset(8, seed=0), eval_dataset=sft_eval_dataset(4, seed=1),
            num_chunks=1, seed=3, pruner=NoPruning(), live_view=False,
        )  # fmt: skip
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, root=root, dir=exp.dir)


def _leftovers(exp_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(exp_dir))
        for p in exp_dir.rglob("*")
        if p.name.endswith(("-wal", "-shm", "-journal")) or p.name == "scheduler.lock"
    )


def test_nothing_of_a_running_experiment_is_left_after_end(finished):
    layout = ExperimentDir(finished.dir)
    assert layout.store.exists()
    assert layout.mlflow_db.exists()
    assert _leftovers(finished.dir) == []
    # Readers of an experiment at rest leave nothing behind either.
    assert finished.exp.get_runs_info()["status"].tolist() == ["completed", "completed"]
    assert main(["status", "at-rest", "--path", str(finished.root)]) == 0
    assert _leftovers(finished.dir) == []


def test_every_file_is_private(finished):
    files = [p for p in finished.dir.rglob("*") if p.is_file()]
    dirs = [finished.dir, *(p for p in finished.dir.rglob("*") if p.is_dir())]
    layout = ExperimentDir(finished.dir)
    run = layout.run(1)
    # the files the issue found 0644 and the directories it found 0755 are among those walked
    adapter = run.adapter_dir / "adapter_config.json"
    for must in (layout.mlflow_db, layout.log_file, run.samples_file, adapter):
        assert must in files, must
    assert any(p.is_relative_to(layout.train_data) for p in files)
    for must in (layout.runs_dir, run.adapter_dir, layout.train_data):
        assert must in dirs, must
    wrong = [
        f"{p.relative_to(finished.dir)}: {oct(stat.S_IMODE(p.stat().st_mode))}"
        for p, mode in [*((f, 0o600) for f in files), *((d, 0o700) for d in dirs)]
        if stat.S_IMODE(p.stat().st_mode) != mode
    ]
    assert wrong == []


def test_a_copied_experiment_finds_its_own_mlflow_store(finished, tmp_path):
    with Store(finished.dir, readonly=True) as store:
        assert store.meta()["tracking_uri"] == EMBEDDED_TRACKING_URI
    copy = tmp_path / "elsewhere" / "at-rest"
    shutil.copytree(finished.dir, copy)
    plan = Plan.from_store(copy)
    assert plan.tracking_uri == f"sqlite:///{(copy / 'mlflow.db').resolve()}"
    found = MlflowClient(tracking_uri=plan.tracking_uri).get_experiment_by_name("at-rest")
    assert found is not None
    runs = MlflowClient(tracking_uri=plan.tracking_uri).search_runs([found.experiment_id])
    assert len(runs) == 2


def test_built_in_metrics_are_stored_by_name(finished):
    layout = ExperimentDir(finished.dir)
    assert list(finished.dir.rglob("*.cloudpickle")) == []
    spec = json.loads(layout.run(1).spec_file.read_text())
    assert spec["functions"]["generation_eval"]["metrics_fn"] == {"metrics": ["rougeL"]}
