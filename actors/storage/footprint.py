"""What a start or resume has added to an experiment directory, so that one that is refused or
fails half-way leaves the directory as it found it: a refused start writes nothing.

``Footprint.before_lock`` notes whether the directory and its lock file existed (taking the lock
creates both); ``after_lock`` notes the rest once the lock is held (nobody else writes then).
``restore`` removes what was added (a new store, ``cluster.json``, ``data/``, the model
factory's files, new ``runs/<id>``, a new ``mlflow.db``, the lock file and the directory
itself when they were new), puts a previous ``cluster.json`` back, and leaves an existing store
at rest (its rows are put back by ``rf_ray.plan.Undo``). It holds the lock while it does so
(taken again if it was handed to a scheduler since), and does nothing if another process took
it meanwhile: what is there is that one's now.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.storage import lock
from actors.storage.durable import atomic_write
from actors.storage.layout import ExperimentDir
from actors.storage.store import Store

logger = logging.getLogger(__name__)


def _names(path: Path) -> set[str]:
    return set(os.listdir(path)) if path.is_dir() else set()


@dataclass
class Footprint:
    """The directory as a start found it (module docstring)."""

    layout: ExperimentDir
    dir_existed: bool
    lock_existed: bool
    top: set[str] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)
    data: set[str] = field(default_factory=set)
    cluster: bytes | None = None

    @classmethod
    def before_lock(cls, experiment_dir: str | os.PathLike[str]) -> Footprint:
        layout = ExperimentDir(experiment_dir)
        return cls(layout, layout.root.is_dir(), layout.lock_file.exists())

    def after_lock(self) -> None:
        """Note what the directory holds, now that the lock is ours."""
        layout = self.layout
        self.top = _names(layout.root)
        self.runs, self.data = _names(layout.runs_dir), _names(layout.data_dir)
        with contextlib.suppress(FileNotFoundError):
            self.cluster = layout.cluster_file.read_bytes()

    def restore(self, held: Any = None) -> None:
        """Remove what the start added (module docstring). ``held``: the start's lock handle,
        if it still holds the lock."""
        root = self.layout.root
        if not root.is_dir():
            return
        handle = held if held is not None and not held.closed else lock.try_hold(root)
        if handle is None:
            logger.warning(
                "%s: another process holds its lock; leaving its files as they are", root
            )
            return
        if not self.dir_existed:
            shutil.rmtree(root, ignore_errors=True)
            handle.close()
            return
        try:
            self._remove_added()
        finally:
            if self.lock_existed:
                handle.close()
            else:
                lock.remove(handle, root)

    def _remove_added(self) -> None:
        layout = self.layout
        store_files = {layout.store.name, *(p.name for p in layout.store_sidecars)}
        keep = {layout.lock_file.name} | (store_files if layout.store.name in self.top else set())
        for name in sorted(_names(layout.root) - self.top - keep):
            _remove(layout.root / name)
        if layout.runs_dir.name in self.top:
            for name in sorted(_names(layout.runs_dir) - self.runs):
                _remove(layout.runs_dir / name)
        if layout.data_dir.name in self.top:
            for name in sorted(_names(layout.data_dir) - self.data):
                _remove(layout.data_dir / name)
        if self.cluster is not None:
            atomic_write(layout.cluster_file, self.cluster)
        if layout.store.name in self.top:
            Store.put_to_rest(layout.root)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


__all__ = ["Footprint"]
