"""The experiment's settings are one value, stored once; the default metric has one rule.

A Ray Tune experiment shared by trials (``rf_ray.tune.start_shared``) used to re-derive the
default metric by hand and missed the GRPO rule: a GRPO experiment compared its runs on
``train_loss``, lower is better, instead of the mean reward, higher is better.
"""

from __future__ import annotations

from actors.storage.store import Store
from policies.settings import ExperimentSettings
from rf_ray import Experiment, RFGRPOConfig, RFModelConfig
from rf_ray.toy import TOY_MODEL_NAME, arithmetic_reward, grpo_dataset
from rf_ray.tune import start_shared


def test_a_shared_grpo_tune_experiment_compares_mean_reward_higher_is_better(ray_cluster, tmp_path):
    base = RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFGRPOConfig(
            per_device_train_batch_size=4, num_generations=4, max_completion_length=4,
            num_train_epochs=1, lora_rank=4,
        ),
        reward_funcs=[arithmetic_reward],
    )  # fmt: skip
    exp = Experiment("tune-grpo", experiment_path=tmp_path)
    shared = start_shared(exp, base, grpo_dataset(8), num_chunks=2)
    try:
        with Store(exp.dir, readonly=True) as store:
            meta = store.meta()
    finally:
        shared.close()
    state = meta["pruner_state"]
    assert (state["metric"], state["mode"]) == ("reward", "max")
    assert shared.metric == "reward"
    settings = ExperimentSettings.from_meta(meta)
    assert settings is not None
    assert (settings.metric, settings.mode, settings.num_chunks) == ("reward", "max", 2)
