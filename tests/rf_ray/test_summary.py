"""What ``run_fit`` tells its user (issue 22, items 6 and 9): how runs are pruned and the one
argument that trains every run to the end, a summary at the end, an error when nothing
trained, and one log file that the driver and the actors write (``actors/logs.py``)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from actors import logs
from policies.errors import ConfigError, NoRunTrainedError, RunFailedError
from policies.pruning import ASHA, MedianStopping, NoPruning, SuccessiveHalving, ThresholdPruner
from rf_ray import Experiment, List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rf_ray import summary as s
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset

TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad row 3\n'


def run(run_id, status, steps=4, best=0.5, error=None):
    return {
        "run_id": run_id, "status": status, "steps_done": steps, "chunks_done": 2,
        "total_chunks": 2, "best_metric": best, "error": error,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("pruner", "says"),
    [
        (SuccessiveHalving(), "successive halving (keeps the best 1/2 of the runs after chunks "
         "1, 2, 4, ...) on eval_loss (min)"),
        (ASHA(eta=3, min_chunks=2), "ASHA (keeps the best 1/3 of the runs after chunks 2, 6, 18"),
        (MedianStopping(), "median stopping (from chunk 1) on eval_loss (min)"),
        (ThresholdPruner(2.5, patience=2), "threshold (a run worse than 2.5 for 2 chunks in a "
         "row)"),
    ],
)  # fmt: skip
def test_the_start_note_says_how_runs_are_pruned_and_how_to_train_all_to_the_end(pruner, says):
    note = s.pruning_note(pruner.with_defaults("eval_loss", "min"))
    assert says in note
    assert note.endswith("to train every run to the end: run_fit(..., pruner=NoPruning())")
    assert s.pruning_note(NoPruning()) == "pruning: none, every run trains to the end"
    assert s.pruning_note(NoPruning(), "Optuna does") == "pruning: Optuna does"


def test_the_summary_has_each_runs_status_best_metric_and_a_failures_last_line(tmp_path):
    text = s.render(
        "grid",
        [run(1, "completed", best=0.25), run(2, "pruned", best=float("nan")),
         run(3, "failed", steps=0, best=None, error=TRACEBACK)],
        "eval_loss", "pruning: none", tmp_path / "rf_ray.log",
    )  # fmt: skip
    assert text.splitlines() == [
        "[rf-ray grid] 3 runs: 1 completed, 1 failed, 1 pruned",
        "  run 1: completed, chunks 2/2, best eval_loss 0.2500",
        "  run 2: pruned, chunks 2/2, best eval_loss -",
        "  run 3: failed, chunks 2/2, best eval_loss -, error: ValueError: bad row 3",
        "  pruning: none",
        f"  log: {tmp_path / 'rf_ray.log'}",
    ]
    assert s.last_line("x" * 1000).endswith("...")
    assert len(s.last_line("x" * 1000)) == s.ERROR_CHARS


def test_nothing_trained_raises_naming_every_failure(tmp_path):
    log = tmp_path / "rf_ray.log"
    failed = [run(1, "failed", 0, error=TRACEBACK), run(2, "failed", 0, error="OOM\n")]
    with pytest.raises(NoRunTrainedError) as err:
        s.check_trained("grid", [*failed, run(3, "deleted", 0)], log)
    assert isinstance(err.value, RunFailedError)
    assert "no run trained, 2 of 3 failed: run 1: ValueError: bad row 3; run 2: OOM" in str(
        err.value
    )
    assert str(log) in str(err.value)
    s.check_trained("grid", [*failed, run(3, "pruned", 2)], log)  # one trained: no error
    s.check_trained("grid", [run(1, "stopped", 0)], log)  # nothing failed: no error


@pytest.mark.parametrize(
    ("generation_config", "noted"),
    [
        ({"max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9}, "sets temperature, top_p but"),
        ({"temperature": 0.8, "do_sample": True}, None),
        ({"temperature": 0.8, "do_sample": False}, None),
        ({"max_new_tokens": 8}, None),
        (None, None),
    ],
)
def test_sampling_fields_without_do_sample_get_one_note(generation_config, noted):
    runs = RFGridSearch(RFModelConfig("tiny", generation_config=generation_config)).expand()
    notes = s.generation_notes(runs)
    assert [noted in n for n in notes.values()] == ([] if noted is None else [True])


def test_get_log_file_path_takes_rapidfires_kinds(tmp_path):
    exp = Experiment("logs", experiment_path=tmp_path)
    path = exp.dir / "rf_ray.log"
    kinds = [None, "main", "experiment", "training", "TRAINING"]
    assert [exp.get_log_file_path(k) for k in kinds] == [path] * 5
    with pytest.raises(ConfigError, match="log_type='worker' is not one of"):
        exp.get_log_file_path("worker")


@pytest.fixture
def fresh_loggers():
    """rf-ray's loggers as an application that never configured logging leaves them."""
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in logs.LOGGERS}
    for name in logs.LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    yield
    for name, (level, propagate) in saved.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).propagate = propagate


def test_the_log_file_gets_info_while_the_console_gets_what_it_got_before(
    tmp_path, fresh_loggers, caplog
):
    caplog.set_level(logging.WARNING)  # the root's level: what the application lets through
    logger = logging.getLogger("actors.some_module")
    path = logs.attach(tmp_path, "scheduler")
    assert logs.attach(tmp_path, "scheduler") == path  # once per directory
    try:
        logger.info("chunk 1 done")
        logger.warning("run 3 failed")
    finally:
        logs.detach(tmp_path)
    logger.warning("after detach")
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 2
    assert "INFO [scheduler pid=" in lines[0]
    assert lines[0].endswith("actors.some_module: chunk 1 done")
    assert lines[1].endswith("actors.some_module: run 3 failed")
    assert [r.getMessage() for r in caplog.records] == ["run 3 failed", "after detach"]
    assert logging.getLogger("actors").propagate  # given back as it was
    assert logging.getLogger("actors").level == logging.NOTSET


def test_quiet_drops_only_the_lines_rf_ray_causes(caplog):
    logs.quiet()
    caplog.set_level(logging.INFO)
    ray_auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    ray_auth.warning("Token authentication is enabled for this Ray cluster. Set ...")
    ray_auth.warning("Token authentication is disabled for this Ray cluster. Anyone ...")
    logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
    assert [r.getMessage() for r in caplog.records] == [
        "Token authentication is disabled for this Ray cluster. Anyone ..."
    ]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        logs.ignore_warnings()
        warnings.warn_explicit(
            "Adapter run_2 was active which is now deleted. Setting active adapter to run_1.",
            UserWarning, "tuners_utils.py", 1, module="peft.tuners.tuners_utils",
        )  # fmt: skip
        warnings.warn_explicit(
            "Adapter run_2 was active", UserWarning, "mine.py", 1, module="my_script"
        )
    assert [str(w.message) for w in seen] == ["Adapter run_2 was active"]


def test_run_fit_says_how_it_prunes_and_ends_with_a_summary(ray_cluster, tmp_path, capsys):
    exp = Experiment("said", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        peft_config=List([RFLoraConfig(r=2), RFLoraConfig(r=4)]),
        training_args=RFSFTConfig(per_device_train_batch_size=4, max_length=48, max_steps=2),
    )
    try:
        exp.run_fit(config, train_dataset=sft_dataset(8), num_chunks=2, live_view=False)
    finally:
        exp.end()
    out = capsys.readouterr().out
    assert "[rf-ray said] 2 runs; pruning: successive halving" in out
    assert "to train every run to the end: run_fit(..., pruner=NoPruning())" in out
    assert "[rf-ray said] 2 runs: 1 completed, 1 pruned" in out
    assert "  run 1: completed, chunks 2/2, best train_loss " in out
    log = exp.get_log_file_path("training").read_text()
    assert "[rf-ray said] 2 runs: 1 completed, 1 pruned" in log
    assert "[scheduler pid=" in log


def test_a_run_fit_whose_runs_all_fail_raises(ray_cluster, tmp_path, capsys):
    def broken(row):
        raise ValueError("broken on purpose")

    exp = Experiment("all-fail", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        training_args=RFSFTConfig(per_device_train_batch_size=4, max_length=48, max_steps=2),
        formatting_func=broken,
    )
    try:
        with pytest.raises(NoRunTrainedError) as err:
            exp.run_fit(config, train_dataset=sft_dataset(8), num_chunks=2, live_view=False)
    finally:
        exp.end()
    assert "no run trained, 1 of 1 failed: run 1: ValueError: broken on purpose" in str(err.value)
    out = capsys.readouterr().out
    assert "run 1: failed, chunks 0/2, best train_loss -, error: ValueError: broken on" in out
    log = exp.get_log_file_path().read_text()
    assert "run 1 failed: ValueError: broken on purpose" in log
