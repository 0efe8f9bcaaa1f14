"""The experiment directory's owners (issue 23, item 3; issue 21, items 9, 13, 14, 16): its layout
(``ExperimentDir``), its lock, what a failed start leaves (``Footprint``) and whose it is
(``check_trusted``). No Ray, no model: plain files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from actors.engine.gen_eval import read_samples
from actors.storage import checkpoint, lock
from actors.storage.durable import make_private_dir
from actors.storage.footprint import Footprint
from actors.storage.layout import (
    EMBEDDED_TRACKING_URI,
    ExperimentDir,
    checkpoint_step,
    function_file,
)
from actors.storage.store import Store
from actors.storage.trust import check_trusted
from actors.tracking import default_tracking_uri
from policies.errors import ConfigError, OpError, UntrustedDirectoryError
from rf_ray import spec_store


def _state(step: int) -> dict:
    return {
        "adapter": {"lora_A": torch.full((2, 3), float(step))},
        "optimizer": {"0.exp_avg": torch.zeros(3)},
        "rng": {"cpu": torch.zeros(4, dtype=torch.uint8)},
        "meta": {"steps_done": step, "optimizer_param_groups": [], "optimizer_scalars": {}},
    }


def test_the_writers_put_their_files_where_the_layout_says(tmp_path):
    layout = ExperimentDir(tmp_path / "exp")
    run = layout.run(3)
    assert checkpoint.save(_state(12), run.path) == run.checkpoint(12)
    assert run.checkpoint(12).name == "step-00000012"
    assert checkpoint_step(run.checkpoint(12)) == 12
    with Store(layout.root) as store:
        assert store.path == layout.store
    assert Store.exists(layout.root)
    assert layout.run_ids_on_disk() == [3]
    assert ExperimentDir.of_run_dir(run.path) == layout
    assert default_tracking_uri(layout.root) == layout.embedded_tracking_uri()


def test_specs_functions_and_samples_are_where_the_layout_says(tmp_path):
    layout = ExperimentDir(tmp_path / "exp")
    spec_store.write_create_model_fn(layout.root, lambda config: (None, None))  # pickled
    pickled = function_file(layout.root, "create_model_fn")
    assert pickled.parent == layout.functions_dir
    assert pickled.exists()
    assert layout.model_fn_file.exists()
    run = layout.run(2)
    assert read_samples(run.path) is None
    make_private_dir(run.path)
    run.samples_file.write_text('{"samples": []}')
    assert read_samples(run.path) == {"samples": []}


def test_the_embedded_mlflow_store_is_kept_relative_to_the_directory(tmp_path):
    here, there = ExperimentDir(tmp_path / "a"), ExperimentDir(tmp_path / "b")
    stored = here.stored_tracking_uri(here.embedded_tracking_uri())
    assert stored == EMBEDDED_TRACKING_URI
    assert there.tracking_uri_from(stored) == there.embedded_tracking_uri()
    assert here.stored_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    # an older store kept the absolute path; once that file is gone, the directory's own counts
    make_private_dir(there.root)
    there.mlflow_db.touch()
    assert there.tracking_uri_from(here.embedded_tracking_uri()) == there.embedded_tracking_uri()


def test_private_directories_are_private_at_every_level_created(tmp_path):
    deep = make_private_dir(tmp_path / "a" / "b" / "c")
    for level in (tmp_path / "a", tmp_path / "a" / "b", deep):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700, level


def test_the_lock_refuses_a_second_holder_and_tidy_removes_it_once_free(tmp_path):
    exp = tmp_path / "exp"
    held = lock.hold_experiment_lock(exp)
    assert lock.is_held(exp) is True
    with pytest.raises(OpError, match="already running"):
        lock.hold_experiment_lock(exp)
    assert lock.try_hold(exp) is None
    assert lock.tidy(exp) is False  # held: left alone
    assert ExperimentDir(exp).lock_file.exists()
    held.close()
    ran = []
    assert lock.tidy(exp, lambda: ran.append(lock.is_held(exp))) is True
    assert ran == [True]  # the callback runs with the lock held
    assert not ExperimentDir(exp).lock_file.exists()
    assert lock.is_held(exp) is False
    again = lock.hold_experiment_lock(exp)  # a new lock file, held as before
    assert lock.is_held(exp) is True
    again.close()


def test_take_waits_for_a_gone_holder_and_refuses_a_live_one(tmp_path):
    exp = tmp_path / "exp"
    held = lock.hold_experiment_lock(exp)
    try:
        with pytest.raises(ConfigError, match="already running"):
            lock.take(exp, holder_gone=lambda: False, wait_s=0)
        with pytest.raises(ConfigError, match="driver is gone"):
            lock.take(exp, holder_gone=lambda: True, wait_s=0.3)
    finally:
        held.close()
    lock.take(exp, holder_gone=lambda: False, wait_s=0).close()


def test_a_read_only_reader_leaves_no_sqlite_files_once_the_store_is_at_rest(tmp_path):
    layout = ExperimentDir(tmp_path / "exp")
    with Store(layout.root) as store:
        store.set_meta(name="exp")
    with Store(layout.root, readonly=True) as reader:
        reader.meta()
    assert any(p.exists() for p in layout.store_sidecars)  # a WAL store: the reader made them
    assert Store.put_to_rest(layout.root) is True
    with Store(layout.root, readonly=True) as reader:
        assert reader.meta() == {"name": "exp"}
    assert [p for p in layout.store_sidecars if p.exists()] == []


def _listing(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_a_failed_start_leaves_an_existing_directory_as_it_was(tmp_path):
    layout = ExperimentDir(tmp_path / "exp")
    with Store(layout.root) as store:
        store.set_meta(name="exp")
    Store.put_to_rest(layout.root)
    make_private_dir(layout.run(1).path)
    (layout.run(1).path / "spec.json").write_text("{}")
    layout.cluster_file.write_text('{"address": "old"}')
    before = _listing(layout.root)
    footprint = Footprint.before_lock(layout.root)
    held = lock.hold_experiment_lock(layout.root)
    footprint.after_lock()
    # what a start writes before it fails
    layout.cluster_file.write_text('{"address": "new"}')
    with Store(layout.root) as store:
        store.set_meta(status="running")
        store.set_meta(status="finished")
    make_private_dir(layout.train_data)
    make_private_dir(layout.run(2).path)
    layout.model_fn_file.write_text("{}")
    layout.mlflow_db.write_text("")
    footprint.restore(held)
    assert held.closed
    after = _listing(layout.root)
    assert after.keys() == before.keys()
    assert after["cluster.json"] == before["cluster.json"]
    with Store(layout.root, readonly=True) as store:  # its rows: rf_ray.plan.Undo's job
        assert store.meta()["name"] == "exp"


def test_a_failed_start_in_a_new_directory_removes_it(tmp_path):
    root = tmp_path / "new"
    footprint = Footprint.before_lock(root)
    held = lock.hold_experiment_lock(root)
    footprint.after_lock()
    with Store(root) as store:
        store.set_meta(name="new")
    footprint.restore(held)
    assert not root.exists()


def test_a_directory_others_can_write_is_refused_naming_path_mode_and_owner(tmp_path):
    layout = ExperimentDir(tmp_path / "exp")
    with Store(layout.root) as store:
        store.set_meta(name="exp")
    check_trusted(layout.root)  # rf-ray's own: 0700 and 0600
    os.chmod(layout.root, 0o777)
    with pytest.raises(UntrustedDirectoryError) as refused:
        check_trusted(layout.root)
    message = str(refused.value)
    assert str(layout.root) in message
    assert "0o777" in message
    assert f"uid {os.geteuid()}" in message
    assert "trust=True" in message
    check_trusted(layout.root, trust=True)
    os.chmod(layout.root, 0o700)
    spec = layout.run(1).spec_file
    make_private_dir(spec.parent)
    spec.write_text("{}")
    os.chmod(spec, 0o620)
    with pytest.raises(UntrustedDirectoryError, match=r"spec\.json is writable by its group"):
        check_trusted(layout.root)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a file another uid owns needs root")
def test_a_pickle_another_user_owns_is_refused_even_for_root(tmp_path):
    layout = ExperimentDir(tmp_path / "exp")
    planted = layout.run(1).functions_dir / "formatting_func.cloudpickle"
    make_private_dir(planted.parent)
    planted.write_bytes(b"not yours")
    os.chmod(planted, 0o600)
    os.chown(planted, 65534, 65534)
    with pytest.raises(UntrustedDirectoryError, match=r"formatting_func.cloudpickle is owned by"):
        check_trusted(layout.root)
