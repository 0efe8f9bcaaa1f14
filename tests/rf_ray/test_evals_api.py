"""RFAPIModelConfig pipelines in a full run_evals, against a stub OpenAI-compatible server on
127.0.0.1 that the test starts and stops.

The endpoint limits its rate the way real ones do (429 with ``Retry-After``) and fails once
(503): the client retries both, and every row still gets its answer. An API pipeline's shard
runs beside the executor's work: while the endpoint holds its requests, the local pipeline on
the same executor generates all its shards."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from rf_ray import Experiment
from rf_ray.automl import RFAPIModelConfig, RFGridSearch, RFLangChainRagSpec, RFvLLMModelConfig
from rf_ray.evals.metrics import evals_metrics
from rf_ray.toy import TOY_MODEL_NAME
from tests.rf_ray.api_stub import Endpoint, endpoint
from tests.rf_ray.test_evals import QUERIES, FactLoader, postprocess, preprocess

ROWS = QUERIES[:8]
HOLD_SECONDS = 240.0
"""Bound on how long the stub holds requests for the test (released at once when it may)."""


@pytest.fixture(scope="module")
def stub() -> Iterator[Endpoint]:
    with endpoint(hold=True, failures=[429, 429, 503]) as state:
        yield state


def _config_sets(base_url: str) -> list[dict]:
    rag = RFLangChainRagSpec(document_loader=FactLoader(), vector_store_cfg={"type": "bm25"},
                             search_cfg={"type": "similarity", "k": 2})  # fmt: skip
    local = RFvLLMModelConfig(
        model_config={"model": TOY_MODEL_NAME}, sampling_params={"temperature": 0, "max_tokens": 2},
        rag=rag,
    )  # fmt: skip
    api = RFAPIModelConfig(  # RapidFire's endpoint_config, at the stub's OpenAI-compatible root
        client_config={"timeout": HOLD_SECONDS + 30, "max_retries": 4},
        endpoint_config={"provider": "openai", "api_key": "sk-stub", "api_base_url": base_url,
                         "endpoint": {"model": "stub-model", "name": "stub"}},
        model_config={"temperature": 0}, rag=rag, rpm_limit=1000, max_completion_tokens=8,
    )  # fmt: skip
    shared = {"batch_size": 4, "preprocess_fn": preprocess, "postprocess_fn": postprocess,
              **evals_metrics(retrieval_k=2, generation=("exact_match",))}  # fmt: skip
    return [{"vllm_config": local, **shared}, {"api_config": api, **shared}]


@pytest.fixture(scope="module")
def run(ray_cluster, stub, tmp_path_factory) -> Iterator[SimpleNamespace]:
    exp = Experiment("evals-api", mode="evals", experiment_path=tmp_path_factory.mktemp("api"))
    try:
        exp.run_evals(RFGridSearch(_config_sets(stub.url)), ROWS, num_shards=2, seed=2,
                      live_view=False, blocking=False)  # fmt: skip
        # Run 1 is local; run 2 calls the endpoint, which holds every request until released.
        # Once run 2's first shard is waiting there, run 1 must finish all its shards.
        assert stub.arrived.wait(120), "the API pipeline never called its endpoint"
        local = exp.wait_for_progress(1, chunks=2, timeout=120)
        answered_before = len(stub.seen)
        stub.release.set()
        info = exp.wait().set_index("run_id")
        yield SimpleNamespace(exp=exp, local=local, answered_before=answered_before, info=info)
    finally:
        stub.release.set()
        exp.end()


def test_local_pipelines_generate_while_an_api_pipeline_waits_on_its_endpoint(run) -> None:
    assert run.local["status"] == "completed"
    assert run.answered_before == 0  # meanwhile, the API pipeline's shard waited unanswered
    assert run.info.loc[2, "status"] == "completed"


def test_api_answers_rate_limits_and_retries_in_a_full_run(run, stub) -> None:
    rows, metrics = run.exp.get_evals_results()[2]
    assert rows["generated_text"] == ["42"] * len(ROWS)
    assert metrics["Samples Processed"]["value"] == len(ROWS)
    answered = [s for s in stub.seen if s["body"]["model"] == "stub-model"]
    assert len(answered) == len(ROWS) + 3  # each row once, plus the two 429s and the 503
    assert {s["auth"] for s in answered} == {"Bearer sk-stub"}
    assert {s["body"]["max_completion_tokens"] for s in answered} == {8}
    chunks = run.exp.get_chunk_results().set_index(["run_id", "chunk"])
    assert chunks.loc[(2, 1), "api_retries"] + chunks.loc[(2, 2), "api_retries"] == 3
    assert "api_retries" not in chunks.loc[1].dropna(axis=1).columns
