"""Progress reads as chunk and epoch (issue 21, item 8): ``num_chunks`` is per epoch, so a run
of TRL's default 3 epochs with ``num_chunks=4`` has 12 chunks, and after 3 of them the live view,
``rf-ray status`` and the dashboard say "chunk 3/4, epoch 1/3" (they said "chunk 3/12").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.storage.durable import make_private_dir
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.chunking import ChunkPlan
from policies.interval_pruning import IntervalPruner
from policies.pruning import NoPruning
from policies.settings import SETTINGS_KEY, ExperimentSettings
from rf_ray import cli
from rf_ray.dashboard import reads
from rf_ray.evals.progress import EvalsView
from rf_ray.live import LiveView, chunk_progress


@pytest.mark.parametrize(
    ("done", "total", "per_epoch", "text"),
    [(0, 12, 4, "chunk 0/4, epoch 1/3"), (3, 12, 4, "chunk 3/4, epoch 1/3"),
     (4, 12, 4, "chunk 4/4, epoch 1/3"), (5, 12, 4, "chunk 1/4, epoch 2/3"),
     (12, 12, 4, "chunk 4/4, epoch 3/3"),
     # 1.5 epochs: the last epoch has 2 chunks
     (6, 6, 4, "chunk 2/2, epoch 2/2"), (5, 6, 4, "chunk 1/2, epoch 2/2"),
     # one epoch (or fewer chunks than one epoch's: max_steps): the chunk only
     (3, 4, 4, "chunk 3/4"), (1, 2, 4, "chunk 1/2"), (3, 12, None, "chunk 3/12")],
)  # fmt: skip
def test_chunk_progress(done, total, per_epoch, text):
    assert chunk_progress(done, total, per_epoch) == text


def test_trl_default_epochs_with_four_chunks_make_twelve_chunks_of_four_per_epoch():
    import trl

    epochs = trl.SFTConfig(output_dir="unused", use_cpu=True, bf16=False).num_train_epochs
    plan = ChunkPlan(num_examples=64, batch_size=4, grad_accum=1, num_chunks=4,
                     num_train_epochs=epochs)  # fmt: skip
    assert epochs == 3
    assert plan.total_chunks == 12
    assert chunk_progress(3, plan.total_chunks, plan.num_chunks) == "chunk 3/4, epoch 1/3"


STORES = {
    # as ``persist`` writes it: the settings as one value
    "settings": {SETTINGS_KEY: ExperimentSettings(num_chunks=4, pruner=NoPruning().settings())
                 .to_dict()},
    # as a store written before the settings were one value holds them
    "older": {"num_chunks": 4, "pruner": {"type": "none", "metric": "train_loss", "mode": "min"}},
}  # fmt: skip


@pytest.fixture(params=sorted(STORES))
def stored(request) -> dict:
    return STORES[request.param]


def _experiment(root: Path, meta: dict) -> Path:
    exp_dir = root / "epochs"
    with Store(exp_dir) as store:
        store.set_meta(name="epochs", status="finished", **meta)
        store.add_run(1, {"learning_rate": 1e-3}, "running", total_steps=48, total_chunks=12)
        store.add_run(2, {"learning_rate": 2e-3}, "running", total_steps=48, total_chunks=12)
        store.record_slice(1, [{"step": 12, "loss": 1.0}], None, steps_done=12, chunks_done=3)
        store.record_slice(2, [{"step": 24, "loss": 1.0}], None, steps_done=24, chunks_done=6)
    return exp_dir


def test_status_and_the_page_say_chunk_and_epoch(tmp_path, capsys, stored):
    exp_dir = _experiment(tmp_path, stored)
    assert cli.main(["status", "epochs", "--path", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "chunk 3/4, epoch 1/3" in table
    assert "chunk 2/4, epoch 2/3" in table
    assert "3/12" not in table
    assert cli.main(["status", "epochs", "--path", str(tmp_path), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)["runs"]
    assert [r["progress"] for r in runs] == ["chunk 3/4, epoch 1/3", "chunk 2/4, epoch 2/3"]
    state = reads.read_state(exp_dir, reads.Cursor())
    assert [r["progress"] for r in state["runs"]] == [
        "chunk 3/4, epoch 1/3",
        "chunk 2/4, epoch 2/3",
    ]


def test_the_live_view_says_chunk_and_epoch(tmp_path, capsys, monkeypatch, stored):
    monkeypatch.setenv("RF_RAY_LIVE", "1")  # the tests' conftest turns the view off
    exp_dir = _experiment(tmp_path, stored)
    view = LiveView("epochs", {1: {}}, [], exp_dir=exp_dir)  # not a terminal: one line per chunk
    view.update([{"run_id": 1, "status": "running", "chunks_done": 3, "total_chunks": 12,
                  "last_metric": 0.5}])  # fmt: skip
    assert "run 1: running, chunk 3/4, epoch 1/3, metric" in capsys.readouterr().out


@pytest.mark.parametrize(
    "meta",
    [
        {SETTINGS_KEY: ExperimentSettings(pruner=IntervalPruner(metric="Recall", mode="max")
                                          .settings()).to_dict()},
        {"pruner": {"type": "interval", "metric": "Recall", "mode": "max"}},
    ],
    ids=["settings", "older"],
)  # fmt: skip
def test_an_evals_view_shows_the_pruners_metric_first(tmp_path, meta):
    run = ExperimentDir(tmp_path).run(1)
    make_private_dir(run.path)
    run.pipeline_file.write_text("{}")  # an evals experiment: its runs are pipelines
    with Store(tmp_path) as store:
        store.set_meta(**meta)
    metrics = {}
    for name, value in (("Accuracy", 0.9), ("F1", 0.8), ("Recall", 0.7)):
        metrics |= {name: value, f"{name}/lower": value - 0.1, f"{name}/upper": value + 0.1}
    with Store(tmp_path) as store:
        view = EvalsView.of(tmp_path, [1], store.meta(), [(1, 0, metrics)])
    assert view is not None
    assert view.metric == "Recall"
    assert view.columns() == ["Recall", "Accuracy"]
