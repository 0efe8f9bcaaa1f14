"""Writing files so that a crash (of the process or of the OS) never leaves a torn one.

``atomic_write`` writes a temporary sibling, fsyncs it, renames it over the target and fsyncs the
directory: a reader sees the old bytes or the new ones, and after ``atomic_write`` returns the
new ones survive a power loss. Experiment files are private to their owner (0600).

``replace_dir`` does the same for a whole directory (a checkpoint): on Linux it swaps the new
directory with the old one in one ``renameat2(RENAME_EXCHANGE)``, so there is no moment where
neither exists. Elsewhere (or on a file system without the call) it renames the old one aside
(``.aside-<name>``) first; a crash between the two renames leaves the aside copy, which
``resolve`` finds and ``recover_asides`` puts back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

FILE_MODE = 0o600
DIR_MODE = 0o700
ASIDE_PREFIX = ".aside-"
"""The old copy of a directory being replaced without ``RENAME_EXCHANGE``."""

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see module docstring)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p`` with mode 0700 for every directory this call creates (``Path.mkdir``
    gives the parents it creates the default mode, not ``mode``)."""
    path = Path(path)
    missing = []
    for level in (path, *path.parents):
        if level.exists():
            break
        missing.append(level)
    for level in reversed(missing):
        level.mkdir(mode=DIR_MODE, exist_ok=True)
    if not path.is_dir():
        path.mkdir()  # raises FileExistsError naming the path (a file is in the way)
    return path


def make_private_tree(path: str | os.PathLike[str]) -> None:
    """Make everything under directory ``path`` (and ``path`` itself) private: directories
    0700, files 0600. For trees another library wrote (``datasets.save_to_disk``, PEFT's
    ``save_pretrained``) with the process's umask."""
    os.chmod(path, DIR_MODE)
    for top, dirs, files in os.walk(path):
        for names, mode in ((dirs, DIR_MODE), (files, FILE_MODE)):
            for name in names:
                entry = os.path.join(top, name)
                if not os.path.islink(entry):  # a link's target is not ours to change
                    os.chmod(entry, mode)


def create_private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist (for a file another library
    opens and would create with the process's umask: a log, an SQLite database)."""
    path = Path(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
    return path


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and directories created meanwhile by code that follows the umask (``datasets``'
    map caches) are private. The umask is the process's: use it only in rf-ray's own processes
    (the executor), around code that writes into the experiment directory."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def fsync_file(path: str | os.PathLike[str], mode: int = FILE_MODE) -> None:
    """Make a file written by another library (safetensors) private and durable."""
    os.chmod(path, mode)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # glibc < 2.28
        return False
    path_t, int_t = ctypes.c_char_p, ctypes.c_int
    renameat2.argtypes = [int_t, path_t, int_t, path_t, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # kernel or file system lacks it
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move directory ``new`` (complete and fsynced) to ``target``, replacing any old one
    without a window where neither exists, and make the result durable (module docstring)."""
    new, target = Path(new), Path(target)
    aside = target.with_name(ASIDE_PREFIX + target.name)
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        fsync_dir(target.parent)
        shutil.rmtree(new)  # now the old copy
    else:
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(target, aside)
        fsync_dir(target.parent)  # the aside copy is durable before the target disappears
        os.rename(new, target)
    fsync_dir(target.parent)
    if aside.exists():
        shutil.rmtree(aside)


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path``, or its aside copy when a crash inside ``replace_dir`` left only that."""
    path = Path(path)
    aside = path.with_name(ASIDE_PREFIX + path.name)
    if not path.exists() and aside.exists():
        return aside
    return path


def recover_asides(directory: str | os.PathLike[str]) -> list[Path]:
    """Finish the ``replace_dir`` calls a crash interrupted in ``directory``: an aside copy
    whose target exists is deleted, one whose target is missing is renamed back. Returns the
    aside copies handled."""
    found = sorted(Path(directory).glob(ASIDE_PREFIX + "*"))
    for aside in found:
        target = aside.with_name(aside.name[len(ASIDE_PREFIX) :])
        if target.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            logger.warning("restoring %s from %s (a replace was interrupted)", target, aside)
            os.rename(aside, target)
    if found:
        fsync_dir(directory)
    return found


def copy_dir(source: str | os.PathLike[str], target_root: str | os.PathLike[str]) -> Path:
    """Durably copy the files of directory ``source`` (or its aside copy) into
    ``target_root/<same name>``, replacing one already there without a window; returns it.
    Light on purpose (no torch): the scheduler copies a parent's checkpoint for a warm clone."""
    import shutil
    import tempfile

    source = resolve(source)
    root = make_private_dir(target_root)
    final = root / source.name.removeprefix(ASIDE_PREFIX)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        for item in sorted(source.iterdir()):
            if item.is_file():
                shutil.copyfile(item, tmp / item.name)
                fsync_file(tmp / item.name)
        fsync_dir(tmp)
        replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
