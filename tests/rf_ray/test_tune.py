"""Ray Tune integration: rf-ray knob spaces as a Tune Searcher (b), Tune trials as runs of one
shared experiment (a), and a Tune searcher feeding rf-ray's run_fit (c).

All on the session's one small Ray cluster (2 CPUs): the executor takes one CPU, Tune's trials
ask for 0.1 CPU each, so several trials wait on the one resident toy base model together.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from actors.storage.store import Store
from policies.errors import ConfigError, UnknownKnobError
from policies.pruning import NoPruning
from rf_ray import Experiment, List, RFGridSearch, RFModelConfig, RFSFTConfig
from rf_ray.specs import RunConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from rf_ray.tune import RFSearcher, RFTuneSearch, apply_flat, concrete, start_shared

ROWS = 16  # batch 4: 4 optimizer steps per run
CHUNKS = 2


def _base(**knobs) -> RFModelConfig:
    args = dict(per_device_train_batch_size=4, max_length=48, num_train_epochs=1, lora_rank=4)
    args.update(knobs)
    return RFModelConfig(TOY_MODEL_NAME, training_args=RFSFTConfig(**args))


def _tune_run_config(tmp_path, **kw) -> tune.RunConfig:
    return tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0, **kw)


# --------------------------------------------------------------------------- no Ray needed
def test_apply_flat_maps_knobs_and_names_an_unknown_key() -> None:
    base = concrete(_base(learning_rate=1e-4))
    run = apply_flat(base, {"learning_rate": 3e-4, "lora_rank": 8, "lora.lora_alpha": 16})
    assert run.training_args["learning_rate"] == 3e-4
    assert run.lora["r"] == 8
    assert run.lora["lora_alpha"] == 16
    nested = apply_flat(base, {"lora": {"r": 2}})
    assert nested.lora["r"] == 2
    with pytest.raises(UnknownKnobError, match="learnin_rate"):
        apply_flat(base, {"learnin_rate": 1e-3})
    with pytest.raises(UnknownKnobError, match=r"lora\.rank"):
        apply_flat(base, {"lora.rank": 8})
    with pytest.raises(ConfigError, match="base expands to 2 runs"):
        concrete(_base(learning_rate=List([1e-4, 2e-4])))


# --------------------------------------------------------------------------- (b) RFSearcher
def test_rf_searcher_drives_a_tuner_and_round_trips(ray_cluster, tmp_path) -> None:
    group = RFGridSearch(_base(learning_rate=List([1e-4, 3e-4]), lora_rank=List([4, 8])))
    searcher = RFSearcher(group, metric="score", mode="max")
    assert sorted(searcher.keys) == ["learning_rate", "lora.r"]

    def score(config):
        tune.report({"score": config["learning_rate"] * 1e4 + config["lora.r"]})

    tuner = tune.Tuner(
        tune.with_resources(score, {"cpu": 0.1}),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=10, max_concurrent_trials=2, reuse_actors=True
        ),
        run_config=_tune_run_config(tmp_path),
    )
    results = tuner.fit()
    # num_samples=10 but the grid has 4 points: FINISHED ends the search after them.
    configs = sorted((r.config["learning_rate"], r.config["lora.r"]) for r in results)
    assert configs == [(1e-4, 4), (1e-4, 8), (3e-4, 4), (3e-4, 8)]
    assert searcher.suggest("one-more") == Searcher.FINISHED
    assert len(searcher.completed) == 4
    best = searcher.best()
    assert best is not None
    best_flat, best_result = best
    assert best_flat == {"learning_rate": 3e-4, "lora.r": 8}
    assert best_result["score"] == pytest.approx(11.0)

    # A suggestion maps back to the group's run; changed values build a validated run.
    run = searcher.to_run_config(best_flat)
    assert isinstance(run, RunConfig)
    assert run.lora["r"] == 8
    assert searcher.to_run_config({"learning_rate": 5e-4}).training_args["learning_rate"] == 5e-4
    with pytest.raises(UnknownKnobError, match="lr"):
        searcher.to_run_config({"lr": 1e-3})

    # save/restore: JSON, atomic, into a searcher over the same space.
    path = tmp_path / "ckpt" / "searcher.json"
    searcher.save(str(path))
    assert json.loads(path.read_text())["next_index"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["searcher.json"]  # no temp file left
    fresh = RFSearcher(group)
    fresh.restore(str(path))
    assert fresh.assigned == searcher.assigned
    assert fresh.results == searcher.results
    assert fresh.metric == "score"
    assert fresh.mode == "max"
    assert fresh.suggest("again") == Searcher.FINISHED
    half = RFSearcher(group, metric="score", mode="max")
    half.suggest("t0")
    half.save(str(path))
    resumed = RFSearcher(group)
    resumed.restore(str(path))
    assert resumed.suggest("t1") == half.points[1] != half.points[0]
    other = RFSearcher(RFGridSearch(_base(learning_rate=List([1e-5, 2e-5]))))
    with pytest.raises(ConfigError, match="different search space"):
        other.restore(str(path))


# --------------------------------------------------------------------------- (a) Tune drives
@pytest.mark.slow
def test_tune_optuna_asha_trials_share_one_base_model(ray_cluster, tmp_path) -> None:
    shared = start_shared(
        Experiment("tune-shared", experiment_path=tmp_path),
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

    asha = ASHAScheduler(
        time_attr="training_iteration", max_t=CHUNKS, grace_period=1, reduction_factor=2
    )
    tuner = tune.Tuner(
        shared.trainable(),
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="eval_loss", mode="min", seed=0),
            scheduler=asha,
            metric="eval_loss",
            mode="min",
            num_samples=4,
            max_concurrent_trials=3,
            reuse_actors=True,
        ),
        run_config=_tune_run_config(tmp_path, callbacks=[shared.callback]),
    )
    started = time.monotonic()
    try:
        results = tuner.fit()
        # Bad input that reaches a trial anyway: it errors, naming the key, and adds no run.
        bad = tune.Tuner(
            shared.trainable(),
            param_space={"learnig_rate": tune.choice([1e-4])},
            tune_config=tune.TuneConfig(num_samples=1),
            run_config=_tune_run_config(tmp_path, name="bad-key"),
        ).fit()
        # Runs of trials that Tune stopped were pruned when Tune stopped them, not at close().
        store = Store(shared.experiment.dir, readonly=True)
        try:
            rows = {r["run_id"]: r for r in store.runs()}
            chunk_rows = store.chunk_metrics()
        finally:
            store.close()
    finally:
        info = shared.close()
    assert not results.errors, results.errors
    assert len(bad.errors) == 1
    assert "learnig_rate" in str(bad.errors[0])

    assert len(results) == 4
    by_run = {}
    for r in results:
        m = r.metrics
        run_id = m["rf_run_id"]
        by_run[run_id] = r
        iterations = m["training_iteration"]
        # One Tune report per chunk, carrying that chunk's metrics.
        assert m["chunk"] == iterations
        assert 1 <= iterations <= CHUNKS
        row = rows[run_id]
        mine = sorted(c for rid, c, _ in chunk_rows if rid == run_id)
        assert mine[:iterations] == list(range(1, iterations + 1))
        cfg = json.loads(json.dumps(row["params"]))
        assert cfg["learning_rate"] == pytest.approx(r.config["learning_rate"])
        assert cfg["lora.r"] == r.config["lora_rank"]
        if iterations == CHUNKS:
            assert row["status"] == "completed"
        elif row["status"] == "completed":
            # ASHA stopped the trial, but the run trains at its own pace: it had finished all
            # its chunks before the stop reached it (a race of a 4-step run, not a leak).
            assert mine == list(range(1, CHUNKS + 1)), row
        else:  # ASHA stopped it: its run is not left live
            assert row["status"] in ("pruned", "stopped"), row
    assert len(by_run) == 4  # every Tune trial has its own rf-ray run
    early = [r for r in results if r.metrics["training_iteration"] < CHUNKS]
    print(f"ASHA stopped {len(early)} of 4 trials early in {time.monotonic() - started:.0f}s")
    assert set(info["status"]) <= {"completed", "pruned", "stopped"}
    assert shared.experiment.stats()["base_loads"] == 1


# --------------------------------------------------------------------------- (c) rf-ray drives
@pytest.mark.slow
def test_rf_tune_search_feeds_optuna_within_max_concurrent(ray_cluster, tmp_path) -> None:
    space = {"learning_rate": tune.loguniform(1e-5, 3e-3), "lora_rank": tune.choice([2, 4])}
    searcher = OptunaSearch(space, metric="eval_loss", mode="min", seed=0)
    seen: list[tuple[str, str, int | None]] = []
    on_result, on_complete = searcher.on_trial_result, searcher.on_trial_complete

    def record_result(trial_id, result):
        seen.append(("result", trial_id, result["training_iteration"]))
        on_result(trial_id, result)

    def record_complete(trial_id, result=None, error=False):
        seen.append(("complete", trial_id, None if result is None else result["chunk"]))
        on_complete(trial_id, result=result, error=error)

    searcher.on_trial_result = record_result  # type: ignore[method-assign]
    searcher.on_trial_complete = record_complete  # type: ignore[method-assign]
    source = RFTuneSearch(searcher, num_runs=4, base=_base(), max_concurrent=2)

    exp = Experiment("tune-source", experiment_path=tmp_path)
    exp.run_fit(
        source,
        train_dataset=sft_dataset(ROWS),
        eval_dataset=sft_dataset(8, seed=1),
        num_chunks=CHUNKS,
        seed=0,
        pruner=NoPruning(),
        live_view=False,
        blocking=False,
    )
    # Watch the scheduler from outside: never more than max_concurrent live runs. A poll: the
    # peak is a property of every moment, and no call reports when the live set changes.
    peak, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                snap = exp._scheduler().snapshot.remote()
                import ray

                live = [s for s in ray.get(snap) if s["status"] in ("pending", "running")]
                peak[0] = max(peak[0], len(live))
            except Exception:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        info = exp.wait()
    finally:
        stop.set()
        exp.end()
    watcher.join(5)
    source.join(5)

    assert not source.errors
    assert len(info) == 4  # num_runs configs were created in total
    assert set(info["status"]) == {"completed"}
    assert 1 <= peak[0] <= 2
    assert source.max_live_seen <= 2
    # The searcher heard every chunk of every run, then each run's completion.
    trials = sorted(source.run_ids.values())
    for t in trials:
        assert [s[2] for s in seen if s[:2] == ("result", t)] == list(range(1, CHUNKS + 1))
        assert ("complete", t, CHUNKS) in seen
    study_trials = searcher._ot_study.get_trials()
    assert sum(t.state.name == "COMPLETE" for t in study_trials) == 4
    assert exp.stats()["base_loads"] == 1
