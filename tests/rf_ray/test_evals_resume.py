"""An evals experiment whose driver dies resumes and ends with the metrics of an uninterrupted
one: ``Experiment(name, mode="evals").resume()`` after the driver's whole process tree (its Ray
cluster included) was killed between shards.

A pipeline's recorded shard is durable (its state file, written before the shard counts); the
shard in flight when the driver died is run again from the last recorded one. A sampling
pipeline's RNG stream is in its state, so it draws on as if nothing happened.
"""

from __future__ import annotations

import pytest

from rf_ray import Experiment
from rf_ray.automl import List, RFGridSearch, RFLangChainRagSpec, RFvLLMModelConfig
from rf_ray.evals.metrics import evals_metrics
from rf_ray.evals.toy import TINY_READER, fact_corpus
from tests.processes import KilledDriver
from tests.rf_ray.test_evals import FactLoader, postprocess, preprocess
from tests.waits import store_runs

pytestmark = pytest.mark.slow

_, QUERIES = fact_corpus(num_docs=12, facts_per_doc=3, num_queries=12, seed=3)
SHARDS = 3


def _evals(exp: Experiment) -> None:
    rag = RFLangChainRagSpec(document_loader=FactLoader(), vector_store_cfg={"type": "bm25"},
                             search_cfg={"type": "similarity", "k": 2})  # fmt: skip
    generator = RFvLLMModelConfig(
        model_config={"model": TINY_READER},
        sampling_params=List([{"temperature": 0, "max_tokens": 3},
                              {"temperature": 1.5, "max_tokens": 3, "seed": 7}]),
        rag=rag,
    )  # fmt: skip
    config = {"vllm_config": generator, "batch_size": 2, "preprocess_fn": preprocess,
              "postprocess_fn": postprocess,
              **evals_metrics(retrieval_k=2, generation=("exact_match",))}  # fmt: skip
    exp.run_evals(RFGridSearch(config), QUERIES, num_shards=SHARDS, seed=4, live_view=False)


def _outcome(exp: Experiment) -> dict[int, tuple[dict, dict]]:
    return {rid: (rows, metrics) for rid, (rows, metrics) in exp.get_evals_results().items()}


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    exp = Experiment("reference", mode="evals", experiment_path=tmp_path_factory.mktemp("ref"))
    try:
        _evals(exp)
    finally:
        exp.end()
    return _outcome(exp)


DRIVER = """
from rf_ray import Experiment
from tests.rf_ray.test_evals_resume import _evals
_evals(Experiment("killed", mode="evals", experiment_path={root!r}))
"""


def _midway(runs: list[dict]) -> bool:
    """Every pipeline has a recorded shard and some have shards to go."""
    return all(r["chunks_done"] for r in runs) and any(r["chunks_done"] < SHARDS for r in runs)


def test_a_resumed_evals_experiment_ends_with_the_uninterrupted_metrics(reference, tmp_path):
    exp_dir = tmp_path / "killed"
    with KilledDriver(tmp_path, DRIVER.format(root=str(tmp_path)), prefix="rfv") as driver:
        driver.freeze_when(exp_dir, "a shard of each recorded, shards to go", _midway)
    assert _midway(store_runs(exp_dir)), "the driver must die with shards to go"
    exp = Experiment("killed", mode="evals", experiment_path=tmp_path)
    try:
        exp.resume(live_view=False)
    finally:
        exp.end()
    outcome = _outcome(exp)
    assert sorted(outcome) == sorted(reference) == [1, 2]
    sampled = reference[2][0]["generated_text"]  # temperature 1.5: its draws vary by row
    assert len(set(sampled)) > 1, sampled
    for rid, (rows, metrics) in reference.items():
        assert outcome[rid][1] == metrics, rid  # values and intervals alike
        assert outcome[rid][0]["generated_text"] == rows["generated_text"], rid
