"""``examples/rag_eval.py`` runs as its docstring says (a fresh process, offline, its own Ray
cluster) and retrieval settings visibly change the reader's answers: BM25 with one document
(the fact's own) answers best, and the interval pruner drops pipelines that are clearly worse."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # one run_evals of 4 pipelines
def test_rag_eval_example(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), RF_RAY_LIVE="0")
    proc = subprocess.run(
        [sys.executable, "examples/rag_eval.py", "--path", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    rows = {}
    for line in proc.stdout.splitlines():
        cells = line.split()
        if len(cells) > 8 and cells[0].isdigit():
            _run, store, k, status = cells[:4]
            rows[(store, int(k))] = (status, float(cells[8]))  # exact match estimate
    assert set(rows) == {("faiss", 1), ("faiss", 3), ("bm25", 1), ("bm25", 3)}
    best = max(rows, key=lambda key: rows[key][1])
    assert best == ("bm25", 1)
    assert rows[best][0] == "completed"
    assert any(status == "pruned" for status, _ in rows.values())
    # run_evals' summary says how it prunes, and each pipeline's estimate at its last shard
    # with its interval (the table's value), not its best shard's
    assert "4 pipelines; pruning: IntervalPruner on exact_match (max)" in proc.stdout
    said = dict(re.findall(r"run (\d+): \w+, shards \d/4, exact_match ([\d.e-]+) \[", proc.stdout))
    assert len(said) == 4, proc.stdout
    assert sorted(round(float(v), 2) for v in said.values()) == sorted(v for _, v in rows.values())
