"""An evals experiment whose driver dies resumes and ends with the metrics of an uninterrupted
one: ``Experiment(name, mode="evals").resume()`` after the driver's whole process tree (its Ray
cluster included) was killed between shards.

A pipeline's recorded shard is durable (its state file, written before the shard counts); the
shard in flight when the driver died is run again from the last recorded one. A sampling
pipeline's RNG stream is in its state, so it draws on as if nothing happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from rf_ray import Experiment
from rf_ray.automl import List, RFGridSearch, RFLangChainRagSpec, RFvLLMModelConfig
from rf_ray.evals.metrics import evals_metrics
from rf_ray.evals.toy import TINY_READER, fact_corpus
from tests.rf_ray.test_durability import _kill_started_under
from tests.rf_ray.test_evals import FactLoader, postprocess, preprocess
from tests.rf_ray.test_resume_equivalence import _kill_tree, _signal_tree
from tests.waits import store_runs, wait_for_store

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


DRIVER = textwrap.dedent(
    """
    import os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RF_RAY_LIVE"] = "0"
    sys.path.insert(0, {repo!r})
    import ray
    ray.init(num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
             _temp_dir={ray_tmp!r})
    from rf_ray import Experiment
    from tests.rf_ray.test_evals_resume import _evals
    _evals(Experiment("killed", mode="evals", experiment_path={root!r}))
    """
)


def _midway(runs: list[dict]) -> bool:
    """Every pipeline has a recorded shard and some have shards to go."""
    return all(r["chunks_done"] for r in runs) and any(r["chunks_done"] < SHARDS for r in runs)


def _freeze_midway(pid: int, exp_dir, tries: int = 20) -> None:
    """SIGSTOP the driver's tree at a moment the store shows the sweep midway (a shard can
    finish between reading the store and stopping the tree: then read it again)."""
    for _ in range(tries):
        wait_for_store(exp_dir, "a shard of each recorded, shards to go", _midway, timeout=300)
        _signal_tree(pid, signal.SIGSTOP)
        if _midway(store_runs(exp_dir)):
            return
        _signal_tree(pid, signal.SIGCONT)
    raise AssertionError(f"the sweep was never seen midway in {tries} tries")


def test_a_resumed_evals_experiment_ends_with_the_uninterrupted_metrics(reference, tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "driver.py"
    ray_tmp = tempfile.mkdtemp(prefix="rfv", dir="/tmp")
    script.write_text(DRIVER.format(repo=repo, root=str(tmp_path), ray_tmp=ray_tmp))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    exp_dir = tmp_path / "killed"
    try:
        _freeze_midway(proc.pid, exp_dir)
    finally:
        _kill_tree(proc.pid)  # the driver and its Ray cluster at once: no shard lands later
        proc.wait(timeout=60)
        _kill_started_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
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
