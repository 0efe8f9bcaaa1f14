"""Evals mode end to end: real Ray actors, the toy generator, FAISS and BM25 retrieval, MLflow.

Pipelines are runs and shards are chunks: every pipeline gets its metrics with confidence
intervals after each shard, the interval pruner drops the clearly worse, a pipeline whose metric
function raises fails alone, and the store, MLflow and ``rf-ray status`` hold the pipelines like
fit runs. Stop, resume, delete and clone-modify work on pipelines as on fit runs."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from langchain_community.embeddings import HuggingFaceEmbeddings
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from mlflow.tracking import MlflowClient

from actors.storage.layout import ExperimentDir
from policies import IntervalPruner
from rf_ray import ConfigError, Experiment
from rf_ray.automl import List, RFGridSearch, RFLangChainRagSpec, RFvLLMModelConfig
from rf_ray.cli import main
from rf_ray.evals.metrics import evals_metrics
from rf_ray.evals.toy import TINY_EMBEDDER, fact_corpus
from rf_ray.experiment import latest_experiment
from rf_ray.plan import Plan
from rf_ray.toy import TOY_MODEL_NAME

DOCS, QUERIES = fact_corpus(num_docs=12, facts_per_doc=3, num_queries=24, seed=3)


class FactLoader(BaseLoader):
    def load(self) -> list[Document]:
        return [Document(d["text"], metadata={"doc_id": d["_id"]}) for d in DOCS]


def preprocess(batch, rag, prompt_manager):
    docs = rag.get_context(batch["query"], serialize=False)
    context = rag.serialize_documents(docs)
    return {
        **batch,
        "retrieved_documents": [[d.metadata["doc_id"] for d in ds] for ds in docs],
        "prompts": [
            [{"role": "user", "content": f"{c} {q}"}] for c, q in zip(context, batch["query"])
        ],
    }


def postprocess(batch):
    return {**batch, "ground_truth_documents": batch["gold_ids"]}


def broken_metrics(batch):
    raise ValueError("no references in this batch")


def config_set(stores, k=2, **extra):
    rag = RFLangChainRagSpec(
        document_loader=FactLoader(),
        embedding_cfg={"class": HuggingFaceEmbeddings, "model_name": TINY_EMBEDDER},
        vector_store_cfg=stores, search_cfg={"type": "similarity", "k": k},
    )  # fmt: skip
    generator = RFvLLMModelConfig(
        model_config={"model": TOY_MODEL_NAME}, sampling_params={"temperature": 0, "max_tokens": 3},
        rag=rag,
    )  # fmt: skip
    return {"vllm_config": generator, "batch_size": 4, "preprocess_fn": preprocess,
            "postprocess_fn": postprocess, **evals_metrics(retrieval_k=2), **extra}  # fmt: skip


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    """FAISS on a random embedder, BM25, and a BM25 pipeline whose metric function raises."""
    root = tmp_path_factory.mktemp("evals-e2e")
    exp = Experiment("evals-e2e", mode="evals", experiment_path=root)
    group = RFGridSearch([
        config_set(List([{"type": "faiss"}, {"type": "bm25"}])),
        config_set({"type": "bm25"}, compute_metrics_fn=broken_metrics),
    ])  # fmt: skip
    try:
        results = exp.run_evals(
            group, QUERIES, num_shards=3, seed=5, live_view=False,
            pruner=IntervalPruner(metric="Recall", mode="max"),
        )  # fmt: skip
    finally:
        exp.end()
    info = exp.get_runs_info().set_index("run_id", drop=False)
    return SimpleNamespace(exp=exp, root=root, results=results, info=info)


def test_shards_are_chunks_and_the_clearly_worse_pipeline_is_pruned(sweep) -> None:
    info = sweep.info
    assert info.loc[1, "config"]["rag.vector_store.type"] == "faiss"
    assert info.loc[2, "status"] == "completed"
    assert info.loc[2, "chunks_done"] == 3
    # BM25 finds every key's fact among 2 of 12 documents; random embeddings do not: after
    # the first shard FAISS's recall interval lies below BM25's.
    assert info.loc[1, "status"] == "pruned"
    assert info.loc[1, "chunks_done"] == 1
    chunks = sweep.exp.get_chunk_results()
    shard1 = chunks[chunks["chunk"] == 1].set_index("run_id")
    assert shard1.loc[1, "Recall/upper"] < shard1.loc[2, "Recall/lower"]


def test_a_raising_metric_fails_only_its_pipeline_named(sweep) -> None:
    row = sweep.info.loc[3]
    assert row["status"] == "failed"
    assert "compute_metrics_fn (broken_metrics)" in row["error"]
    assert "no references" in row["error"]


def test_results_are_rapidfires_shape_with_intervals(sweep) -> None:
    assert sorted(sweep.results) == [1, 2]  # failed pipelines are left out
    rows, metrics = sweep.results[2]
    assert len(rows["generated_text"]) == len(QUERIES)
    assert sorted(rows["query_id"]) == list(range(len(QUERIES)))  # every row once, shuffled
    assert metrics["Samples Processed"]["value"] == len(QUERIES)
    recall = metrics["Recall"]
    assert recall["lower_bound"] <= recall["value"] <= recall["upper_bound"]
    assert recall["ci_method"] == "normal"
    partial_rows, partial = sweep.results[1]
    assert partial["Samples Processed"]["value"] == len(partial_rows["query"]) == 8


def test_each_pipeline_is_an_mlflow_run_and_rf_ray_status_lists_them(sweep, capsys) -> None:
    client = MlflowClient(tracking_uri=sweep.exp.tracking_uri)
    (experiment,) = client.search_experiments(filter_string="name = 'evals-e2e'")
    runs = {r.data.tags["rf_ray.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["1", "2", "3"]
    done = runs["2"]
    assert done.data.params["rag.vector_store.type"] == "bm25"
    history = client.get_metric_history(done.info.run_id, "chunk/Recall")
    assert len(history) == 3
    assert runs["3"].info.status == "FAILED"
    assert main(["status", "evals-e2e", "--path", str(sweep.root), "--json"]) == 0
    status = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert status[1]["status"] == "pruned"
    assert status[2]["status"] == "completed"


def test_rf_ray_status_shows_shards_rows_and_metrics_with_intervals(sweep, capsys) -> None:
    assert main(["status", "evals-e2e", "--path", str(sweep.root)]) == 0
    header, _, *table = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert "rows" in header.split()
    assert "Recall [interval]" in header
    done = next(line for line in table if line.startswith("2 "))
    recall = sweep.results[2][1]["Recall"]
    shown = f"{recall['value']:.3g} [{recall['lower_bound']:.3g}, {recall['upper_bound']:.3g}]"
    assert "3/3" in done
    assert "shard" in header + done  # progress in shards, not chunks
    assert "chunk" not in header + done
    assert shown in done
    assert main(["status", "evals-e2e", "--path", str(sweep.root), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["mode"] == "evals"
    run = next(r for r in status["runs"] if r["run_id"] == 2)
    assert run["intervals"]["Recall"] == pytest.approx(
        {"value": recall["value"], "lower": recall["lower_bound"], "upper": recall["upper_bound"]}
    )


def test_the_live_view_shows_shards_and_the_metric_with_its_interval(
    sweep, capsys, monkeypatch
) -> None:
    from actors.storage.store import Store
    from rf_ray.live import LiveView

    monkeypatch.setenv("RF_RAY_LIVE", "1")  # stdout is not a terminal: one line per change
    exp_dir = sweep.root / "evals-e2e"
    with Store(exp_dir, readonly=True) as store:
        snapshot = store.runs()
    LiveView("evals-e2e", {}, [], exp_dir=exp_dir).update(snapshot)
    lines = capsys.readouterr().out.splitlines()
    recall = sweep.results[2][1]["Recall"]
    shown = f"Recall {recall['value']:.3g} [{recall['lower_bound']:.3g}, "
    assert any("run 2: completed, shard 3/3" in line and shown in line for line in lines), lines
    assert any("run 1: pruned, shard 1/3" in line for line in lines), lines


def test_rf_vllm_model_config_without_vllm_is_said_once_per_experiment(sweep) -> None:
    log = ExperimentDir(sweep.root / "evals-e2e").log_file.read_text().splitlines()
    said = [line for line in log if "so the executor serves it" in line]
    # three pipelines on one generator, three shards: one line, from the driver, saying why
    assert len(said) == 1, said
    assert "[driver" in said[0]
    assert f"RFvLLMModelConfig({TOY_MODEL_NAME}): " in said[0]


def test_a_copied_evals_experiment_resumes_from_its_own_state_files(sweep, tmp_path) -> None:
    """The store records each pipeline's state by its absolute path; a copy (or a moved
    directory) resumes from the state files where it is now."""
    copy = tmp_path / "evals-e2e"
    shutil.copytree(sweep.root / "evals-e2e", copy)
    plan = Plan.from_store(copy)
    checkpoints = {rid: e.checkpoint for rid, e in plan.stored.items() if e.checkpoint}
    assert {1, 2} <= set(checkpoints)  # the pruned pipeline and the completed one
    for rid, path in checkpoints.items():
        assert path == str(ExperimentDir(copy).run(rid).evals_state(plan.stored[rid].steps_done))


def test_the_corpus_is_stored_once_and_each_spec_names_it(sweep) -> None:
    exp_dir = sweep.root / "evals-e2e"
    # three pipelines, one corpus, one file
    (stored,) = ExperimentDir(exp_dir).corpora_dir.iterdir()
    lines = stored.read_text().splitlines()
    assert len(lines) == len(DOCS)
    assert json.loads(lines[0])["metadata"] == {"doc_id": DOCS[0]["_id"]}
    for rid in (1, 2, 3):
        run = ExperimentDir(exp_dir).run(rid)
        assert json.loads(run.pipeline_file.read_text())["corpus"] == stored.stem
        # the stored spec names the corpus; it does not hold its text (the executor read the
        # file back: the pipelines retrieved from it)
        assert DOCS[0]["text"].encode() not in run.pipeline_pickle.read_bytes()


class DatedLoader(BaseLoader):
    def load(self) -> list[Document]:
        return [Document("k q = 1 .", metadata={"doc_id": 0, "seen": object()})]


def test_a_corpus_that_cannot_be_stored_is_refused_before_anything_is_written(tmp_path) -> None:
    rag = RFLangChainRagSpec(document_loader=DatedLoader(), vector_store_cfg={"type": "bm25"})
    generator = RFvLLMModelConfig(model_config={"model": TOY_MODEL_NAME}, rag=rag)
    exp = Experiment("evals-bad-corpus", mode="evals", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match=r"corpus cannot be stored.*\['seen'\].*metadata_func"):
        exp.run_evals({"vllm_config": generator, "preprocess_fn": preprocess}, QUERIES,
                      num_shards=2, live_view=False)  # fmt: skip
    assert not (tmp_path / "evals-bad-corpus").exists()


def test_pipelines_are_stopped_resumed_deleted_and_cloned(ray_cluster, tmp_path) -> None:
    exp = Experiment("evals-ops", mode="evals", experiment_path=tmp_path)
    try:
        exp.run_evals(
            config_set({"type": "bm25"}, k=List([1, 3])), QUERIES, num_shards=4, seed=1,
            live_view=False, blocking=False, batched=False,
        )  # fmt: skip
        assert latest_experiment() is exp  # InteractiveController() steers its pipelines
        exp.wait_for_progress(1, chunks=1, timeout=300)
        clone = exp.clone_modify(1, {"search_cfg": {"k": 2}})["run_id"]
        with pytest.raises(ConfigError, match="warm-start"):
            exp.clone_modify(1, {"search_cfg": {"k": 2}}, warm_start=True)
        exp.stop(2)
        assert exp.wait_for_progress(2, chunks=4, timeout=300)["status"] == "stopped"
        exp.resume(2)
        exp.wait_for_progress(clone, chunks=1, timeout=300)
        exp.delete(clone)
        info = exp.wait().set_index("run_id")
    finally:
        exp.end()
    assert info.loc[1, "status"] == "completed"
    assert info.loc[2, "status"] == "completed"
    assert info.loc[clone, "status"] == "deleted"
    assert info.loc[clone, "parent_run_id"] == 1
    assert info.loc[clone, "config"]["rag.search.k"] == 2
    assert sorted(exp.get_evals_results()) == [1, 2]
