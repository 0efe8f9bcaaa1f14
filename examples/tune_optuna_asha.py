"""Ray Tune's Optuna search and ASHA scheduler over LoRA configs on ONE resident base model.

    python examples/tune_optuna_asha.py                 # the embedded toy model, on CPU
    ray job submit --working-dir . -- python examples/tune_optuna_asha.py

Every Tune trial is one run of the shared rf-ray experiment "tune-optuna-asha": the trials add
their runs to it and report each chunk's eval_loss to Tune; ASHA stops the weak ones (their runs
are pruned) and Optuna proposes the next configs. The base model is loaded once for all trials.

This example needs the tune extra: pip install "rf-ray[tune]"
"""

from __future__ import annotations

import argparse

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from rf_ray import Experiment, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset
from rf_ray.tune import start_shared

NEEDS = 'This example needs the tune extra: pip install "rf-ray[tune]"'
try:
    import optuna  # noqa: F401  (OptunaSearch imports it only when a search starts)
except ImportError:
    raise SystemExit(NEEDS) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--path", default="rf_experiments")
    args = parser.parse_args()

    base = RFModelConfig(
        TOY_MODEL_NAME,
        training_args=RFSFTConfig(
            per_device_train_batch_size=4, max_length=48, num_train_epochs=1, lora_rank=4
        ),
    )
    shared = start_shared(
        Experiment("tune-optuna-asha", experiment_path=args.path),
        base=base,
        train_dataset=sft_dataset(args.rows),
        eval_dataset=sft_dataset(16, seed=1),
        num_chunks=args.chunks,
    )
    space = {"learning_rate": tune.loguniform(1e-5, 3e-3), "lora_rank": tune.choice([2, 4, 8])}
    shared.check(space)  # an unknown key fails here, naming it
    try:
        tuner = tune.Tuner(
            shared.trainable(),  # 0.1 CPU per trial; the executor actor holds the device
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(metric="eval_loss", mode="min", seed=0),
                scheduler=ASHAScheduler(max_t=args.chunks, grace_period=1, reduction_factor=2),
                metric="eval_loss",
                mode="min",
                num_samples=args.samples,
                max_concurrent_trials=4,
            ),
            # Tune's results go under the experiment directory; shared.callback is added.
            run_config=shared.run_config(verbose=1),
        )
        results = tuner.fit()
    finally:
        info = shared.close()  # prunes what is left, ends the experiment, waits for it
    best = results.get_best_result()
    print("best config:", best.config, "eval_loss:", best.metrics["eval_loss"])
    print(info[["run_id", "status", "chunks_done", "best_metric"]].to_string(index=False))
    print("base model loads:", shared.experiment.stats()["base_loads"])


if __name__ == "__main__":
    main()
