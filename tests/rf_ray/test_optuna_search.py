"""``RFOptuna`` matches RapidFire AI's (``rapidfireai/automl/optuna_search.py``): its constructor
and defaults, a study the user reads, Optuna's samplers and pruners, RapidFire's pruning rules
on the objective's own metric and direction, and trial states (PRUNED, not COMPLETE, for a
pruned run). No Ray here: ``TrialBook`` is fed chunk metrics by hand, as the search's thread
feeds it from the store (the end-to-end run is in ``test_compat_engine.py``)."""

from __future__ import annotations

import inspect

import optuna
import pytest
from optuna.trial import TrialState

from policies.errors import ConfigError
from policies.pruning import NoPruning, SuccessiveHalving
from policies.settings import ExperimentSettings
from rf_ray import Experiment, List, Range, RFLoraConfig, RFModelConfig, RFOptuna, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset
from rf_ray.tune.optuna_trials import Objective, TrialBook

RAPIDFIRE_DEFAULTS = {
    "configs": None,
    "trainer_type": None,
    "n_initial": 16,
    "budget": 40,
    "objective": "minimize:eval_loss",
    "sampler": "tpe",
    "pruner": "median",
    "seed": 42,
    "granularity": "chunk",
}


def template(**training):
    return RFModelConfig(
        "tiny",
        peft_config=RFLoraConfig(
            r=List([4, 8]), target_modules=List([["q_proj", "v_proj"], ["q_proj", "k_proj"]])
        ),
        training_args=RFSFTConfig(
            learning_rate=Range(1e-5, 1e-3, log=True), max_length=64, **training
        ),
    )


# ------------------------------------------------------------------ the constructor
def test_the_constructor_and_its_defaults_are_rapidfires():
    params = inspect.signature(RFOptuna).parameters
    assert {name: p.default for name, p in params.items()} == RAPIDFIRE_DEFAULTS
    search = RFOptuna(configs=[template()], trainer_type="SFT")
    assert (search.n_initial, search.budget, search.seed) == (16, 40, 42)
    assert (search.sampler_name, search.pruner_name, search.granularity) == (
        "tpe", "median", "chunk"
    )  # fmt: skip
    assert RFOptuna(template(), n_initial=5, budget=2).budget == 5  # RapidFire: max(budget, n)


def test_expand_asks_the_study_for_n_initial_runs_named_as_rapidfire_names_them():
    search = RFOptuna(template(), trainer_type="SFT", n_initial=3, budget=5, seed=0)
    assert search.study is None  # created by run_fit's expand, as RapidFire's get_runs does
    runs = search.expand()
    assert search.study is search._study  # RapidFire's notebooks read config_group._study
    trials = search.study.trials
    assert [t.state for t in trials] == [TrialState.RUNNING] * 3
    for run, trial in zip(runs, trials, strict=True):
        assert set(trial.params) == {
            "peft_config.r", "peft_config.target_modules", "training_args.learning_rate",
        }  # fmt: skip
        assert run.lora["r"] == trial.params["peft_config.r"]
        assert run.training_args["learning_rate"] == trial.params["training_args.learning_rate"]
        assert 1e-5 <= run.training_args["learning_rate"] <= 1e-3
        assert run.lora["target_modules"] in (["q_proj", "v_proj"], ["q_proj", "k_proj"])
        assert run.training_args["max_length"] == 64
    assert search.expand() == runs  # asked once
    assert len(search.study.trials) == 3


def test_the_same_seed_proposes_the_same_runs():
    def proposals(seed):
        return [r.training_args["learning_rate"] for r in RFOptuna(template(), n_initial=4,
                seed=seed).expand()]  # fmt: skip

    assert proposals(7) == proposals(7)
    assert proposals(7) != proposals(8)


def test_several_templates_are_one_categorical_choice():
    small = RFModelConfig("tiny", training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4])))
    large = RFModelConfig("tiny", training_args=RFSFTConfig(max_length=List([32, 64])))
    search = RFOptuna(configs=[small, large], trainer_type="SFT", n_initial=6, seed=3)
    runs = search.expand()
    for run, trial in zip(runs, search.study.trials, strict=True):
        index = trial.params["_config_template_idx"]
        name = {0: "learning_rate", 1: "max_length"}[index]
        assert trial.params[f"_t{index}.training_args.{name}"] == run.training_args[name]
    assert {t.params["_config_template_idx"] for t in search.study.trials} == {0, 1}


@pytest.mark.parametrize(
    ("kwargs", "sampler", "pruner"),
    [
        ({}, optuna.samplers.TPESampler, optuna.pruners.MedianPruner),
        ({"sampler": "random", "pruner": "hyperband"}, optuna.samplers.RandomSampler,
         optuna.pruners.HyperbandPruner),
        ({"sampler": "RANDOM", "pruner": None}, optuna.samplers.RandomSampler,
         optuna.pruners.NopPruner),
    ],
)  # fmt: skip
def test_sampler_and_pruner_are_optunas(kwargs, sampler, pruner):
    search = RFOptuna(template(), n_initial=4, **kwargs)
    search.expand()
    assert isinstance(search.study.sampler, sampler)
    assert isinstance(search.study.pruner, pruner)
    if pruner is optuna.pruners.MedianPruner:
        assert search.study.pruner._n_startup_trials == 2  # RapidFire: max(1, n_initial // 2)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"objective": "best"}, "'minimize:<metric>' or 'maximize:<metric>'"),
        ({"objective": "maximize:rougeL,maximize:rougeL"}, "names a metric twice"),
        ({"sampler": "grid"}, "sampler='grid' is not one of 'tpe', 'cmaes', 'random'"),
        ({"pruner": "asha"}, "pruner='asha' is not one of 'median', 'hyperband', or None"),
        ({"granularity": "step"}, "granularity='step' is not one of 'chunk', 'epoch'"),
        ({"n_initial": 0}, "n_initial=0 must be an integer >= 1"),
        ({"seed": -1}, "seed=-1 must be an integer >= 0 or None"),
    ],
)
def test_bad_arguments_are_refused_naming_the_value(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        RFOptuna(template(), **kwargs)
    assert needle in str(err.value)


def test_a_template_without_knobs_is_refused():
    with pytest.raises(ConfigError, match="no List or Range knob"):
        RFOptuna(RFModelConfig("tiny"))


def test_optuna_prunes_so_run_fits_own_pruner_only_ranks_on_the_objective():
    search = RFOptuna(template(), objective="maximize:rougeL,minimize:eval_loss")
    pruner = search.default_pruner()
    assert isinstance(pruner, NoPruning)
    assert (pruner.metric, pruner.mode) == ("rougeL", "max")
    assert "Pareto dominance (multi-objective) on rougeL (maximize), eval_loss (minimize)" in (
        search.pruning_note()
    )
    assert "every trial trains to the end" in RFOptuna(template(), pruner=None).pruning_note()


# ------------------------------------------------------------------ the pruning rules
def book_with(runs, objective="minimize:eval_loss", **kwargs):
    parsed = Objective.parse(objective)
    if parsed.multi:
        study = optuna.create_study(directions=list(parsed.directions))
    else:
        study = optuna.create_study(
            direction=parsed.directions[0], pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
        )
    book = TrialBook(study, parsed, **kwargs)
    for run_id in runs:
        book.bind(run_id, study.ask())
    return book


def states(book):
    return {run_id: t.state for run_id, t in zip(book.trials, book.study.trials, strict=True)}


@pytest.mark.parametrize(
    ("objective", "values", "pruned"),
    [
        ("minimize:eval_loss", [1.0, 2.0, 3.0], [False, True, True]),
        ("maximize:rougeL", [1.0, 2.0, 3.0], [False, False, False]),
        ("maximize:rougeL", [3.0, 2.0, 1.0], [False, True, True]),
    ],
)
def test_a_run_worse_than_the_median_of_the_others_at_its_chunk_is_pruned(
    objective, values, pruned
):
    """RapidFire's concurrent rule: the run's best so far against the median of every other
    trial's value at the same chunk (here: 1 peer for the second run, 2 for the third)."""
    book = book_with([1, 2, 3], objective)
    metric = objective.split(":")[1]
    decisions = [book.on_chunk(r, 1, {metric: v}, last=False) for r, v in zip([1, 2, 3], values)]
    assert decisions == pruned
    assert [book.study.trials[i].intermediate_values for i in range(3)] == [{1: v} for v in values]


def test_the_first_run_to_finish_a_chunk_is_judged_again_once_its_peers_report_it():
    """rf-ray interleaves runs chunk by chunk: judged only when it reports, the first run at a
    chunk would never meet a peer there."""
    book = book_with([1, 2, 3])
    assert not book.on_chunk(1, 1, {"eval_loss": 3.0}, last=False)  # no peer yet
    assert book.rejudge() == []
    book.on_chunk(2, 1, {"eval_loss": 1.0}, last=False)
    assert book.rejudge() == [1]  # 3.0 against its one peer, 1.0
    book.on_chunk(3, 1, {"eval_loss": 2.0}, last=False)
    assert book.rejudge() == [1]  # against two peers now (median 1.5)
    assert book.rejudge() == []  # nothing new to judge on
    book.pruned(1)
    assert not book.on_chunk(2, 2, {"eval_loss": 0.9}, last=True)  # a last chunk: never judged
    assert book.on_chunk(3, 2, {"eval_loss": 5.0}, last=False)  # its best, 2.0 > 0.9
    assert book.rejudge() == []  # judged against that one peer already


def test_told_states_pruned_complete_and_fail():
    book = book_with([1, 2, 3, 4, 5, 6])
    for run_id in book.trials:
        book.on_chunk(run_id, 1, {"eval_loss": 1.0, "train_loss": 2.0}, last=False)
    book.pruned(1)
    book.finished(2, "completed", {"eval_loss": 0.5})
    book.finished(3, "failed", {"eval_loss": 0.1})
    book.finished(4, "deleted", {"eval_loss": 0.1})
    book.finished(5, "completed", {"other": 1.0})  # no objective value: FAIL, as RapidFire
    book.finalize({6: {"eval_loss": 0.7}})  # still open at the end: its last value
    assert list(states(book).values()) == [
        TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL,
        TrialState.FAIL, TrialState.COMPLETE,
    ]  # fmt: skip
    assert book.study.trials[1].value == 0.5
    assert book.study.trials[5].value == 0.7
    assert book.study.best_trial.number == 1
    book.pruned(2)  # told once: a later event changes nothing
    assert book.study.trials[1].state == TrialState.COMPLETE


def test_no_decision_at_the_last_chunk_without_the_metric_or_with_pruner_none():
    book = book_with([1, 2])
    assert not book.on_chunk(1, 1, {"eval_loss": 1.0}, last=False)
    assert not book.on_chunk(2, 1, {"eval_loss": 9.0}, last=True)  # completes instead
    assert not book.on_chunk(2, 1, {"rougeL": 9.0}, last=False)  # no objective value
    quiet = book_with([1, 2], prunes=False)
    quiet.on_chunk(1, 1, {"eval_loss": 1.0}, last=False)
    assert not quiet.on_chunk(2, 1, {"eval_loss": 9.0}, last=False)


def test_eval_loss_falls_back_to_train_loss_as_rapidfire_does():
    book = book_with([1, 2])
    book.on_chunk(1, 1, {"train_loss": 1.0}, last=False)
    assert book.on_chunk(2, 1, {"train_loss": 2.0}, last=False)
    assert book.study.trials[0].intermediate_values == {1: 1.0}


def test_epoch_granularity_decides_only_at_an_epochs_last_chunk():
    book = book_with([1, 2], chunks_per_epoch=2)
    book.on_chunk(1, 1, {"eval_loss": 1.0}, last=False)
    book.on_chunk(1, 2, {"eval_loss": 1.0}, last=False)
    assert not book.on_chunk(2, 1, {"eval_loss": 5.0}, last=False)  # chunk 1 of 2: reported only
    assert book.study.trials[1].intermediate_values == {1: 5.0}
    assert book.on_chunk(2, 2, {"eval_loss": 5.0}, last=False)


def test_optunas_median_pruner_compares_with_completed_trials():
    book = book_with([1, 2])
    book.on_chunk(1, 1, {"eval_loss": 1.0}, last=False)
    book.finished(1, "completed", {"eval_loss": 1.0})
    book.values.clear()  # leave only Optuna's own rule: no peers for the concurrent one
    assert book.on_chunk(2, 1, {"eval_loss": 3.0}, last=False)


def test_several_objectives_prune_a_run_dominated_by_most_others():
    book = book_with([1, 2, 3, 4], "maximize:rougeL,minimize:eval_loss")
    assert not book.on_chunk(1, 1, {"rougeL": 0.5, "eval_loss": 1.0}, last=False)
    assert not book.on_chunk(2, 1, {"rougeL": 0.6, "eval_loss": 0.9}, last=False)  # dominates 1
    assert book.on_chunk(3, 1, {"rougeL": 0.4, "eval_loss": 1.1}, last=False)  # 2 of 2 beat it
    book.pruned(3)
    assert not book.on_chunk(4, 1, {"rougeL": 0.7, "eval_loss": 2.0}, last=False)  # a trade-off
    book.finished(2, "completed", {"rougeL": 0.6, "eval_loss": 0.9})
    assert book.study.trials[1].values == [0.6, 0.9]
    assert book.study.trials[2].state == TrialState.PRUNED


def _rouge_l(eval_preds: tuple[list[str], list[str]]) -> dict[str, float]:
    return {"rougeL": 0.0}


@pytest.mark.parametrize(
    ("pruner", "expected"),
    [
        (None, ("none", "rougeL", "max")),  # Optuna prunes; rf-ray's ranks on the objective
        (SuccessiveHalving(), ("successive_halving", "rougeL", "max")),  # added, same metric
        (SuccessiveHalving(metric="eval_loss", mode="min"), ("successive_halving", "eval_loss",
                                                              "min")),  # named: kept
    ],
)  # fmt: skip
def test_run_fits_pruner_takes_the_objectives_metric_and_direction(tmp_path, pruner, expected):
    exp = Experiment("optuna-plan", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        training_args=RFSFTConfig(learning_rate=List([1e-4, 1e-3]), max_length=32),
        # RapidFire's compute_metrics on generated text reports the objective's rougeL
        compute_metrics=_rouge_l,
        generation_config={"max_new_tokens": 4},
    )
    search = RFOptuna(config, n_initial=2, objective="maximize:rougeL")
    # run_fit's settings: the pruner given, else the one the group names (RFOptuna: none)
    settings = ExperimentSettings.of(num_chunks=2, seed=0, pruner=pruner or search.default_pruner())
    plan = exp._prepare(search, None, sft_dataset(16), sft_eval_dataset(4), settings)
    stored = plan.settings.pruner
    assert (stored["type"], stored["metric"], stored["mode"]) == expected


def test_epoch_granularity_reads_the_experiments_chunks_per_epoch(ray_cluster, tmp_path):
    """``granularity="epoch"`` learns the chunks per epoch from the running experiment's stored
    settings (it raised KeyError once the settings were stored as one value)."""
    exp = Experiment("optuna-epochs", experiment_path=tmp_path)
    config = RFModelConfig(
        TOY_MODEL_NAME,
        training_args=RFSFTConfig(learning_rate=Range(1e-4, 1e-3, log=True), max_length=32,
                                  per_device_train_batch_size=4, num_train_epochs=2),
    )  # fmt: skip
    search = RFOptuna(
        config, n_initial=2, budget=2, objective="minimize:train_loss", granularity="epoch", seed=0
    )
    try:
        exp.run_fit(search, None, sft_dataset(16), num_chunks=2, seed=0, live_view=False)
    finally:
        exp.end()
    assert search.book is not None
    assert search.book.chunks_per_epoch == 2
    assert search.errors == []
    trials = search.trials_by_run()
    assert len(trials) == 2
    assert {t.state for t in trials.values()} <= {TrialState.COMPLETE, TrialState.PRUNED}
