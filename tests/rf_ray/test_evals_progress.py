"""How an evals experiment reads in ``rf-ray status``, the live view (``EvalsView``), the end
summary and ``get_best_run``, on a store's shape as the scheduler writes it; and RapidFire's
resource arguments, accepted and said ignored. No Ray, no model."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir
from actors.storage.store import Store
from policies.settings import SETTINGS_KEY
from rf_ray import ConfigError, Experiment, IgnoredFieldWarning
from rf_ray.automl import RFvLLMModelConfig
from rf_ray.cli import main
from rf_ray.evals.progress import EvalsView, summary_tails
from rf_ray.summary import render

SHARD = {"Recall": 0.5, "Recall/lower": 0.3, "Recall/upper": 0.7, "MRR": 0.4, "MRR/lower": 0.2,
         "MRR/upper": 0.6, "exact_match": 0.1, "exact_match/lower": 0.0,
         "exact_match/upper": 0.2}  # fmt: skip


def _pipelines(tmp_path: Path, *run_ids: int) -> Path:
    for rid in run_ids:
        path = ExperimentDir(tmp_path).run(rid).pipeline_file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    return tmp_path


def test_the_pruners_metric_comes_first_as_the_store_holds_the_settings(tmp_path: Path) -> None:
    # The pruner is stored inside the experiment's settings (one value), not as a loose key:
    # exact_match sorts after the others, and is still the first column because it is pruned on.
    meta = {SETTINGS_KEY: {"pruner": {"type": "interval", "metric": "exact_match", "mode": "max"}}}
    view = EvalsView.of(_pipelines(tmp_path, 1), [1], meta, [(1, 1, SHARD)])
    assert view is not None
    assert view.metric == "exact_match"
    assert view.columns() == ["exact_match", "MRR"]
    assert view.cell(1, "exact_match") == "0.1 [0, 0.2]"


def _shard(value: float, half: float) -> dict[str, float]:
    return {"exact_match": value, "exact_match/lower": value - half,
            "exact_match/upper": value + half}  # fmt: skip


def _two_pipelines(root: Path) -> Path:
    """Pipeline 1 looked best after shard 1 (0.5) and ended at 0.2; pipeline 2 ended at 0.35."""
    exp_dir = _pipelines(root / "sweep", 1, 2)
    meta = {SETTINGS_KEY: {"pruner": {"type": "interval", "metric": "exact_match", "mode": "max"}}}
    with Store(exp_dir) as store:
        store.set_meta(name="sweep", status="finished", **meta)
        for rid, values in ((1, (0.5, 0.2)), (2, (0.3, 0.35))):
            store.add_run(rid, {}, "pending", total_steps=8, total_chunks=2)
            for shard, value in enumerate(values, start=1):
                store.record_slice(
                    rid, [], (shard, _shard(value, 0.1)), status="completed", steps_done=4 * shard,
                    chunks_done=shard, last_metric=value, best_metric=max(values[:shard]),
                )  # fmt: skip
    return exp_dir


def test_a_pipeline_is_judged_by_its_last_shards_estimate_not_its_best(tmp_path: Path) -> None:
    exp_dir = _two_pipelines(tmp_path)
    # Each shard's value is the estimate over every row so far: the last one is the result.
    assert Experiment("sweep", mode="evals", experiment_path=tmp_path).get_best_run() == 2
    tails = summary_tails(exp_dir, [1, 2])
    assert tails[1] == "exact_match 0.2 [0.1, 0.3]"
    runs = [{"run_id": 1, "status": "completed", "chunks_done": 2, "total_chunks": 2,
             "best_metric": 0.5}]  # fmt: skip
    text = render("sweep", runs, "exact_match", "pruning: none", exp_dir, tails, "shards")
    assert "run 1: completed, shards 2/2, exact_match 0.2 [0.1, 0.3]" in text
    assert "0.5" not in text


def test_rf_ray_status_shows_a_pipelines_last_estimate_and_not_a_best_one(tmp_path, capsys):
    _two_pipelines(tmp_path)
    assert main(["status", "sweep", "--path", str(tmp_path)]) == 0
    header, _, first, _ = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert "last exact_match" in header
    assert "best" not in header
    assert header.index("exact_match [interval]") < header.index("error")
    assert first.split()[:5] == ["1", "completed", "shard", "2/2", "8/8"]
    assert "0.5" not in first  # pipeline 1's best shard
    assert "0.2 [0.1, 0.3]" in first


def test_rapidfires_resource_arguments_are_accepted_and_said_ignored(tmp_path: Path) -> None:
    # RapidFire's scifact notebooks: Experiment(..., num_gpus=0), run_evals(..., num_actors=5)
    with pytest.warns(IgnoredFieldWarning, match=r"Experiment\(num_gpus=0\) is ignored"):
        exp = Experiment(experiment_name="scifact", mode="evals", experiment_path=tmp_path,
                         num_gpus=0)  # fmt: skip
    with pytest.raises(ConfigError, match=r"Experiment\(num_cpus=-1\) must be a number >= 0"):
        Experiment("scifact", mode="evals", experiment_path=tmp_path, num_cpus=-1)
    with (
        pytest.warns(IgnoredFieldWarning, match=r"run_evals\(num_actors=5\).*num_executors"),
        pytest.raises(ConfigError, match="num_shards"),  # checked on, before anything starts
    ):
        exp.run_evals({"vllm_config": RFvLLMModelConfig(model_config={"model": "m"})},
                      [{"prompts": "x"}], num_shards=0, num_actors=5)  # fmt: skip
    assert not (tmp_path / "scifact").exists()


def test_the_dashboard_shows_a_pipelines_last_estimate_with_its_interval(tmp_path: Path) -> None:
    """The page's state (``read_state``) says the experiment is an evals one and gives each
    pipeline its last shard's estimate with its interval; a fit experiment has neither."""
    from rf_ray.dashboard.reads import Cursor, read_state
    from tests.rf_ray.test_dashboard_http import make_experiment

    state = read_state(_two_pipelines(tmp_path), Cursor())
    assert state["evals"] is True
    assert {r["run_id"]: r["interval"] for r in state["runs"]} == {
        1: "0.2 [0.1, 0.3]", 2: "0.35 [0.25, 0.45]"
    }  # fmt: skip
    fit = read_state(make_experiment(tmp_path / "fit"), Cursor())
    assert fit["evals"] is False
    assert all(r["interval"] is None for r in fit["runs"])
