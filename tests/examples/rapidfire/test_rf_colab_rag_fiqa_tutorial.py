"""RapidFire AI's RAG tutorial (``rf-colab-rag-fiqa-tutorial.ipynb``), ported with only
imports, models, data and sizes changed, runs as a user runs it (a fresh process, offline, its
own local Ray cluster) on a small FiQA-shaped corpus built here: 2 splitters x 2 reranker
top_n = 4 pipelines over 4 shards, each with RapidFire's metrics and confidence intervals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rf_ray import Experiment
from rf_ray.evals.toy import fact_corpus
from rf_ray.experiment import DEFAULT_ROOT

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("rf_colab_rag_fiqa_tutorial.py")


def build_fiqa_like(directory: Path) -> int:
    """queries.jsonl, qrels.tsv and corpus.jsonl in FiQA's (BEIR's) layout; returns the
    number of queries."""
    docs, queries = fact_corpus(num_docs=10, facts_per_doc=3, num_queries=16, seed=4)
    fiqa = directory / "fiqa"
    fiqa.mkdir(parents=True)
    with open(fiqa / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"_id": str(100 + d["_id"]), "title": "", "text": d["text"]}) + "\n")
    with open(fiqa / "queries.jsonl", "w") as f:
        for q in queries:
            f.write(json.dumps({"_id": str(q["query_id"]), "text": q["query"]}) + "\n")
    with open(fiqa / "qrels.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in queries:
            f.write(f"{q['query_id']}\t{100 + q['gold_ids'][0]}\t1\n")
    return len(queries)


def test_the_ported_tutorial_runs_its_four_pipelines(tmp_path: Path) -> None:
    n = build_fiqa_like(tmp_path / "datasets")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(ROOT), RF_RAY_LIVE="0")
    proc = subprocess.run(  # where a notebook runs: beside its datasets/
        [sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    assert f"Using {n} queries" in proc.stdout
    assert "Done!" in proc.stdout
    exp = Experiment("exp1-fiqa-rag-colab", mode="evals", experiment_path=tmp_path / DEFAULT_ROOT)
    info = exp.get_runs_info().sort_values("run_id")
    knobs = [(c["rag.text_splitter"], c["rag.reranker.top_n"]) for c in info["config"]]
    assert knobs == [
        ("RecursiveCharacterTextSplitter(16/4)", 2),
        ("RecursiveCharacterTextSplitter(16/4)", 5),
        ("RecursiveCharacterTextSplitter(8/4)", 2),
        ("RecursiveCharacterTextSplitter(8/4)", 5),
    ]
    assert set(info["status"]) == {"completed"}
    assert set(info["chunks_done"]) == {4}
    results = exp.get_evals_results()
    for _, metrics in results.values():
        assert metrics["Total"]["value"] == n
        ndcg = metrics["NDCG@5"]
        assert ndcg["lower_bound"] <= ndcg["value"] <= ndcg["upper_bound"]
        assert ndcg["confidence_level"] == 0.95
    assert "NDCG@5" in proc.stdout  # the results table the notebook shows
