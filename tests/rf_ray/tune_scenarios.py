"""Ray Tune scenarios for ``test_tune.py``: each runs in a child process with its own Ray
cluster (a Tune run can leave trial actors holding every CPU of a shared one).

    python -m tests.rf_ray.tune_scenarios <scenario> <work dir> <ray temp dir>

A scenario asserts as a test does; the child exits 0 only if it passed. Each names the Ray tests
it ports (repository ray-project/ray, python/ray/tune/tests/), keeping their assertions with
rf-ray knobs in place of Ray's made-up parameters.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from ray import tune

from actors.storage.layout import ExperimentDir
from rf_ray import List, RFGridSearch, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME
from rf_ray.tune import RFSearcher

SCENARIOS: dict[str, Callable[[Path], None]] = {}
LRS = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4]


def scenario(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    SCENARIOS[fn.__name__] = fn
    return fn


def _base(**knobs: Any) -> RFModelConfig:
    funcs = {k: knobs.pop(k) for k in ("formatting_func",) if k in knobs}
    args = dict(per_device_train_batch_size=4, max_length=48, num_train_epochs=1, lora_rank=4)
    args.update(knobs)
    return RFModelConfig(TOY_MODEL_NAME, training_args=RFSFTConfig(**args), **funcs)


def upper(row):
    return row["prompt"].upper()


def lower(row):
    return row["prompt"].lower()


def _run_config(work: Path, name: str, **kw: Any) -> tune.RunConfig:
    return tune.RunConfig(storage_path=str(work / "tune"), name=name, verbose=0, **kw)


# ---------------------------------------------------------------------------- searcher in Tune
def invalid_objective(config: dict[str, Any]) -> None:
    # test_searchers.py::_invalid_objective, with report = the learning rate's place (1..5)
    report = round(config["learning_rate"] * 1e4)
    if report > 4:
        tune.report({"_metric": float("inf")})
    elif report > 3:
        tune.report({"_metric": float("-inf")})
    elif report > 2:
        tune.report({"_metric": float("nan")})
    else:
        tune.report({"_metric": float(report)})


def multi_objective(config: dict[str, Any]) -> None:
    lr = config["learning_rate"] * 1e4
    low = config["formatting_func"] == "lower"
    tune.report({"a": lr * 100, "b": -100.0 * low, "c": lr + (not low)})


def _closure() -> Callable[[dict[str, Any]], str]:
    prefix = "Q: "
    return lambda row: prefix + row["prompt"]


@scenario
def searcher_in_tune(work: Path) -> None:
    # Ports test_searchers.py::InvalidValuesTest (NaN, -inf, inf results; constants of the
    # config kept; the searcher's checkpoint written without pickling errors, here with a
    # closure in the group), AddEvaluatedPointTest::run_add_evaluated_trials and
    # MultiObjectiveTest; and TuneConfig(metric=, mode=) reaching the searcher.
    space = RFGridSearch(_base(learning_rate=List(LRS), formatting_func=_closure()))
    searcher = RFSearcher(space)  # metric and mode come from TuneConfig
    buffer: list[str] = []
    from ray.tune.execution.tune_controller import logger

    with patch.object(logger, "warning", lambda x, *a, **k: buffer.append(str(x))):
        results = tune.Tuner(
            tune.with_resources(invalid_objective, {"cpu": 0.5}),
            param_space={"list": [1, 2, 3], "num": 4},
            tune_config=tune.TuneConfig(
                search_alg=searcher, metric="_metric", mode="max", num_samples=8
            ),
            run_config=_run_config(work, "invalid"),
        ).fit()
    assert not any("checkpointing failed" in x.lower() for x in buffer), buffer
    best = results.get_best_result()
    assert round(best.config["learning_rate"] * 1e4) <= 2.0
    assert best.config["list"] in ([1, 2, 3], (1, 2, 3))
    assert best.config["num"] == 4
    assert len(results) == 5  # the group has 5 runs: FINISHED before num_samples
    assert (searcher.metric, searcher.mode) == ("_metric", "max")
    assert searcher.best() == ({"learning_rate": 2e-4}, searcher.best()[1])
    (state,) = (work / "tune" / "invalid").glob("searcher-state-*.pkl")
    assert len(json.loads(state.read_text())["state"]["completed"]) == 5

    # AddEvaluatedPointTest::run_add_evaluated_trials: an analysis, its trials, one trial.
    analysis = tune.ExperimentAnalysis(str(work / "tune" / "invalid"))
    for given, n in ((analysis, 5), (analysis.trials, 5), (analysis.trials[0], 1)):
        fresh = RFSearcher(space, metric="_metric", mode="max")
        fresh.add_evaluated_trials(given, "_metric")
        assert len(fresh.evaluated) == n
        fresh.suggest("1")
    assert all(e["index"] is not None for e in fresh.evaluated)  # each names a run of the group

    # No metric anywhere (and no param_space to carry TuneConfig's): refused, as Ray's are.
    with pytest.raises(Exception, match="metric=None, mode=None"):
        tune.Tuner(
            invalid_objective,
            tune_config=tune.TuneConfig(search_alg=RFSearcher(space), num_samples=1),
            run_config=_run_config(work, "no-metric"),
        ).fit()

    # MultiObjectiveTest, over a group whose runs differ by a function too (issue 21.18).
    mo_space = RFGridSearch(
        _base(learning_rate=List(LRS[:2]), formatting_func=List([upper, lower]))
    )
    mo = RFSearcher(mo_space, metric=["a", "b", "c"], mode=["max", "min", "max"])
    out = tune.Tuner(
        tune.with_resources(multi_objective, {"cpu": 0.5}),
        tune_config=tune.TuneConfig(search_alg=mo, num_samples=16),
        run_config=_run_config(work, "multi"),
    ).fit()
    assert len(out) == 4
    assert out.get_best_result("a", "max").config["learning_rate"] == 2e-4
    assert out.get_best_result("b", "min").config["formatting_func"] == "lower"
    assert out.get_best_result("c", "max").config == {
        "learning_rate": 2e-4,
        "formatting_func": "upper",
    }
    for metric, mode in (("a", "max"), ("b", "min"), ("c", "max")):
        assert mo.best(metric, mode)[0] == out.get_best_result(metric, mode).config
    runs = [mo.to_run_config(r.config) for r in out]
    assert len({id(r) for r in runs}) == 4  # four trials, four different runs
    for r, run in zip(out, runs, strict=True):
        assert run.formatting_func is {"upper": upper, "lower": lower}[r.config["formatting_func"]]


# ---------------------------------------------------------------------------- the controller
class CountingSearcher(RFSearcher):
    """RFSearcher counting the notifications it gets, as Ray's ``_MockSearcher`` does."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self.counter = getattr(self, "counter", {"result": 0, "complete": 0})
        self.counter["result"] += 1

    def on_trial_complete(self, trial_id: str, result: Any = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        self.counter = getattr(self, "counter", {"result": 0, "complete": 0})
        self.counter["complete"] += 1


def _controller(work: Path, name: str, stop_at: int, scheduler: Any = None) -> Any:
    from ray.air.execution import FixedResourceManager
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.search_generator import SearchGenerator
    from ray.tune.utils.mock_trainable import MOCK_TRAINABLE_NAME, register_mock_trainable

    register_mock_trainable()
    spec = {"run": MOCK_TRAINABLE_NAME, "stop": {"training_iteration": stop_at},
            "storage_path": str(work / "tune")}  # fmt: skip
    searcher = CountingSearcher(_base(), metric="episode_reward_mean", mode="max")
    search_alg = SearchGenerator(searcher)
    search_alg.add_configurations([tune.Experiment.from_json(name, spec)])
    runner = TuneController(
        search_alg=search_alg,
        scheduler=scheduler,
        storage=StorageContext(storage_path=str(work / "tune"), experiment_dir_name=name),
        resource_manager_factory=FixedResourceManager,
    )
    return runner, search_alg, searcher


@scenario
def controller(work: Path) -> None:
    # Ports execution/test_controller_search_alg_integration.py::test_search_alg_notification
    # (the searcher hears results and completion, and is finished before the runner) and
    # ::test_search_alg_scheduler_stop (a scheduler's stop still completes the trial).
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    runner, search_alg, searcher = _controller(work, "notify", stop_at=2)
    while not search_alg.is_finished():
        runner.step()
    trials = runner.get_trials()
    while trials[0].status != Trial.RUNNING:
        runner.step()
    assert trials[0].status == Trial.RUNNING
    assert search_alg.is_finished()
    assert not runner.is_finished()
    while not runner.is_finished():
        runner.step()
    assert trials[0].status == Trial.TERMINATED
    assert search_alg.is_finished()
    assert runner.is_finished()
    assert searcher.counter["result"] == 1
    assert searcher.counter["complete"] == 1

    class StopAll(FIFOScheduler):
        def on_trial_result(self, *args: Any, **kwargs: Any) -> str:
            return TrialScheduler.STOP

    runner, search_alg, searcher = _controller(work, "stop", stop_at=5, scheduler=StopAll())
    trials = runner.get_trials()
    while not runner.is_finished():
        runner.step()
    assert searcher.counter.get("result", 0) == 0  # the stop takes precedence
    assert searcher.counter["complete"] == 1  # ... but the trial completes
    assert runner.get_trials()[0].last_result["training_iteration"] == 1


# ---------------------------------------------------------------------------- Tuner.restore
def sometimes_failing(config: dict[str, Any]) -> None:
    # test_tuner_restore.py::_train_fn_sometimes_failing: fails after its first report when the
    # fail marker exists and the config says so; picks up from its checkpoint when restored.
    failing = config.get("fail") or config.get("learning_rate") in config.get("failing", ())
    checkpoint = tune.get_checkpoint()
    state = {"it": 0}
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / "state.json").read_text())
    for _ in range(config.get("num_epochs", 1)):
        state["it"] += 1
        _report(state)
    if failing and Path(config["fail_marker"]).exists():
        raise RuntimeError("I am failing")
    state["it"] += 1
    _report(state)


def _report(state: dict[str, int]) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.json").write_text(json.dumps(state))
        tune.report(dict(state), checkpoint=tune.Checkpoint.from_directory(d))


def report_one(config: dict[str, Any]) -> None:
    tune.report({"_metric": 1})


class MockSearcher(RFSearcher):
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        if not hasattr(self, "_test_result_counter"):
            self._test_result_counter = 0
        self._test_result_counter += 1


@scenario
def restore(work: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler

    class MockScheduler(ASHAScheduler):
        def on_trial_result(self, runner: Any, trial: Any, result: dict[str, Any]) -> str:
            decision = super().on_trial_result(runner, trial, result)
            if not hasattr(self, "_test_result_counter"):
                self._test_result_counter = 0
            self._test_result_counter += 1
            return decision

    # test_tuner_restore.py::test_custom_searcher_and_scheduler_restore: the restored Tuner uses
    # the original searcher, its own state (a subclass's counter) restored.
    marker = work / "fail_marker"
    marker.write_text("")
    tuner = tune.Tuner(
        sometimes_failing,
        run_config=tune.RunConfig(storage_path=str(work / "tune"), name="exp_name", verbose=0),
        tune_config=tune.TuneConfig(search_alg=MockSearcher(_base()), scheduler=MockScheduler(),
                                    metric="it", mode="max"),
        param_space={"fail": True, "fail_marker": str(marker)},
    )  # fmt: skip
    tuner.fit()
    del tuner
    marker.unlink()
    tuner = tune.Tuner.restore(
        str(work / "tune" / "exp_name"), trainable=sometimes_failing, resume_errored=True
    )
    tuner.fit()
    searcher = tuner._local_tuner._tune_config.search_alg
    scheduler = tuner._local_tuner._tune_config.scheduler
    assert isinstance(searcher, MockSearcher)
    assert isinstance(scheduler, MockScheduler)
    assert searcher._test_result_counter == 3  # 1 before the failure, 2 after the restore
    assert scheduler._test_result_counter > 0

    # test_tuner_restore.py::test_tuner_restore_num_trials: a finished run restored has the
    # same trials (the searcher suggests no more).
    tuner = tune.Tuner(
        report_one,
        tune_config=tune.TuneConfig(
            search_alg=RFSearcher(RFGridSearch(_base(learning_rate=List(LRS[:4])))),
            num_samples=10, metric="_metric", mode="max",
        ),
        run_config=_run_config(work, "num_trials"),
        param_space={"constant": 1},
    )  # fmt: skip
    results = tuner.fit()
    assert len(results) == 4
    assert results.get_best_result().metrics["_metric"] == 1
    del tuner
    tuner = tune.Tuner.restore(str(work / "tune" / "num_trials"), trainable=report_one)
    assert len(tuner.get_results()) == 4
    results = tuner.fit()
    assert len(results) == 4
    assert results.get_best_result().metrics["_metric"] == 1

    _resume_errored(work, "resume_errored", {"resume_errored": True}, [2, 3, 2, 3])
    _resume_errored(work, "restart_errored", {"restart_errored": True}, [2, 2, 2, 2])


def _resume_errored(work: Path, name: str, how: dict[str, bool], after: list[int]) -> None:
    # test_tuner_restore.py::test_tuner_restore_resume_errored and ::..._restart_errored, the
    # four configs from RFSearcher (the second and fourth fail). Ray's assertions list the
    # trials in order; here each trial's value is keyed by its config, whatever the order.
    marker = work / f"{name}_marker"
    marker.write_text("")
    tuner = tune.Tuner(
        sometimes_failing,
        tune_config=tune.TuneConfig(
            search_alg=RFSearcher(RFGridSearch(_base(learning_rate=List(LRS[:4]))), metric="it",
                                  mode="max"),
            num_samples=4,
        ),
        run_config=_run_config(work, name),
        param_space={"failing": [LRS[1], LRS[3]], "fail_marker": str(marker)},
    )  # fmt: skip
    results = tuner.fit()
    assert len(results) == 4
    assert len(results.errors) == 2
    assert _its(results) == dict(zip(LRS, [2, 1, 2, 1], strict=False)), _its(results)
    del tuner
    marker.unlink()
    tuner = tune.Tuner.restore(str(work / "tune" / name), trainable=sometimes_failing, **how)
    results = tuner.get_results()
    assert len(results) == 4
    assert len(results.errors) == 2
    assert _its(results) == dict(zip(LRS, [2, 1, 2, 1], strict=False)), _its(results)
    results = tuner.fit()
    assert len(results) == 4
    assert len(results.errors) == 0
    assert _its(results) == dict(zip(LRS, after, strict=False)), _its(results)


def _its(results: Any) -> dict[float, int]:
    """Each trial's last ``it``, by its learning rate."""
    return {r.config["learning_rate"]: r.metrics["it"] for r in results}


# ---------------------------------------------------------------------------- (a) shared
ROWS, CHUNKS = 16, 2  # batch 4: 4 optimizer steps per run, 2 per chunk


@scenario
def shared_experiment(work: Path) -> None:
    """(a) Tune drives, rf-ray trains: Optuna + ASHA trials share one base model; Tune writes
    under the experiment directory (issue 21.9); a stopped trial's run is pruned."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from actors.storage.store import Store
    from policies.errors import UnknownKnobError
    from rf_ray import Experiment
    from rf_ray.toy import sft_dataset
    from rf_ray.tune import start_shared

    shared = start_shared(
        Experiment("tune-shared", experiment_path=work),
        base=_base(learning_rate=1e-4),
        train_dataset=sft_dataset(ROWS),
        eval_dataset=sft_dataset(8, seed=1),
        num_chunks=CHUNKS,
        seed=0,
    )
    space = {"learning_rate": tune.loguniform(1e-5, 3e-3), "lora_rank": tune.choice([2, 4])}
    # Bad input: a key that is no knob is named, in the driver, before any trial runs.
    with pytest.raises(UnknownKnobError, match="lora_rnak"):
        shared.check({**space, "lora_rnak": tune.choice([2])})
    shared.check(space)
    tuner = tune.Tuner(
        shared.trainable(),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="eval_loss", mode="min", seed=0),
            scheduler=ASHAScheduler(max_t=CHUNKS, grace_period=1, reduction_factor=2),
            metric="eval_loss", mode="min", num_samples=4, max_concurrent_trials=3,
            reuse_actors=True,
        ),
        run_config=shared.run_config(name="asha", verbose=0),
    )  # fmt: skip
    try:
        results = tuner.fit()
        # Bad input that reaches a trial anyway: it errors, naming the key, and adds no run.
        bad = tune.Tuner(
            shared.trainable(),
            param_space={"learnig_rate": tune.choice([1e-4])},
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=shared.run_config(name="bad-key", verbose=0),
        ).fit()
        with Store(shared.experiment.dir, readonly=True) as store:
            rows = {r["run_id"]: r for r in store.runs()}
            chunk_rows = store.chunk_metrics()
    finally:
        info = shared.close()
    assert not results.errors, results.errors
    assert len(bad.errors) == 1
    assert "learnig_rate" in str(bad.errors[0])
    # Tune wrote into the experiment directory (the test also checks ~/ray_results is absent).
    assert (ExperimentDir(shared.experiment.dir).tune_dir / "asha").is_dir()
    assert {r.path.split("/tune/asha/")[0] for r in results} == {str(shared.experiment.dir)}
    _check_shared_runs(results, rows, chunk_rows)
    assert set(info["status"]) <= {"completed", "pruned", "stopped"}
    assert shared.experiment.stats()["base_loads"] == 1


def _check_shared_runs(results: Any, rows: dict[int, Any], chunk_rows: list[Any]) -> None:
    assert len(results) == 4
    by_run = {}
    for r in results:
        run_id, iterations = r.metrics["rf_run_id"], r.metrics["training_iteration"]
        by_run[run_id] = r
        # One Tune report per chunk, carrying that chunk's metrics.
        assert r.metrics["chunk"] == iterations
        assert 1 <= iterations <= CHUNKS
        row = rows[run_id]
        mine = sorted(c for rid, c, _ in chunk_rows if rid == run_id)
        assert mine[:iterations] == list(range(1, iterations + 1))
        assert row["params"]["learning_rate"] == pytest.approx(r.config["learning_rate"])
        assert row["params"]["lora.r"] == r.config["lora_rank"]
        if iterations == CHUNKS:
            assert row["status"] == "completed"
        else:
            # ASHA stopped the trial after `iterations` chunks; its run trained on while Tune
            # decided (docs/guides/tune.md says so): pruned at the end of its slice in flight,
            # or completed if it finished first. Never left live.
            assert row["status"] in ("pruned", "completed"), row
            assert row["chunks_done"] >= iterations
    assert len(by_run) == 4  # every Tune trial has its own rf-ray run


def main(argv: list[str]) -> int:
    name, work, ray_tmp = argv
    import ray

    ray.init(num_cpus=2, object_store_memory=150 * 2**20, include_dashboard=False,
             logging_level="WARNING", _temp_dir=ray_tmp)  # fmt: skip
    try:
        SCENARIOS[name](Path(work))
    finally:
        ray.shutdown()
    print(f"scenario {name}: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
