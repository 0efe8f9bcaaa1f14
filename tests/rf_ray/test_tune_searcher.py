"""RFSearcher against the checks of Ray Tune's own searcher tests that apply to any searcher.

Each test names the Ray test it ports (repository ray-project/ray, python/ray/tune/tests/);
Ray's assertions are kept, with rf-ray knobs in place of Ray's made-up parameters. None of these
needs a Ray cluster: the Tune runs are in ``test_tune.py`` (each in its own cluster).
"""

from __future__ import annotations

import copy
import json

import pytest
from ray.tune.execution.tune_controller import _get_max_pending_trials
from ray.tune.search import ConcurrencyLimiter, Repeater, Searcher
from ray.tune.search.search_generator import SearchGenerator
from ray.tune.utils.mock_trainable import MOCK_TRAINABLE_NAME, register_mock_trainable

from policies.errors import ConfigError, UnknownKnobError
from rf_ray import List, RFGridSearch, RFModelConfig, RFSFTConfig
from rf_ray.specs import RunConfig
from rf_ray.toy import TOY_MODEL_NAME
from rf_ray.tune import RFSearcher

LRS = [1e-4, 2e-4, 3e-4]


def _base(formatting_func=None, **knobs) -> RFModelConfig:
    args = dict(per_device_train_batch_size=4, max_length=48, num_train_epochs=1, lora_rank=4)
    args.update(knobs)
    return RFModelConfig(
        TOY_MODEL_NAME, training_args=RFSFTConfig(**args), formatting_func=formatting_func
    )


def _grid(n: int = 3, **kw) -> RFSearcher:
    return RFSearcher(RFGridSearch(_base(learning_rate=List(LRS[:n]))), **kw)


def upper(row):
    return row["prompt"].upper()


def lower(row):
    return row["prompt"].lower()


# ---------------------------------------------------------------------------- suggestions
def test_every_suggestion_names_its_run_when_functions_vary() -> None:
    """Issue 21.18: a List of functions beside a List of values gave {lr} twice per lr."""
    space = RFGridSearch(_base(formatting_func=List([upper, lower]), learning_rate=List(LRS[:2])))
    searcher = RFSearcher(space, metric="loss", mode="min")
    points = [searcher.suggest(f"t{i}") for i in range(4)]
    assert searcher.suggest("t4") == Searcher.FINISHED
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 4, points
    assert {(p["learning_rate"], p["formatting_func"]) for p in points} == {
        (lr, f) for lr in LRS[:2] for f in ("upper", "lower")
    }
    # Each suggestion maps back to its own run, functions included.
    runs = [searcher.to_run_config(p) for p in points]
    assert [(r.training_args["learning_rate"], r.formatting_func) for r in runs] == [
        (p["learning_rate"], {"upper": upper, "lower": lower}[p["formatting_func"]]) for p in points
    ]
    # A changed value keeps the function the suggestion names.
    changed = searcher.to_run_config({"learning_rate": 5e-4, "formatting_func": "lower"})
    assert (changed.training_args["learning_rate"], changed.formatting_func) == (5e-4, lower)
    with pytest.raises(ConfigError, match=r"formatting_func.*'lower', 'upper'"):
        searcher.to_run_config({"learning_rate": 1e-4, "formatting_func": "title"})


def test_functions_of_one_name_and_twin_runs_stay_distinct() -> None:
    twins = RFSearcher(
        [_base(formatting_func=lambda r: r["prompt"]), _base(formatting_func=lambda r: "")],
        metric="loss", mode="min",
    )  # fmt: skip
    names = [twins.suggest(t)["formatting_func"] for t in ("a", "b")]
    here = "test_functions_of_one_name_and_twin_runs_stay_distinct"
    assert names == [f"{here}.lambda", f"{here}.lambda#2"]  # qualnames, <locals> and <> cut
    # Two runs alike in everything a flat dict shows: the group index tells them apart.
    same = RFSearcher([_base(), _base()], metric="loss", mode="min")
    points = [same.suggest(t) for t in ("a", "b")]
    assert points == [{"group_index": 0}, {"group_index": 1}]
    assert same.to_run_config(points[1]) is same.runs[1]


def test_metric_and_mode_are_checked_and_needed_before_a_suggestion() -> None:
    """Ray's searchers refuse to suggest without metric and mode (OptunaSearch raises
    UNDEFINED_METRIC_MODE); Tune hands TuneConfig's to the searcher (set_search_properties)."""
    searcher = _grid()
    with pytest.raises(ConfigError, match="metric=None, mode=None"):
        searcher.suggest("t0")
    assert searcher.set_search_properties("loss", "min", {}) is False  # the space is rf-ray's
    assert (searcher.metric, searcher.mode) == ("loss", "min")
    assert searcher.suggest("t0") == {"learning_rate": 1e-4}
    with pytest.raises(ConfigError, match=r"TuneConfig\(metric='acc'\) differs"):
        searcher.set_search_properties("acc", "max", {})
    with pytest.raises(ConfigError, match="mode='best'"):
        _grid(metric="loss", mode="best")
    with pytest.raises(ConfigError, match="as many modes"):
        _grid(metric=["a", "b"], mode=["min"])


def test_nested_suggestion_tags_its_trial(tmp_path) -> None:
    # Ports test_searcher_utils.py::test_nested_suggestion: the suggested values are in the
    # trial's experiment tag (Tune's format: 4 decimals) and config.
    register_mock_trainable()
    space = RFGridSearch(_base(formatting_func=List([upper, lower]), learning_rate=List([0.5])))
    alg = SearchGenerator(RFSearcher(space, metric="loss", mode="min"))
    alg.add_configurations(
        {"test": {"run": MOCK_TRAINABLE_NAME, "num_samples": 2, "storage_path": str(tmp_path)}}
    )
    trial = alg.next_trial()
    assert "formatting_func=upper" in trial.experiment_tag
    assert trial.config == {"formatting_func": "upper"}
    assert "formatting_func=lower" in alg.next_trial().experiment_tag


# ---------------------------------------------------------------------------- results
def test_multi_objective_best_by_each_objective() -> None:
    """Issue 21.18: a list metric/mode made best() raise TypeError (unhashable list)."""
    searcher = _grid(metric=["a", "b"], mode=["max", "min"])
    for i, t in enumerate(("t0", "t1", "t2")):
        searcher.suggest(t)
        searcher.on_trial_complete(t, {"a": i, "b": -i})
    assert searcher.best("a", "max")[0] == {"learning_rate": LRS[2]}
    assert searcher.best("b", "min")[0] == {"learning_rate": LRS[2]}
    assert searcher.best("a", "min")[0] == {"learning_rate": LRS[0]}
    with pytest.raises(ConfigError, match="several objectives"):
        searcher.best()


def test_invalid_values_never_win() -> None:
    # Ports the check of test_searchers.py::InvalidValuesTest that does not need Tune (the Tune
    # run is test_tune.py's): NaN, -inf and inf results never make the best trial.
    searcher = _grid(metric="m", mode="max")
    for t, value in zip(("t0", "t1", "t2"), (float("nan"), float("inf"), 2.0), strict=True):
        searcher.suggest(t)
        searcher.on_trial_complete(t, {"m": value})
    assert searcher.best() == ({"learning_rate": LRS[2]}, {"m": 2.0})


def test_report_after_complete_is_harmless() -> None:
    # Ports test_searchers.py::InvalidValuesTest::testOptunaReportTooOften: a result after the
    # trial completed does not fail (and does not replace the final one).
    searcher = _grid(metric="metric", mode="max")
    searcher.suggest("trial_1")
    searcher.on_trial_result("trial_1", {"training_iteration": 1, "metric": 1})
    searcher.on_trial_complete("trial_1", {"training_iteration": 2, "metric": 1})
    searcher.on_trial_result("trial_1", {"training_iteration": 3, "metric": 1})
    searcher.on_trial_complete("trial_1", {"training_iteration": 4, "metric": 1})
    assert searcher.results["trial_1"]["training_iteration"] == 4
    assert searcher.completed == ["trial_1"]


def test_add_evaluated_point() -> None:
    # Ports test_searchers.py::AddEvaluatedPointTest::run_add_evaluated_point (the trials and
    # analysis variant runs in test_tune.py) and the error/pruned states of its testOptuna.
    searcher = copy.deepcopy(_grid(metric="metric", mode="max"))
    assert len(searcher.evaluated) == 0
    searcher.add_evaluated_point({"learning_rate": LRS[0]}, 1.0)
    assert len(searcher.evaluated) == 1
    searcher.add_evaluated_point({"learning_rate": LRS[1]}, 0.5, error=True)
    searcher.add_evaluated_point({"learning_rate": 9e-4}, 3.0, pruned=True, intermediate_values=[1])
    assert [(e["index"], e["error"], e["pruned"]) for e in searcher.evaluated] == [
        (0, False, False), (1, True, False), (None, False, True),
    ]  # fmt: skip
    # A grid point evaluated elsewhere is not suggested again; an errored one is.
    assert searcher.suggest("1") == {"learning_rate": LRS[1]}
    assert searcher.suggest("2") == {"learning_rate": LRS[2]}
    assert searcher.suggest("3") == Searcher.FINISHED
    assert searcher.best() == ({"learning_rate": 9e-4}, {"metric": 3.0})
    with pytest.raises(ConfigError, match="one value per metric"):
        searcher.add_evaluated_point({"learning_rate": LRS[0]}, [1.0, 2.0])
    with pytest.raises(ConfigError, match="needs the searcher's metric"):
        _grid().add_evaluated_point({"learning_rate": LRS[0]}, 1.0)


# ---------------------------------------------------------------------------- save / restore
def _on_trial_callbacks(searcher: Searcher, trial_id: str) -> None:
    result = {"training_iteration": 1, "metric": 1, "config/a": 1.0, "time_total_s": 1}
    searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


class _CountingSearcher(RFSearcher):
    """A subclass with state of its own, one JSON value and one that JSON cannot hold."""

    def on_trial_result(self, trial_id, result):
        super().on_trial_result(trial_id, result)
        self.seen = getattr(self, "seen", 0) + 1
        self.ids = getattr(self, "ids", set()) | {trial_id}


def test_save_restore_keeps_the_whole_state(tmp_path) -> None:
    # Ports test_searchers.py::SaveRestoreCheckpointTest (_save, then _restore into a fresh
    # searcher without set_search_properties): the trial suggested before saving that never
    # completed is still tracked. Also a subclass's own state (test_tuner_restore.py's
    # test_custom_searcher_and_scheduler_restore needs it) and the file's form.
    path = tmp_path / "ckpt" / "checkpoint.json"
    space = RFGridSearch(_base(learning_rate=List(LRS)))
    searcher = _CountingSearcher(space)
    searcher.set_search_properties(metric="metric", mode="max", config={})
    for t in ("1", "2", "not_completed"):
        searcher.suggest(t)
    _on_trial_callbacks(searcher, "1")
    searcher.save(str(path))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.json"]  # no temp file left
    document = json.loads(path.read_text())
    assert document["state"]["next_index"] == 3
    assert document["state"]["seen"] == 1
    assert set(document["pickled"]) == {"ids"}  # the set: JSON cannot hold it

    restored = _CountingSearcher(space)
    restored.restore(str(path))
    assert (restored.metric, restored.mode) == ("metric", "max")
    assert (restored.seen, restored.ids) == (1, {"1"})
    _on_trial_callbacks(restored, "2")
    assert restored.suggest("3") == Searcher.FINISHED  # the grid of 3 is out
    _on_trial_callbacks(restored, "3")
    assert "not_completed" in restored.assigned
    assert restored.completed == ["1", "2", "3"]
    assert restored.seen == 3

    other = RFSearcher(RFGridSearch(_base(learning_rate=List([1e-5, 2e-5]))))
    with pytest.raises(ConfigError, match="different search space"):
        other.restore(str(path))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot read the RFSearcher state .*checkpoint.json"):
        restored.restore(str(path))


def test_restore_reads_a_version_1_file(tmp_path) -> None:
    """What rf-ray wrote before it kept the whole state still restores."""
    searcher = _grid()
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({
        "version": 1, "points": json.dumps(searcher.points, sort_keys=True, default=repr),
        "next_index": 1, "assigned": {"t0": 0}, "results": {"t0": {"m": 1.0}},
        "completed": ["t0"], "metric": "m", "mode": "max",
    }))  # fmt: skip
    searcher.restore(str(path))
    assert (searcher.metric, searcher.mode, searcher.completed) == ("m", "max", ["t0"])
    assert searcher.suggest("t1") == {"learning_rate": LRS[1]}


def test_to_run_config_maps_back_and_names_a_bad_knob() -> None:
    searcher = RFSearcher(
        RFGridSearch(_base(learning_rate=List(LRS[:2]), lora_rank=List([4, 8]))),
        metric="score", mode="max",
    )  # fmt: skip
    assert sorted(searcher.keys) == ["learning_rate", "lora.r"]
    run = searcher.to_run_config({"learning_rate": LRS[1], "lora.r": 8})
    assert isinstance(run, RunConfig)
    assert run is searcher.runs[3]
    assert searcher.to_run_config({"learning_rate": 5e-4}).training_args["learning_rate"] == 5e-4
    with pytest.raises(UnknownKnobError, match="lr"):
        searcher.to_run_config({"lr": 1e-3})


# ---------------------------------------------------------------------------- Tune's wrappers
def _repeat_trials(num_samples: int, repeat: int, tmp_path) -> list:
    register_mock_trainable()
    space = RFGridSearch(_base(learning_rate=List([1e-4, 2e-4, 3e-4, 4e-4])))
    searcher = RFSearcher(space, metric="episode_reward_mean", mode="max")
    alg = SearchGenerator(Repeater(searcher, repeat=repeat, set_index=False))
    alg.add_configurations({"test": {
        "run": MOCK_TRAINABLE_NAME, "num_samples": num_samples, "storage_path": str(tmp_path),
        "stop": {"training_iteration": 1},
    }})  # fmt: skip
    trials = []
    while not alg.is_finished():
        trials.append(alg.next_trial())
    return trials


@pytest.mark.parametrize(("num_samples", "repeat", "distinct"), [(2, 1, 2), (12, 4, 3), (11, 5, 3)])
def test_repeater(num_samples: int, repeat: int, distinct: int, tmp_path) -> None:
    # Ports test_searcher_utils.py::test_repeat_1, test_repeat_4 and test_odd_repeat.
    trials = _repeat_trials(num_samples, repeat, tmp_path)
    assert len(trials) == num_samples
    assert len({t.evaluated_params["learning_rate"] for t in trials}) == distinct


def test_set_get_repeater() -> None:
    # Ports test_searcher_utils.py::test_set_get_repeater: a Repeater's state restored into a
    # new one goes on with the same groups, and the searcher hears each group once, averaged.
    searcher = RFSearcher(RFGridSearch(_base(learning_rate=List(LRS))), metric="result",
                          mode="max")  # fmt: skip
    repeater1 = Repeater(searcher, repeat=3, set_index=False)
    for i in range(3):
        assert repeater1.suggest(f"test_{i}")["learning_rate"] == LRS[0]
    for i in range(2):  # an incomplete group
        assert repeater1.suggest(f"test_{i}_2")["learning_rate"] == LRS[1]
    state = repeater1.get_state()
    del repeater1
    new_repeater = Repeater(searcher, repeat=1, set_index=True)
    new_repeater.set_state(state)
    assert new_repeater.repeat == 3
    assert new_repeater.suggest("test_2_2")["learning_rate"] == LRS[1]
    assert new_repeater.suggest("test_x")["learning_rate"] == LRS[2]
    for i in range(3):
        new_repeater.on_trial_complete(f"test_{i}", {"result": 2})
    for i in range(3):
        new_repeater.on_trial_complete(f"test_{i}_2", {"result": -i * 10})
    assert len(searcher.completed) == 2
    assert searcher.results[searcher.completed[-1]]["result"] == -10


def test_set_get_limiter_and_batch() -> None:
    # Ports test_searcher_utils.py::test_set_get_limiter, test_batch_limiter and
    # test_batch_limiter_infinite_loop.
    searcher = _grid(metric="result", mode="max")
    limiter = ConcurrencyLimiter(searcher, max_concurrent=2)
    assert limiter.suggest("test_1")["learning_rate"] == LRS[0]
    assert limiter.suggest("test_2")["learning_rate"] == LRS[1]
    assert limiter.suggest("test_3") is None
    state = limiter.get_state()
    del limiter
    limiter2 = ConcurrencyLimiter(searcher, max_concurrent=3)
    limiter2.set_state(state)
    assert limiter2.suggest("test_4") is None
    assert limiter2.suggest("test_5") is None
    limiter2.on_trial_complete("test_1", {"result": 3})
    limiter2.on_trial_complete("test_2", {"result": 3})
    assert limiter2.suggest("test_3")["learning_rate"] == LRS[2]

    batch = ConcurrencyLimiter(_grid(metric="result", mode="max"), max_concurrent=2, batch=True)
    assert batch.suggest("test_1")["learning_rate"] == LRS[0]
    assert batch.suggest("test_2")["learning_rate"] == LRS[1]
    assert batch.suggest("test_3") is None
    batch.on_trial_complete("test_1", {"result": 3})
    assert batch.suggest("test_3") is None
    batch.on_trial_complete("test_2", {"result": 3})
    assert batch.suggest("test_3") is not None

    # Fewer suggestions than max_concurrent in batch mode: the batch still completes.
    short = ConcurrencyLimiter(_grid(2, metric="result", mode="max"), max_concurrent=5, batch=True)
    short.suggest("test_1")
    short.suggest("test_2")
    assert short.suggest("test_3") == Searcher.FINISHED
    short.on_trial_complete("test_1", {"result": 3})
    short.on_trial_complete("test_2", {"result": 3})
    assert short.searcher.completed == ["test_1", "test_2"]


def test_max_concurrency_and_pending_trials() -> None:
    # Ports test_searcher_utils.py::test_set_max_concurrency (RFSearcher has no concurrency
    # logic of its own, so the limiter limits) and
    # execution/test_controller_search_alg_integration.py::TestGetMaxPendingTrials.
    limiter = ConcurrencyLimiter(_grid(metric="result", mode="max"), max_concurrent=2)
    assert limiter._limit_concurrency
    assert limiter.suggest("t1") is not None
    assert limiter.suggest("t2") is not None
    assert limiter.suggest("t3") is None
    assert _get_max_pending_trials(SearchGenerator(_grid(metric="m", mode="min"))) == 1
    for n in (1, 4, 16):
        limited = ConcurrencyLimiter(_grid(metric="m", mode="min"), max_concurrent=n)
        assert _get_max_pending_trials(SearchGenerator(limited)) == n
