"""The dashboard's read side: experiments under a root, and one experiment's state, read from
its store without disturbing the scheduler.

The store is opened read-only (SQLite ``mode=ro`` on a WAL database: a reader never blocks the
scheduler's writes), and whether an experiment is running is read from the kernel's lock table
(``rf_ray.steerable.is_running``) rather than by trying its lock: a dashboard that took the lock
even for a moment, every two seconds, could make a driver starting at that moment think the
experiment was already running.

Reads are incremental, so a page polling an experiment of 64 runs gets small answers: runs whose
row changed since ``runs_after`` (the store's ``updated`` column), and step and chunk metrics
written since a row cursor (SQLite's ``rowid``, which grows with every insert or replace).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store, readonly_uri
from actors.storage.trust import check_trusted
from policies.errors import ConfigError, DamagedFileError, UntrustedDirectoryError
from policies.redact import redact
from policies.settings import stored_settings
from rf_ray.evals.progress import interval_text, last_intervals
from rf_ray.evals.store import has_pipeline_spec
from rf_ray.live import chunk_progress
from rf_ray.steerable import is_running

logger = logging.getLogger(__name__)

MAX_POINTS = 5000
"""Step or chunk rows in one answer; the page asks again at once when ``more`` is set."""

ERROR_CHARS = 4000
"""A run's error (often a traceback) is cut to its last this many characters."""


def finite(value: Any) -> Any:
    """NaN and inf become None (``json`` would write invalid JSON), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Root:
    """Where the dashboard looks: a root holding experiment directories, or one experiment
    directory (then it is the only experiment shown)."""

    path: Path
    only: str | None = None
    trust: bool = False
    """Serve experiment directories that are not the user's alone (``check_trusted``)."""

    @classmethod
    def at(cls, path: str | Path, trust: bool = False) -> Root:
        p = Path(path).resolve()
        if Store.exists(p):
            return cls(p.parent, only=p.name, trust=trust)
        if not p.is_dir():
            raise ConfigError(
                f"--path {str(path)!r} is not a directory; pass an experiments root or an "
                "experiment directory"
            )
        return cls(p, trust=trust)

    def names(self) -> list[str]:
        if self.only is not None:
            return [self.only]
        return sorted(d.name for d in self.path.iterdir() if d.is_dir() and Store.listed(d))

    def dir_of(self, name: str) -> Path:
        """The directory of experiment ``name``; only names listed here (no ``..`` tricks), and
        only one that is the user's alone unless ``trust`` (else ``UntrustedDirectoryError``)."""
        if name not in self.names():
            raise LookupError(f"no experiment {name!r} under {self.path}")
        check_trusted(self.path / name, self.trust)
        return self.path / name


def list_experiments(root: Root) -> list[dict[str, Any]]:
    """One summary per experiment: name, running, recorded status, run counts by status."""
    out = []
    for name in root.names():
        exp_dir = root.path / name
        try:
            check_trusted(exp_dir, root.trust)
            with _connect(exp_dir) as conn:
                status = _meta_value(conn, "status")
                counts = Counter(r[0] for r in conn.execute("SELECT status FROM runs"))
        except (sqlite3.Error, ValueError) as exc:  # shown as unreadable; the others go on
            logger.warning("cannot read the store of %s: %s", exp_dir, exc)
            why = "untrusted" if isinstance(exc, UntrustedDirectoryError) else "unreadable"
            out.append(_unreadable(name, why, str(exc)))
            continue
        out.append(
            {
                "name": name,
                "running": is_running(exp_dir),
                "status": status or "unknown",
                "runs": sum(counts.values()),
                "by_status": dict(sorted(counts.items())),
            }
        )
    return out


def _unreadable(name: str, status: str, error: str) -> dict[str, Any]:
    """An experiment the list shows but does not read (``error`` says why)."""
    return {"name": name, "running": False, "status": status, "runs": 0, "by_status": {},
            "error": error}  # fmt: skip


@dataclass(frozen=True)
class Cursor:
    """What the page already has: run rows updated before ``runs_after`` (the store's clock),
    step and chunk rows up to these rowids."""

    runs_after: float = 0.0
    steps_after: int = 0
    chunks_after: int = 0


def read_state(exp_dir: Path, cursor: Cursor) -> dict[str, Any]:  # one snapshot, one answer
    """What changed in one experiment since ``cursor``: the runs whose row changed (with their
    redacted params), new step losses and chunk metrics, the knobs that differ across all runs
    (the same ``specs.differing_keys`` as ``rf-ray status``) and the cursor to send next time."""
    from rf_ray.specs import differing_keys

    with _connect(exp_dir) as conn:
        conn.execute("BEGIN")  # one snapshot for all reads (WAL: the writer is not blocked)
        meta = {r[0]: json.loads(r[1]) for r in conn.execute("SELECT key, value FROM meta")}
        all_params = [
            (int(r[0]), json.loads(r[1]))
            for r in conn.execute("SELECT run_id, params FROM runs ORDER BY run_id")
        ]
        runs = [dict(r) for r in conn.execute(
            "SELECT run_id, status, steps_done, chunks_done, total_steps, total_chunks,"
            " parent_run_id, error, mlflow_run_id, pruned_at, last_metric, best_metric, updated"
            " FROM runs WHERE updated >= ? ORDER BY run_id", (cursor.runs_after,),
        )]  # fmt: skip
        steps = conn.execute(
            "SELECT rowid, run_id, step, metrics FROM steps WHERE rowid > ? ORDER BY rowid"
            " LIMIT ?", (cursor.steps_after, MAX_POINTS),
        ).fetchall()  # fmt: skip
        chunks = conn.execute(
            "SELECT rowid, run_id, chunk, metrics FROM chunks WHERE rowid > ? ORDER BY rowid"
            " LIMIT ?", (cursor.chunks_after, MAX_POINTS),
        ).fetchall()  # fmt: skip
        evals = bool(all_params) and has_pipeline_spec(exp_dir, all_params[0][0])
        last_shards = conn.execute(  # an evals pipeline's estimate: its last shard's
            "SELECT run_id, chunk, metrics FROM chunks WHERE (run_id, chunk) IN"
            " (SELECT run_id, MAX(chunk) FROM chunks GROUP BY run_id)"
        ).fetchall() if evals else None  # fmt: skip
    settings = stored_settings(meta)
    pruner = settings.get("pruner") or {}
    metric = pruner.get("metric") or "loss"
    params = dict(all_params)
    estimates = None if last_shards is None else _estimates(last_shards, metric)
    for row in runs:
        row["interval"] = (estimates or {}).get(row["run_id"])
        if row["error"] and len(row["error"]) > ERROR_CHARS:
            row["error"] = "..." + row["error"][-ERROR_CHARS:]
        row["params"] = redact(params.get(row["run_id"], {}))
        row["progress"] = chunk_progress(
            row["chunks_done"], row["total_chunks"], settings.get("num_chunks")
        )
    return finite(
        {
            "name": meta.get("name", exp_dir.name),
            "running": is_running(exp_dir),
            "status": meta.get("status", "unknown"),
            "metric": metric,
            "mode": pruner.get("mode"),
            "pruner": pruner.get("type"),
            "num_chunks": settings.get("num_chunks"),
            "evals": estimates is not None,
            "differing": differing_keys([p for _, p in all_params]),
            "run_ids": [run_id for run_id, _ in all_params],
            "runs": runs,
            "steps": _points(steps, "step", "loss"),
            "chunks": _points(chunks, "chunk", metric),
            "more": len(steps) == MAX_POINTS or len(chunks) == MAX_POINTS,
            "cursor": {
                "runs_after": max([cursor.runs_after, *(r["updated"] for r in runs)]),
                "steps_after": steps[-1][0] if steps else cursor.steps_after,
                "chunks_after": chunks[-1][0] if chunks else cursor.chunks_after,
            },
        }
    )


def _estimates(last_shards: list[Any], metric: str) -> dict[int, str]:
    """Each evals pipeline judged by its last shard's estimate of ``metric`` with its interval
    (``"0.2 [0.1, 0.3]"``), from its last chunk row."""
    intervals = last_intervals([(int(r[0]), int(r[1]), json.loads(r[2])) for r in last_shards])
    return {
        run_id: interval_text(per_run[metric])
        for run_id, per_run in intervals.items()
        if metric in per_run
    }


def _points(rows: list[Any], x: str, metric: str) -> dict[int, list[list[float | None]]]:
    """``{run_id: [[x, value], ...]}`` of ``metric`` from step or chunk rows that have it."""
    out: dict[int, list[list[float | None]]] = {}
    for _rowid, run_id, position, text in rows:
        value = json.loads(text).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.setdefault(int(run_id), []).append([int(position), float(value)])
    return out


def run_params(exp_dir: Path, run_id: int) -> dict[str, Any] | None:
    """One run's flat params, redacted (the clone form's starting values)."""
    with _connect(exp_dir) as conn:
        row = conn.execute("SELECT params FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else redact(json.loads(row[0]))


@contextmanager
def _connect(exp_dir: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the experiment's store, closed on exit. (``Store`` has no
    incremental reads by rowid; this reads the same tables, never writes.) A store that cannot
    be read raises ``DamagedFileError`` naming it."""
    path = ExperimentDir(exp_dir).store
    conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    except (sqlite3.ProgrammingError, sqlite3.IntegrityError):
        raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise
        raise DamagedFileError(path, f"not a readable rf-ray experiment store ({exc})") from exc
    except (sqlite3.DatabaseError, json.JSONDecodeError) as exc:
        raise DamagedFileError(path, f"not a readable rf-ray experiment store ({exc})") from exc
    finally:
        conn.close()


def _meta_value(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])
