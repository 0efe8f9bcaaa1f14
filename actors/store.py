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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

RUN_FIELDS = (
    "status",
    "steps_done",
    "chunks_done",
    "parent_run_id",
    "error",
    "checkpoint",
    "adapter_path",
    "mlflow_run_id",
    "pruned_at",
    "last_metric",
    "best_metric",
)


class Store:
    """Thin, transactional access to ``<experiment dir>/rf_ray.db``."""

    FILENAME = "rf_ray.db"

    def __init__(self, experiment_dir: str | Path, readonly: bool = False) -> None:
        self.path = Path(experiment_dir) / self.FILENAME
        if readonly:
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(SCHEMA)
        self._conn.row_factory = sqlite3.Row

    @staticmethod
    def exists(experiment_dir: str | Path) -> bool:
        return (Path(experiment_dir) / Store.FILENAME).exists()

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
        return {r["key"]: json.loads(r["value"]) for r in self._conn.execute("SELECT * FROM meta")}

    # ---------------------------------------------------------------- runs
    def next_run_id(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(run_id), 0) AS m FROM runs").fetchone()
        return int(row["m"]) + 1

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
        **fields: Any,
    ) -> None:
        """One slice's outcome in one transaction: its step metrics, the chunk metrics when the
        slice closed a chunk, and the run's new progress fields."""
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as c:
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
        for r in self._conn.execute("SELECT * FROM runs ORDER BY run_id"):
            row = dict(r)
            row["params"] = json.loads(row["params"])
            out.append(row)
        return out

    def run(self, run_id: int) -> dict[str, Any] | None:
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    def step_metrics(self) -> list[tuple[int, dict[str, float]]]:
        rows = self._conn.execute("SELECT run_id, metrics FROM steps ORDER BY run_id, step")
        return [(int(r["run_id"]), json.loads(r["metrics"])) for r in rows]

    def chunk_metrics(self) -> list[tuple[int, int, dict[str, float]]]:
        rows = self._conn.execute("SELECT * FROM chunks ORDER BY run_id, chunk")
        return [(int(r["run_id"]), int(r["chunk"]), json.loads(r["metrics"])) for r in rows]
