"""Whose experiment directory is this? Checked before anything in it is read.

Opening an experiment directory imports the modules its specs name and unpickles the functions
stored without an importable name (docs/security.md). A directory that another user owns, or
that another user may write (group or others have write permission on the directory, the store
or a spec or pickle file), may hold their code: ``check_trusted`` refuses it, naming the path and
its owner, unless the user opts in (``Experiment(..., trust=True)``, ``--trust`` on the CLI).

What is checked (``guarded_paths``): the directory, ``runs/`` and each run's directory, every
file rf-ray reads code or state from (the store and its SQLite sidecars, ``cluster.json``, the
model factory's record, every ``spec.json``, every pickle) and the directories that hold them.
Checkpoints and datasets are tensors and Arrow tables (no code): not walked.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from actors.storage.layout import ExperimentDir
from policies.errors import UntrustedDirectoryError

WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def guarded_paths(experiment_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """The paths ``check_trusted`` looks at (module docstring), those that exist."""
    layout = ExperimentDir(experiment_dir)
    yield layout.root
    top = [layout.store, *layout.store_sidecars, layout.cluster_file, layout.model_fn_file]
    top += [layout.legacy_model_fn_file, layout.functions_dir, layout.runs_dir]
    yield from (p for p in top if os.path.lexists(p))
    yield from _files(layout.functions_dir)
    for run_id in layout.run_ids_on_disk():
        run = layout.run(run_id)
        yield run.path
        for path in (run.spec_file, run.legacy_spec_file, run.functions_dir, run.pipeline_file,
                     run.pipeline_pickle):  # fmt: skip
            if os.path.lexists(path):
                yield path
        yield from _files(run.functions_dir)


def _files(directory: Path) -> Iterator[Path]:
    if directory.is_dir() and not directory.is_symlink():
        yield from sorted(directory.iterdir())


def _owner(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _problem(path: Path) -> str | None:
    """Why ``path`` is not this user's alone, or None. A symbolic link is judged by itself
    and by what it points to."""
    me = os.geteuid()
    for st in (os.lstat(path), *((os.stat(path),) if path.is_symlink() else ())):
        if st.st_uid != me:
            return f"is owned by {_owner(st.st_uid)}, not by you ({_owner(me)})"
        if st.st_mode & WRITABLE_BY_OTHERS and not stat.S_ISLNK(st.st_mode):
            who = "others" if st.st_mode & stat.S_IWOTH else "its group"
            mode = oct(stat.S_IMODE(st.st_mode))
            return f"is writable by {who} (mode {mode}, owned by {_owner(st.st_uid)})"
    return None


def check_trusted(experiment_dir: str | os.PathLike[str], trust: bool = False) -> None:
    """Refuse an experiment directory that is not the user's alone (module docstring), before
    anything in it is read: ``UntrustedDirectoryError`` naming the path, its owner or mode, and
    the opt-in. ``trust=True``: no check (the user vouches for the directory)."""
    if trust or not Path(experiment_dir).exists():
        return
    for path in guarded_paths(experiment_dir):
        try:
            problem = _problem(path)
        except FileNotFoundError:  # removed while we looked (a run directory being cleaned)
            continue
        if problem is not None:
            raise UntrustedDirectoryError(
                f"{path} {problem}. Opening an experiment directory imports and unpickles the "
                "code its specs name, so rf-ray opens only directories that you own and no one "
                "else can write. If you trust whoever can, pass trust=True "
                "(Experiment(..., trust=True)) or --trust; otherwise fix it: chown/chmod go-w "
                "(docs/security.md)"
            )


__all__ = ["check_trusted", "guarded_paths"]
