"""Ray Tune and rf-ray, in three directions; every one keeps ONE resident base model.

Where each lives: ``flat`` (the flat knob mapping shared by all three), ``shared`` (a),
``searcher`` (b), ``driver`` (c); ``optuna_search`` and ``optuna_trials``: RapidFire AI's
``RFOptuna`` (Optuna's ask-and-tell, RapidFire's pruning rules, a study the user can read).

(a) Tune drives, rf-ray trains. ``start_shared`` starts one experiment, kept open; each Tune
    trial of ``shared.trainable()`` maps its config onto a base ``RFModelConfig``, adds one run
    to that experiment (``ops.add_runs``) and reports its chunk metrics to Tune, one
    ``tune.report`` per chunk (``training_iteration`` == chunks done). Tune's search algorithms
    (Optuna, HyperOpt, ...) pick configs, Tune's schedulers (ASHA) stop trials; a stopped trial's
    run is pruned by ``shared.callback`` (Tune kills a stopped trial's process, so the trial
    itself cannot), and ``shared.close()`` prunes any run still live, releases the experiment and
    waits for it. ``shared.run_config(**kw)`` is the ``tune.RunConfig`` to pass: Tune writes
    under ``<experiment dir>/tune`` and the callback is in it.

        import rf_ray.tune as rft
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch

        shared = rft.start_shared("tune-demo", base=RFModelConfig("rf-ray/tiny-llama",
            training_args=RFSFTConfig(per_device_train_batch_size=4, max_length=48)),
            train_dataset=train, eval_dataset=evals, num_chunks=4)
        tuner = tune.Tuner(
            shared.trainable(),  # asks for 0.1 CPU, no GPU: the executor holds the device
            param_space={"learning_rate": tune.loguniform(1e-5, 1e-3),
                         "lora_rank": tune.choice([4, 8])},
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric="eval_loss", mode="min"),
                scheduler=ASHAScheduler(metric="eval_loss", mode="min", max_t=4,
                                        grace_period=1),
                num_samples=8, max_concurrent_trials=4),
            run_config=shared.run_config(),  # under the experiment dir; adds shared.callback
        )
        results = tuner.fit()
        shared.close()  # -> runs info; shared.experiment.stats()["base_loads"] == 1

    ``trainable(experiment=..., base=..., ...)`` is ``start_shared(...).trainable()`` in one call
    (the returned function carries ``.shared``). Param-space keys are knob names as in
    ``clone_modify``: TRL fields (``learning_rate``), LoRA shorthand (``lora_rank``) or
    ``lora.r``, ``model_kwargs.x``; an unknown key raises ``UnknownKnobError`` naming it
    (``shared.check(param_space)`` checks a space in the driver before ``Tuner.fit``).

(b) rf-ray's knob spaces as a Tune ``Searcher``: ``RFSearcher(RFGridSearch(...))`` suggests the
    group's runs in order, as flat dicts of what varies (``{"learning_rate": 1e-4, "lora.r": 8}``;
    a function by its name: ``{"formatting_func": "fmt_a"}``), then ``Searcher.FINISHED``;
    ``searcher.to_run_config(flat)`` maps one back.

        tuner = tune.Tuner(my_trainable, tune_config=tune.TuneConfig(
            search_alg=RFSearcher(RFGridSearch(cfg), metric="eval_loss", mode="min"),
            num_samples=100))  # stops when the grid is exhausted

(c) rf-ray drives, a Tune searcher suggests: ``RFTuneSearch(searcher, num_runs, base=...)`` is a
    config group for ``run_fit``. It starts with ``max_concurrent`` suggestions; a driver thread
    feeds every chunk's metrics back (``on_trial_result``, ``training_iteration`` = chunk) and a
    finished run's last ones (``on_trial_complete``), and asks for a new config whenever a run
    completes or is pruned, until ``num_runs`` configs have been tried.

        exp.run_fit(RFTuneSearch(OptunaSearch(space, metric="eval_loss", mode="min"),
                                 num_runs=6, base=RFModelConfig(...), max_concurrent=2),
                    train_dataset=train, eval_dataset=evals, num_chunks=4)

Both (a) and (c) keep the experiment open with a *hold* on its scheduler
(``SchedulerActor.hold(token)`` / ``unhold(token)``): with a hold the experiment does not end
when no run is live, since a driver may still add one.
"""

from rf_ray.tune.driver import TUNE_EXTRA, RFTuneSearch
from rf_ray.tune.flat import apply_flat, concrete, flat_knobs, flatten
from rf_ray.tune.optuna_search import RFOptuna
from rf_ray.tune.searcher import RFSearcher
from rf_ray.tune.shared import (
    DEFAULT_TRIAL_RESOURCES,
    POLL_SECONDS,
    PruneStoppedTrials,
    SharedExperiment,
    start_shared,
    trainable,
)

__all__ = [
    "DEFAULT_TRIAL_RESOURCES",
    "POLL_SECONDS",
    "TUNE_EXTRA",
    "PruneStoppedTrials",
    "RFOptuna",
    "RFSearcher",
    "RFTuneSearch",
    "SharedExperiment",
    "apply_flat",
    "concrete",
    "flat_knobs",
    "flatten",
    "start_shared",
    "trainable",
]
