"""What rf-ray's processes log, and where: the experiment's log file and the noise rf-ray
silences. Used by the driver (``rf_ray.experiment``) and by every actor process.

``attach(experiment_dir, role)`` writes the records of rf-ray's loggers (``rf_ray``, ``actors``,
``policies``) from INFO up to ``<experiment dir>/rf_ray.log``, in whichever process calls it (the
driver, the scheduler, the executors and the trials all append to the one file, each line
tagged with its role and pid). What reaches the console does not change: a record goes on to
the root logger's handlers exactly when it would have without the file (at the level the
application set, WARNING by default), so an application that never configured logging still
sees warnings, and one that did is not flooded with rf-ray's INFO lines.

``quiet()`` drops lines rf-ray itself causes and a user cannot act on: Ray's notice that token
authentication is on (rf-ray starts the local cluster with Ray's defaults), MLflow creating the
embedded sqlite tables rf-ray chose, bitsandbytes failing to fetch an optional CPU kernel from
the Hub in offline mode (the ``rapidfire`` extra installs it), PEFT's note when the executor
deletes a run's adapter (it does that on purpose, to free a finished run), and TRL's calls of a
transformers property deprecated in v5 (``is_gradient_checkpointing``). Warnings a user's config
causes are kept.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from actors.storage.durable import create_private_file
from actors.storage.layout import LOG_FILE, ExperimentDir

"""An experiment's log, in its directory (``Experiment.get_log_file_path``)."""
LOGGERS = ("rf_ray", "actors", "policies")
"""rf-ray's loggers; their records from INFO up go to the log file."""

QUIET_LOGS: tuple[tuple[str, str], ...] = (
    ("ray._private.authentication.authentication_token_setup",
     "Token authentication is enabled for this Ray cluster"),
    ("mlflow.store.db.utils", "Creating initial MLflow database tables"),
    ("mlflow.store.db.utils", "Updating database tables"),
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
    ("kernels._internals.hf_hub", "Skipping publisher trust check"),
)  # fmt: skip
"""(logger, start of the message) of each log line ``quiet`` drops."""
QUIET_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"Adapter .* was active which is now deleted", UserWarning, r"peft\."),
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\."),
)
"""(message regex, category, module regex) of each ``warnings`` message ``quiet`` drops."""

_files: dict[Path, logging.Handler] = {}
_saved: dict[str, tuple[int, bool]] = {}
_forwards: dict[str, logging.Handler] = {}
_quieted = False


def log_path(experiment_dir: str | os.PathLike[str]) -> Path:
    return ExperimentDir(experiment_dir).log_file


def attach(experiment_dir: str | os.PathLike[str], role: str) -> Path:
    """Append rf-ray's log records (INFO and up) from this process to the experiment's log
    file; once per directory per process. Returns the file's path."""
    path = log_path(experiment_dir)
    if path in _files:
        return path
    create_private_file(path)  # 0600 whatever the umask, before logging opens it
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s [{role} pid=%(process)d] %(name)s: %(message)s"
        )
    )
    if not _files:
        _take_over()
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    _files[path] = handler
    return path


def attached() -> list[Path]:
    """The log files this process writes to now."""
    return list(_files)


def detach(experiment_dir: str | os.PathLike[str]) -> None:
    """Stop writing this process's records to the experiment's log file."""
    handler = _files.pop(log_path(experiment_dir), None)
    if handler is None:
        return
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()
    if not _files:
        _give_back()


def _take_over() -> None:
    """Let INFO records through rf-ray's loggers (for the file) while the console gets what it
    got before: propagation is replaced by a handler that applies the old threshold."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        _saved[name] = (logger.level, logger.propagate)
        forward = _Forward(name, logger.level)
        _forwards[name] = forward
        logger.addHandler(forward)
        logger.propagate = False
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def _give_back() -> None:
    for name, (level, propagate) in _saved.items():
        logger = logging.getLogger(name)
        logger.removeHandler(_forwards.pop(name))
        logger.setLevel(level)
        logger.propagate = propagate
    _saved.clear()


class _Forward(logging.Handler):
    """Hands a record to the root logger's handlers (or Python's last-resort stderr handler when
    there are none) iff the logger would have let it through at its own level, or, with none
    set, at the root's: what propagation did before ``attach``."""

    def __init__(self, logger: str, own_level: int) -> None:
        super().__init__()
        self.logger = logger
        self.own_level = own_level

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger(self.logger).propagate:
            return  # someone turned propagation back on: it delivers the record already
        root = logging.getLogger()
        threshold = self.own_level or root.getEffectiveLevel()
        if record.levelno < threshold:
            return
        handlers = root.handlers or ([logging.lastResort] if logging.lastResort else [])
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet() -> None:
    """Install the filters of ``QUIET_LOGS`` and ``QUIET_WARNINGS`` in this process (once)."""
    global _quieted
    if _quieted:
        return
    _quieted = True
    by_logger: dict[str, list[str]] = {}
    for name, prefix in QUIET_LOGS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logging.getLogger(name).addFilter(_DropLines(tuple(prefixes)))
    ignore_warnings()


def ignore_warnings() -> None:
    """Add the ``QUIET_WARNINGS`` filters to the current ``warnings`` filters (``quiet`` does it
    once per process; inside ``warnings.catch_warnings`` call it again)."""
    for message, category, module in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


__all__ = [
    "LOGGERS",
    "LOG_FILE",
    "QUIET_LOGS",
    "QUIET_WARNINGS",
    "attach",
    "attached",
    "detach",
    "log_path",
    "quiet",
]
