"""Checkpoints survive an OS crash: files and directories fsynced, an existing ``step-N``
replaced without a window where neither copy exists, leftovers of an interrupted save cleaned up
at start, and everything private to its owner (files 0600, directories 0700)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from actors.storage import checkpoint, durable


def _state(steps: int, value: float) -> dict:
    return {
        "adapter": {"w": torch.full((2, 2), value)},
        "optimizer": {"0.exp_avg": torch.full((2,), value)},
        "rng": {"cpu": torch.get_rng_state()},
        "meta": {"run_id": 1, "steps_done": steps, "value": value},
    }


def _value(path) -> float:
    return float(checkpoint.load(path)["adapter"]["w"][0, 0])


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_replacing_a_step_directory_swaps_it_in_one_exchange(tmp_path, monkeypatch):
    first = checkpoint.save(_state(4, 1.0), tmp_path / "run")
    exchanges = []
    real = durable._exchange
    monkeypatch.setattr(durable, "_exchange", lambda a, b: exchanges.append((a, b)) or real(a, b))
    second = checkpoint.save(_state(4, 2.0), tmp_path / "run")
    assert second == first
    assert len(exchanges) == 1  # the existing step-4 was swapped, not deleted then renamed
    assert _value(second) == 2.0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000004"]


def test_a_crash_between_the_fallback_renames_leaves_a_loadable_checkpoint(tmp_path, monkeypatch):
    path = checkpoint.save(_state(4, 1.0), tmp_path / "exp" / "runs" / "1")
    monkeypatch.setattr(durable, "_exchange", lambda a, b: False)  # no RENAME_EXCHANGE here
    real_rename = os.rename

    def crash_on_second_rename(src, dst):
        if os.path.basename(src).startswith(".tmp-"):
            raise OSError("simulated crash between the two renames")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", crash_on_second_rename)
    with pytest.raises(OSError, match="simulated crash"):
        checkpoint.save(_state(4, 2.0), tmp_path / "exp" / "runs" / "1")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not path.exists()  # the old copy is aside, the new one never landed
    assert _value(path) == 1.0  # readers find the aside copy
    assert checkpoint.steps_done(path) == 4
    restored = checkpoint.remove_partial_writes(tmp_path / "exp")
    assert [p.name for p in restored] == [".aside-step-00000004"]
    assert path.exists()
    assert _value(path) == 1.0
    assert os.listdir(path.parent) == ["step-00000004"]


def test_the_fallback_path_replaces_and_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "_exchange", lambda a, b: False)
    checkpoint.save(_state(4, 1.0), tmp_path / "run")
    path = checkpoint.save(_state(4, 2.0), tmp_path / "run")
    assert _value(path) == 2.0
    assert os.listdir(path.parent) == ["step-00000004"]


def test_start_up_removes_temporary_directories_and_stale_asides(tmp_path):
    path = checkpoint.save(_state(2, 1.0), tmp_path / "exp" / "runs" / "1")
    (path.parent / ".tmp-abc").mkdir()
    (path.parent / ".aside-step-00000002").mkdir()  # its target exists: a finished replace
    removed = checkpoint.remove_partial_writes(tmp_path / "exp")
    assert sorted(p.name for p in removed) == [".aside-step-00000002", ".tmp-abc"]
    assert os.listdir(path.parent) == ["step-00000002"]


def test_checkpoint_files_are_0600_and_directories_0700(tmp_path):
    path = checkpoint.save(_state(3, 1.0), tmp_path / "run")
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o700
    for name in (checkpoint.ADAPTER_FILE, checkpoint.OPTIMIZER_FILE, checkpoint.STATE_FILE):
        assert _mode(path / name) == 0o600, name


def test_every_file_and_directory_is_fsynced_before_the_checkpoint_counts(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    checkpoint.save(_state(3, 1.0), tmp_path / "run")
    checkpoint.save(_state(3, 2.0), tmp_path / "run")  # the replacing path too
    names = {os.path.basename(p) for p in synced}
    assert {checkpoint.ADAPTER_FILE, checkpoint.OPTIMIZER_FILE} <= names
    assert any(n.startswith(".tmp-state.json") or n == checkpoint.STATE_FILE for n in names)
    temp_dirs = [p for p in synced if os.path.basename(os.path.dirname(p)) == "checkpoints"]
    assert any(os.path.basename(p).startswith(".tmp-") for p in temp_dirs)  # before the rename
    assert str(tmp_path / "run" / "checkpoints") in synced  # after the rename


def test_a_warm_clone_copy_is_durable_and_private(tmp_path):
    source = checkpoint.save(_state(4, 3.0), tmp_path / "runs" / "1")
    copied = checkpoint.copy(source, tmp_path / "runs" / "2")
    assert copied == tmp_path / "runs" / "2" / "checkpoints" / "step-00000004"
    assert _value(copied) == 3.0
    assert _mode(copied) == 0o700
    assert _mode(copied / checkpoint.STATE_FILE) == 0o600
    assert os.listdir(copied.parent) == ["step-00000004"]
