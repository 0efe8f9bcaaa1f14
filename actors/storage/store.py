"""The experiment store: one SQLite file per experiment directory.

It holds the experiment's metadata (data fingerprint, settings), every run (config, status,
progress, error, latest checkpoint, MLflow run id) and every logged metric, per optimizer step
and per chunk. Each write is one transaction, so a crash leaves the previous state intact; the
scheduler is the only writer while an experiment runs, readers (the driver, ``rf-ray status``)
open it read-only. Plain ``sqlite3``: no ORM, nothing to install.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from actors.messages import PROGRESS_COLUMNS
from actors.storage.durable import create_private_file, make_private_dir
from actors.storage.layout import STORE_FILE, ExperimentDir
from policies.errors import DamagedFileError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL,
    total_chunks INTEGER NOT NULL,
    parent_run_id INTEGER,
    error TEXT,
    checkpoint TEXT,
    adapter_path TEXT,
    mlflow_run_id TEXT,
    pruned_at INTEGER,
    last_metric REAL,
    best_metric REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    failed_by TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL, step INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS chunks (
    run_id INTEGER NOT NULL, chunk INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, chunk)
);
"""

RUN_FIELDS = (*PROGRESS_COLUMNS, "chunks_done", "parent_run_id", "adapter_path")
"""Columns ``update_run`` may set: a run's progress as ``RunEntry.columns`` writes it (the one
list of them, ``actors.messages.PROGRESS_COLUMNS``), and what the scheduler's record of the run
does not hold."""

ADDED_COLUMNS = {"failures": "INTEGER NOT NULL DEFAULT 0", "failed_by": "TEXT"}
"""Run columns added after the first release: added to an older store when it is opened."""


RESERVED_KEY = "reserved_run_id"
"""Meta key: the highest run id handed out by ``reserve_run_ids`` (used or not)."""
PRUNING_ERROR_KEY = "pruning_error"
"""The meta key that says why pruning stopped (``SchedulerCore.pruning_error``), kept so that a
resumed experiment stays unpruned."""


class Store:
    """Thin, transactional access to ``<experiment dir>/rf_ray.db``; use it as a context
    manager (``with Store(dir) as store:``) so the connection is always closed."""

    FILENAME = STORE_FILE

    def __init__(self, experiment_dir: str | Path, readonly: bool = False) -> None:
        self.dir = Path(experiment_dir)
        self.path = ExperimentDir(self.dir).store
        if readonly:
            self._conn = sqlite3.connect(readonly_uri(self.path), uri=True, timeout=30)
        else:
            make_private_dir(self.path.parent)
            create_private_file(self.path)  # private from the first byte: 0600
            self._conn = sqlite3.connect(self.path, timeout=30)
        try:
            with self._reading():
                self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if not readonly:
                    self._create()
        except BaseException:
            self._conn.close()
            raise
        self._conn.row_factory = sqlite3.Row

    def _create(self) -> None:
        """WAL mode (readers never block the writer), the tables, columns added since."""
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        have = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
        for column, decl in ADDED_COLUMNS.items():
            if column not in have:
                self._conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {decl}")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A store SQLite cannot read (not a database, torn pages) or whose JSON is not rf-ray's
        raises one ``DamagedFileError`` naming the file, not a driver error's traceback."""
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.IntegrityError):
            raise  # a closed connection, a duplicate key: the caller's, not the file's
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise  # contention, not damage
            raise self._damaged(exc) from exc
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError) as exc:
            raise self._damaged(exc) from exc

    def _damaged(self, exc: BaseException) -> DamagedFileError:
        return DamagedFileError(
            self.path,
            f"not a readable rf-ray experiment store ({type(exc).__name__}: {exc}); restore it "
            "from a backup, or start over under another experiment name",
        )

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @staticmethod
    def exists(experiment_dir: str | Path) -> bool:
        return ExperimentDir(experiment_dir).store.exists()

    @staticmethod
    def listed(directory: str | Path) -> bool:
        """Whether a directory met while listing a root holds a store (``exists``); False for
        one this user may not look into (another user's, in a shared root: ``exists`` raises
        ``PermissionError``), which listings leave out and go on."""
        try:
            return Store.exists(directory)
        except PermissionError:
            return False

    @staticmethod
    def put_to_rest(experiment_dir: str | Path, timeout: float = 1.0) -> bool:
        """Fold the write-ahead log into the store and leave WAL mode, so that no
        ``rf_ray.db-wal``/``-shm`` stays beside it and readers create none (a read-only
        connection to a WAL store creates both and cannot remove them). Call once nobody
        writes (the experiment's lock held); the next writer turns WAL on again. False when
        another connection keeps the store busy (then nothing changed)."""
        path = ExperimentDir(experiment_dir).store
        if not path.exists():
            return True
        conn = sqlite3.connect(path, timeout=timeout)
        try:
            mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        except sqlite3.DatabaseError:  # a reader holds it open right now, or it is damaged
            return False
        finally:
            conn.close()
        return str(mode).lower() == "delete"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._conn:  # commits on success, rolls back on error
            yield self._conn

    def close(self) -> None:
        self._conn.close()

    # ---------------------------------------------------------------- meta
    def set_meta(self, **values: Any) -> None:
        with self._tx() as c:
            c.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        with self._reading():
            rows = self._conn.execute("SELECT * FROM meta").fetchall()
            return {r["key"]: json.loads(r["value"]) for r in rows}

    # ---------------------------------------------------------------- runs
    def next_run_id(self) -> int:
        """The first run id not taken: above every run in the table, every id reserved (a
        refused clone burns its id) and every ``runs/<id>`` directory on disk."""
        return self._next_id(self._conn)

    def _next_id(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT COALESCE(MAX(run_id), 0) AS m FROM runs").fetchone()
        reserved = conn.execute("SELECT value FROM meta WHERE key = ?", (RESERVED_KEY,)).fetchone()
        on_disk = ExperimentDir(self.dir).run_ids_on_disk()
        taken = max(int(row["m"]), int(json.loads(reserved["value"])) if reserved else 0)
        return max([taken, *on_disk]) + 1

    def reserve_run_ids(self, n: int = 1) -> list[int]:
        """Reserve ``n`` fresh run ids atomically (``BEGIN IMMEDIATE``: no other writer can hand
        out the same ids); a reserved id is never handed out again, used or not."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            first = self._next_id(conn)
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                (RESERVED_KEY, json.dumps(first + n - 1)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return list(range(first, first + n))

    def add_run(
        self,
        run_id: int,
        params: dict[str, Any],
        status: str,
        total_steps: int,
        total_chunks: int,
        parent_run_id: int | None = None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs(run_id, params, status, total_steps, total_chunks,"
                " parent_run_id, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    json.dumps(params),
                    status,
                    total_steps,
                    total_chunks,
                    parent_run_id,
                    time.time(),
                ),
            )

    def undo_start(self, run_ids: list[int], meta: dict[str, Any]) -> None:
        """Undo a start that failed, in one transaction: remove the runs it added (their ids
        stay taken: their spec files remain) and put the settings back as they were (``meta``,
        as read before the start)."""
        with self._tx() as c:
            for table in ("runs", "steps", "chunks"):
                c.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(r,) for r in run_ids])
            c.execute("DELETE FROM meta")
            c.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in meta.items()],
            )

    def update_run(self, run_id: int, **fields: Any) -> None:
        unknown = set(fields) - set(RUN_FIELDS)
        if unknown:
            raise KeyError(f"unknown run fields {sorted(unknown)}; known: {RUN_FIELDS}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as c:
            c.execute(
                f"UPDATE runs SET {cols}, updated = ? WHERE run_id = ?",
                (*fields.values(), time.time(), run_id),
            )

    def record_slice(
        self,
        run_id: int,
        step_metrics: list[dict[str, float]],
        chunk: tuple[int, dict[str, float]] | None,
        meta: dict[str, Any] | None = None,
        others: dict[int, dict[str, Any]] | None = None,
        **fields: Any,
    ) -> None:
        """One slice's outcome in one transaction: its step metrics, the chunk metrics when the
        slice closed a chunk, the run's new progress fields, ``meta`` (the pruner's state, which
        must never disagree with the chunks recorded) and ``others``: fields of other runs that
        changed with it (runs the pruner stopped)."""
        for changed in (fields, *(others or {}).values()):
            unknown = set(changed) - set(RUN_FIELDS)
            if unknown:
                raise KeyError(f"unknown run fields {sorted(unknown)}; known: {RUN_FIELDS}")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as c:
            for other, changed in (others or {}).items():
                c.execute(
                    f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changed)}, updated = ?"
                    " WHERE run_id = ?",
                    (*changed.values(), time.time(), other),
                )
            if meta:
                c.executemany(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    [(k, json.dumps(v)) for k, v in meta.items()],
                )
            c.executemany(
                "INSERT OR REPLACE INTO steps(run_id, step, metrics) VALUES (?, ?, ?)",
                [(run_id, int(m["step"]), json.dumps(m)) for m in step_metrics],
            )
            if chunk is not None:
                c.execute(
                    "INSERT OR REPLACE INTO chunks(run_id, chunk, metrics) VALUES (?, ?, ?)",
                    (run_id, chunk[0], json.dumps(chunk[1])),
                )
            if fields:
                c.execute(
                    f"UPDATE runs SET {cols}, updated = ? WHERE run_id = ?",
                    (*fields.values(), time.time(), run_id),
                )

    def runs(self) -> list[dict[str, Any]]:
        out = []
        with self._reading():
            for r in self._conn.execute("SELECT * FROM runs ORDER BY run_id").fetchall():
                row = dict(r)
                row["params"] = json.loads(row["params"])
                out.append(row)
        return out

    def run_columns(self) -> list[str]:
        """The names of a run row's fields, in the order ``runs`` gives them."""
        with self._reading():
            return [str(r[1]) for r in self._conn.execute("PRAGMA table_info(runs)").fetchall()]

    def run(self, run_id: int) -> dict[str, Any] | None:
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    def step_metrics(self, run_id: int | None = None) -> list[tuple[int, dict[str, float]]]:
        """(run id, step metrics) rows in step order, of every run or of ``run_id``."""
        with self._reading():
            if run_id is None:
                rows = self._conn.execute("SELECT run_id, metrics FROM steps ORDER BY run_id, step")
            else:
                rows = self._conn.execute(
                    "SELECT run_id, metrics FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
                )
            return [(int(r["run_id"]), json.loads(r["metrics"])) for r in rows.fetchall()]

    def chunk_metrics(self) -> list[tuple[int, int, dict[str, float]]]:
        with self._reading():
            rows = self._conn.execute("SELECT * FROM chunks ORDER BY run_id, chunk").fetchall()
            return [(int(r["run_id"]), int(r["chunk"]), json.loads(r["metrics"])) for r in rows]


def readonly_uri(path: Path) -> str:
    """SQLite's read-only URI for ``path``, escaped: a directory named with ``#``, ``?`` or ``%``
    would otherwise end the path early (and open, or create, another file)."""
    quoted = urllib.parse.quote(str(Path(path).resolve()), safe="/")
    return f"file:{quoted}?mode=ro"
