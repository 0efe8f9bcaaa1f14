"""Ray Tune integration: rf-ray knob spaces as a Tune Searcher (b), Tune trials as runs of one
shared experiment (a), and a Tune searcher feeding rf-ray's run_fit (c).

Every test that runs a Tuner runs it in a child process with its own bounded Ray cluster
(``tune_scenarios.py``): a Tune run can leave trial actors holding every CPU of a shared one.
The searcher's checks that need no cluster are in ``test_tune_searcher.py``. (c) drives no
Tuner, so it uses the session's cluster (2 CPUs: the executor takes one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from policies.errors import ConfigError, UnknownKnobError
from policies.pruning import NoPruning
from rf_ray import Experiment, List, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from rf_ray.tune import RFTuneSearch, apply_flat, concrete
from tests.processes import kill_started_under

ROOT = Path(__file__).resolve().parents[2]

ROWS = 16  # batch 4: 4 optimizer steps per run
CHUNKS = 2


def _base(**knobs) -> RFModelConfig:
    args = dict(per_device_train_batch_size=4, max_length=48, num_train_epochs=1, lora_rank=4)
    args.update(knobs)
    return RFModelConfig(TOY_MODEL_NAME, training_args=RFSFTConfig(**args))


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


# --------------------------------------------------------------------------- Tune runs
def run_scenario(name: str, tmp_path: Path, timeout: float) -> str:
    """Run ``tune_scenarios.<name>`` in a child process with its own Ray cluster (under a
    private temp dir) and HOME, within ``timeout`` seconds; kill whatever it leaves. Fails the
    test if the scenario fails, or if Tune wrote to ``~/ray_results``."""
    ray_tmp = tempfile.mkdtemp(prefix="rft", dir="/tmp")  # short: Ray's socket paths
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    log_path = tmp_path / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.rf_ray.tune_scenarios", name, str(tmp_path), ray_tmp],
            cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            rc: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child and the Ray cluster it started
            proc.wait(timeout=60)
            kill_started_under(ray_tmp)
            shutil.rmtree(ray_tmp, ignore_errors=True)
    out = log_path.read_text()
    assert rc == 0, f"{name} {'timed out' if rc is None else f'exited {rc}'}:\n{out[-6000:]}"
    assert not (home / "ray_results").exists(), sorted((home / "ray_results").rglob("*"))[:5]
    return out


@pytest.mark.ray
def test_rf_searcher_in_tune(tmp_path) -> None:
    """Ports test_searchers.py's InvalidValuesTest, MultiObjectiveTest and
    AddEvaluatedPointTest::run_add_evaluated_trials onto RFSearcher in real Tuner runs; each
    trial of a group with a List of functions maps back to its own run (issue 21.18)."""
    run_scenario("searcher_in_tune", tmp_path, timeout=420)


@pytest.mark.ray
def test_rf_searcher_under_the_tune_controller(tmp_path) -> None:
    """Ports execution/test_controller_search_alg_integration.py's notification and
    scheduler-stop tests onto RFSearcher."""
    run_scenario("controller", tmp_path, timeout=300)


@pytest.mark.ray
@pytest.mark.slow
def test_rf_searcher_survives_tuner_restore(tmp_path) -> None:
    """Ports test_tuner_restore.py's test_custom_searcher_and_scheduler_restore (a subclass's
    own state comes back: issue 21.18), test_tuner_restore_num_trials and
    test_tuner_restore_resume_errored / _restart_errored onto RFSearcher."""
    run_scenario("restore", tmp_path, timeout=540)


# --------------------------------------------------------------------------- (a) Tune drives
@pytest.mark.ray
@pytest.mark.slow
def test_tune_optuna_asha_trials_share_one_base_model(tmp_path) -> None:
    """Optuna + ASHA trials each add a run to one shared experiment (one base model load);
    Tune writes under the experiment directory, never ~/ray_results (issue 21.9)."""
    run_scenario("shared_experiment", tmp_path, timeout=540)


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
