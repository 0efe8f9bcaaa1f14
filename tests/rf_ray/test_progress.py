"""Progress reads as chunk and epoch (issue 21, item 8): ``num_chunks`` is per epoch, so a run
of TRL's default 3 epochs with ``num_chunks=4`` has 12 chunks, and after 3 of them the live view,
``rf-ray status`` and the dashboard say "chunk 3/4, epoch 1/3" (they said "chunk 3/12").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors.storage.store import Store
from policies.chunking import ChunkPlan
from rf_ray import cli
from rf_ray.dashboard import reads
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


def _experiment(root: Path) -> Path:
    exp_dir = root / "epochs"
    with Store(exp_dir) as store:
        store.set_meta(name="epochs", status="finished", num_chunks=4,
                       pruner={"type": "none", "metric": "train_loss", "mode": "min"})  # fmt: skip
        store.add_run(1, {"learning_rate": 1e-3}, "running", total_steps=48, total_chunks=12)
        store.add_run(2, {"learning_rate": 2e-3}, "running", total_steps=48, total_chunks=12)
        store.record_slice(1, [{"step": 12, "loss": 1.0}], None, steps_done=12, chunks_done=3)
        store.record_slice(2, [{"step": 24, "loss": 1.0}], None, steps_done=24, chunks_done=6)
    return exp_dir


def test_status_and_the_page_say_chunk_and_epoch(tmp_path, capsys):
    exp_dir = _experiment(tmp_path)
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


def test_the_live_view_says_chunk_and_epoch(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RF_RAY_LIVE", "1")  # the tests' conftest turns the view off
    exp_dir = _experiment(tmp_path)
    view = LiveView("epochs", {1: {}}, [], exp_dir=exp_dir)  # not a terminal: one line per chunk
    view.update([{"run_id": 1, "status": "running", "chunks_done": 3, "total_chunks": 12,
                  "last_metric": 0.5}])  # fmt: skip
    assert "run 1: running, chunk 3/4, epoch 1/3, metric" in capsys.readouterr().out
