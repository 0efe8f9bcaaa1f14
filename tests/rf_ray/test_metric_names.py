"""A pruner metric that a run can never report is refused by ``run_fit``, before anything is
written (issue 21, item 3); the names each algorithm reports (``rf_ray.metric_names``) cover
what one real slice of it logs, trained and evaluated by the executor (TRL's own trainers, no
Ray). Where user code names the metrics, the first chunk tells: ``test_missing_metric_e2e``.
"""

from __future__ import annotations

import pytest

from actors.engine.executor import Executor
from actors.scheduler import chunk_metrics
from policies.errors import ConfigError
from rf_ray import (
    ASHA,
    Experiment,
    List,
    MedianStopping,
    NoPruning,
    RFDPOConfig,
    RFGRPOConfig,
    RFModelConfig,
    RFSFTConfig,
    SuccessiveHalving,
    ThresholdPruner,
)
from rf_ray.metric_names import reported_metrics
from rf_ray.search import RFGridSearch
from rf_ray.specs import build_specs
from rf_ray.toy import (
    TOY_MODEL_NAME,
    arithmetic_reward,
    dpo_dataset,
    grpo_dataset,
    load_toy_model,
    sft_dataset,
    sft_eval_dataset,
)

ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, lora_rank=4)


def _sft(**kw) -> RFModelConfig:
    return RFModelConfig(TOY_MODEL_NAME, training_args=RFSFTConfig(max_length=48, **ARGS), **kw)


def _dpo() -> RFModelConfig:
    return RFModelConfig(TOY_MODEL_NAME, training_args=RFDPOConfig(max_length=64, **ARGS))


def _grpo() -> RFModelConfig:
    args = RFGRPOConfig(num_generations=4, max_completion_length=4, **ARGS)
    return RFModelConfig(TOY_MODEL_NAME, training_args=args, reward_funcs=[arithmetic_reward])


def _fit(tmp_path, configs, pruner, train=None, evals=None):
    exp = Experiment("metric", experiment_path=tmp_path)
    exp.run_fit(
        configs, train_dataset=train or sft_dataset(16), eval_dataset=evals, num_chunks=2,
        pruner=pruner, live_view=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("configs", "pruner", "evals", "expected"),
    [
        ([_sft()], SuccessiveHalving(metric="bogus"), None, "'bogus' is reported by no run"),
        ([_sft()], ASHA(metric="eval_los"), sft_eval_dataset(4), "'eval_los' is reported by no"),
        ([_sft()], NoPruning(metric="eval_loss"), None, "'eval_loss' is an eval metric, but"),
        (
            [_sft(eval_metrics_fn=["rougeL"]), _sft()],
            ThresholdPruner(1.0, metric="rougeL"),
            sft_eval_dataset(4),
            "'rougeL' is reported by 1 of the 2 runs",
        ),
        ([_sft()], MedianStopping(metric="loss"), None, "every run reports"),
    ],
    ids=["bogus", "eval-typo", "eval-without-eval-set", "one-run-lacks-it", "loss-not-train_loss"],
)
def test_a_metric_no_run_reports_is_refused_before_anything_is_written(
    tmp_path, configs, pruner, evals, expected
):
    with pytest.raises(ConfigError, match=expected) as info:
        _fit(tmp_path, configs, pruner, evals=evals)
    assert "train_loss" in str(info.value)  # the names the runs do report
    assert list(tmp_path.iterdir()) == []


def _tune_search(metric):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from rf_ray.tune import RFTuneSearch

    space = {"learning_rate": tune.loguniform(1e-5, 1e-3)}
    return RFTuneSearch(OptunaSearch(space, metric=metric, mode="min"), num_runs=4, base=_sft())


def _optuna(objective):
    from rf_ray.tune import RFOptuna

    config = RFModelConfig(TOY_MODEL_NAME, training_args=RFSFTConfig(
        max_length=48, learning_rate=List([1e-4, 3e-4]), **ARGS))  # fmt: skip
    return RFOptuna(config, n_initial=2, budget=2, objective=objective)


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (lambda: _tune_search("eval_los"), "RFTuneSearch's metric 'eval_los' is reported by no"),
        (lambda: _optuna("minimize:eval_loss,maximize:bogus"), "RFOptuna's metric 'bogus'"),
    ],
    ids=["tune-searcher", "optuna-second-objective"],
)
def test_a_search_that_steers_on_a_metric_no_run_reports_is_refused(tmp_path, group, expected):
    """A Tune searcher fed results without its metric ended the search's thread (``KeyError``
    in the searcher), so the search silently added no run after its first ones; RFOptuna's
    second objective was never checked (only the first is the pruner's)."""
    pytest.importorskip("optuna")
    with pytest.raises(ConfigError, match=expected):
        _fit(tmp_path, group(), SuccessiveHalving(metric="eval_loss"), evals=sft_eval_dataset(4))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- one real slice each
def _logged(tmp_path, config, train, evals):
    """The chunk metric names of one real slice (train + evaluate) of ``config``'s run."""
    (run,) = RFGridSearch([config]).expand()
    (spec,) = build_specs([run], tmp_path, train_rows=len(train), num_chunks=2, seed=3)
    executor = Executor(lambda _: load_toy_model(), train, evals, "cpu")
    executor.add_run(spec)
    result = executor.run_slice(1, spec.plan.chunk_bounds(0)[1], evaluate=True)
    return run, set(chunk_metrics(result.step_metrics, result.eval_metrics))


@pytest.mark.parametrize(
    ("config", "train", "evals", "core"),
    [
        (
            _sft(eval_metrics_fn=["rougeL"], eval_generations=2),
            sft_dataset(16),
            sft_eval_dataset(4),
            {"train_loss", "eval_loss", "rougeL", "eval_mean_token_accuracy"},
        ),
        (
            _dpo(),
            dpo_dataset(16),
            dpo_dataset(4, seed=1),
            {"train_loss", "eval_loss", "rewards/accuracies", "eval_rewards/margins"},
        ),
        (
            _grpo(),
            grpo_dataset(8),
            grpo_dataset(4, seed=1),
            {"train_loss", "reward", "rewards/arithmetic_reward/mean", "eval_reward"},
        ),
    ],
    ids=["SFT", "DPO", "GRPO"],
)
def test_the_names_of_each_algorithm_cover_what_a_real_slice_logs(
    tmp_path, config, train, evals, core
):
    run, logged = _logged(tmp_path, config, train, evals)
    assert core <= logged
    names = reported_metrics(run, has_eval=True).names
    assert logged <= names, sorted(logged - names)
    assert not reported_metrics(run, has_eval=False).names & {"eval_loss", "rougeL"}


# --------------------------------------------------------------------------- known only at a chunk
def accuracy_metrics(eval_prediction) -> dict[str, float]:
    """A TRL ``compute_metrics`` (its names are the user's): reports ``eval_acc``."""
    return {"acc": 0.5}


def test_a_metric_user_code_does_not_report_stops_pruning_at_the_first_chunk(ray_cluster, tmp_path):
    """``eval_accuracy`` could come from ``compute_metrics``; it does not (the function names
    it ``acc``). Successive halving would prune two of the three runs; none is pruned, and the
    error that lists the metrics the runs report is in runs info, status, MLflow and the log."""
    from mlflow.tracking import MlflowClient

    from rf_ray.cli.status import read_experiment, status_text

    exp = Experiment("missing", experiment_path=tmp_path)
    configs = [
        RFModelConfig(
            TOY_MODEL_NAME, compute_metrics=accuracy_metrics,
            training_args=RFSFTConfig(max_length=48, learning_rate=lr, **ARGS),
        )
        for lr in (3e-3, 1e-3, 3e-4)
    ]  # fmt: skip
    try:
        info = exp.run_fit(
            configs, train_dataset=sft_dataset(16), eval_dataset=sft_eval_dataset(4),
            num_chunks=2, pruner=SuccessiveHalving(metric="eval_accuracy"), live_view=False,
        )  # fmt: skip
    finally:
        exp.end()
    assert (info["status"] == "completed").all(), info[["status", "error"]]
    error = info["pruning_error"].iloc[0]
    assert (info["pruning_error"] == error).all()
    assert "chunk 1 of run " in error
    assert "has no 'eval_accuracy', the pruner's metric; the runs report " in error
    assert "eval_acc, eval_entropy, eval_loss," in error
    assert "The runs go on unpruned" in error
    assert error in status_text("missing", exp.dir, read_experiment(exp.dir))
    client = MlflowClient(tracking_uri=exp.tracking_uri)
    for mlflow_run_id in info["mlflow_run_id"]:
        assert client.get_run(mlflow_run_id).data.tags["rf_ray.pruning_error"] == error
    assert error in exp.get_log_file_path().read_text()
