"""The experiment store without Ray: run ids, the read-only URI, file modes, undoing a start."""

from __future__ import annotations

import sqlite3
import stat
import threading

import pytest

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store


def _add(store: Store, run_id: int) -> None:
    store.add_run(run_id, {"lr": 0.1}, "pending", total_steps=4, total_chunks=2)


def test_store_closes_as_a_context_manager(tmp_path):
    with Store(tmp_path) as store:
        _add(store, 1)
    with pytest.raises(sqlite3.ProgrammingError):
        store.runs()


def test_next_run_id_skips_rows_reserved_ids_and_run_directories(tmp_path):
    with Store(tmp_path) as store:
        assert store.next_run_id() == 1
        _add(store, 1)
        assert store.next_run_id() == 2
        assert store.reserve_run_ids(1) == [2]  # e.g. a clone that is then refused
        assert store.next_run_id() == 3
        # files of a run the store never recorded
        ExperimentDir(tmp_path).run(7).path.mkdir(parents=True)
        assert store.next_run_id() == 8
        assert store.reserve_run_ids(2) == [8, 9]
    with Store(tmp_path, readonly=True) as store:
        assert store.next_run_id() == 10


def test_reserved_ids_never_collide_across_connections(tmp_path):
    Store(tmp_path).close()
    got: list[int] = []
    lock = threading.Lock()

    def reserve() -> None:
        with Store(tmp_path) as store:
            for _ in range(10):
                ids = store.reserve_run_ids(1)
                with lock:
                    got.extend(ids)

    threads = [threading.Thread(target=reserve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(got) == list(range(1, 41))


@pytest.mark.parametrize("name", ["a#b", "what?", "100%", "sp ace", "x%20y"])
def test_read_only_store_opens_paths_with_uri_characters(tmp_path, name):
    exp_dir = tmp_path / name
    with Store(exp_dir) as store:
        _add(store, 1)
    before = sorted(p.name for p in tmp_path.iterdir())
    with Store(exp_dir, readonly=True) as store:
        assert [r["run_id"] for r in store.runs()] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no stray file appeared


def test_store_file_is_private(tmp_path):
    Store(tmp_path).close()
    assert stat.S_IMODE(ExperimentDir(tmp_path).store.stat().st_mode) == 0o600


def test_undo_start_removes_only_the_added_runs_and_restores_the_settings(tmp_path):
    with Store(tmp_path) as store:
        store.set_meta(name="e", seed=1)
        _add(store, 1)
        store.record_slice(1, [{"step": 1, "loss": 1.0}], (1, {"train_loss": 1.0}), steps_done=1)
        before = store.meta()
        store.set_meta(seed=2, slice_timeout=5.0)
        _add(store, 2)
        store.undo_start([2], before)
        assert store.meta() == before
        assert [r["run_id"] for r in store.runs()] == [1]
        assert store.step_metrics(1) == [(1, {"step": 1, "loss": 1.0})]


def test_record_slice_writes_meta_in_the_same_transaction(tmp_path):
    with Store(tmp_path) as store:
        _add(store, 1)
        with pytest.raises(KeyError):
            store.record_slice(1, [], None, meta={"pruner_state": {"x": 1}}, nonsense=1)
        assert "pruner_state" not in store.meta()
        store.record_slice(1, [], None, meta={"pruner_state": {"x": 1}}, failures=1)
        assert store.meta()["pruner_state"] == {"x": 1}
        assert store.run(1)["failures"] == 1


def test_record_slice_updates_the_runs_the_pruner_stopped_with_it(tmp_path):
    with Store(tmp_path) as store:
        _add(store, 1)
        _add(store, 2)
        store.record_slice(
            1, [{"step": 1, "loss": 1.0}], (1, {"train_loss": 1.0}),
            others={2: {"status": "pruned", "pruned_at": 1}}, steps_done=1,
        )  # fmt: skip
        assert (store.run(2)["status"], store.run(2)["pruned_at"]) == ("pruned", 1)
