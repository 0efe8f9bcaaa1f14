"""Bad input fails fast: a ValueError or TypeError naming the field and the bad value, raised
before ``run_fit`` writes anything or starts any actor (no Ray needed)."""

from __future__ import annotations

import pytest
import ray
from datasets import Dataset

from policies.settings import ExperimentSettings
from rf_ray import (
    ConfigError,
    Experiment,
    List,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
    SuccessiveHalving,
    UnknownKnobError,
)
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset

# 32 examples at batch size 4: 8 optimizer steps in the one epoch.
TRAIN_ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, max_length=48)


def _config(peft_config=None, **training):
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        peft_config=peft_config,
        training_args=RFSFTConfig(**{**TRAIN_ARGS, **training}),
    )


def _valid_call() -> dict:
    return dict(
        param_config=_config(),
        train_dataset=sft_dataset(32),
        eval_dataset=sft_eval_dataset(8),
        num_chunks=2,
        live_view=False,
    )


# (id, builder of the run_fit overrides, expected exception, substrings of its message).
# A builder may itself raise: configs check their knobs when they are constructed.
CASES = [
    (
        "unknown-trainer-knob",
        lambda: {"param_config": _config(learnin_rate=1e-3)},
        UnknownKnobError,
        ["learnin_rate", "trl.SFTConfig", "'learning_rate'"],
    ),
    (
        "lora-knob-in-trainer-config",
        lambda: {"param_config": _config(r=8)},
        UnknownKnobError,
        ["'r'", "RFLoraConfig(r=...)"],
    ),
    (
        "unknown-lora-knob",
        lambda: {"param_config": _config(peft_config=RFLoraConfig(rank=8))},
        UnknownKnobError,
        ["rank", "peft.LoraConfig"],
    ),
    (
        "engine-breaking-trainer-knob",
        lambda: {"param_config": _config(deepspeed="ds_config.json")},
        ConfigError,
        ["deepspeed", "Remove deepspeed="],
    ),
    (
        "learning-rate-zero",
        lambda: {"param_config": _config(learning_rate=0)},
        ConfigError,
        ["learning_rate=0", "> 0"],
    ),
    (
        "learning-rate-negative",
        lambda: {"param_config": _config(learning_rate=-1)},
        ConfigError,
        ["learning_rate=-1", "> 0"],
    ),
    (
        "learning-rate-zero-inside-a-list",
        lambda: {"param_config": _config(learning_rate=List([1e-4, 0.0]))},
        ConfigError,
        ["learning_rate=0.0"],
    ),
    (
        "learning-rate-plain-list",
        lambda: {"param_config": _config(learning_rate=[1e-4, 2e-4])},
        ConfigError,
        ["learning_rate=[0.0001, 0.0002]", "List("],
    ),
    (
        "batch-size-zero",
        lambda: {"param_config": _config(per_device_train_batch_size=0)},
        ConfigError,
        ["per_device_train_batch_size=0"],
    ),
    (
        "lora-rank-shorthand-zero",
        lambda: {"param_config": _config(lora_rank=0)},
        ConfigError,
        ["lora_rank=0"],
    ),
    (
        "lora-r-zero",
        lambda: {"param_config": _config(peft_config=RFLoraConfig(r=0))},
        ConfigError,
        ["r=0"],
    ),
    (
        "trl-rejects-a-value",
        lambda: {"param_config": _config(lr_scheduler_type="sometimes")},
        ConfigError,
        ["lr_scheduler_type", "sometimes"],
    ),
    (
        "num-chunks-zero",
        lambda: {"num_chunks": 0},
        ConfigError,
        ["num_chunks=0"],
    ),
    (
        "num-chunks-not-an-int",
        lambda: {"num_chunks": "2"},
        ConfigError,
        ["num_chunks='2'"],
    ),
    (
        "more-chunks-than-optimizer-steps",
        lambda: {"num_chunks": 9},
        ConfigError,
        ["num_chunks=9", "8 effective batches", "32 examples", "batch size 4"],
    ),
    (
        "empty-train-dataset",
        lambda: {"train_dataset": Dataset.from_dict({"prompt": [], "completion": []})},
        ConfigError,
        ["train_dataset", "empty"],
    ),
    (
        "train-dataset-without-the-columns",
        lambda: {"train_dataset": Dataset.from_dict({"foo": ["a b c"] * 32})},
        ConfigError,
        ["train_dataset", "'foo'", "prompt+completion", "text", "messages"],
    ),
    (
        "eval-dataset-without-the-columns",
        lambda: {"eval_dataset": Dataset.from_dict({"foo": ["a b c"] * 8})},
        ConfigError,
        ["eval_dataset", "'foo'", "prompt+completion"],
    ),
    (
        "train-dataset-of-the-wrong-type",
        lambda: {"train_dataset": "sft.jsonl"},
        ConfigError,
        ["train_dataset", "str"],
    ),
    (
        "pruner-not-a-pruner",
        lambda: {"pruner": "successive_halving"},
        ConfigError,
        ["pruner", "'successive_halving'"],
    ),
    (
        "pruner-class-not-instance",
        lambda: {"pruner": SuccessiveHalving},
        ConfigError,
        ["pruner", "SuccessiveHalving"],
    ),
    (
        "pruner-with-a-bad-eta",
        lambda: {"pruner": SuccessiveHalving(eta=1)},
        ConfigError,
        ["eta", "1"],
    ),
    (
        "slice-timeout-zero",
        lambda: {"slice_timeout": 0},
        ConfigError,
        ["slice_timeout=0", "> 0 or None", "max_slice_steps"],
    ),
    (
        "slice-timeout-negative",
        lambda: {"slice_timeout": -5.0},
        ConfigError,
        ["slice_timeout=-5.0"],
    ),
    (
        "slice-timeout-not-a-number",
        lambda: {"slice_timeout": "30m"},
        ConfigError,
        ["slice_timeout='30m'", "seconds"],
    ),
    (
        "slice-timeout-infinite",
        lambda: {"slice_timeout": float("inf")},
        ConfigError,
        ["slice_timeout=inf", "None (no deadline)"],
    ),
    (
        "slice-timeout-bool",
        lambda: {"slice_timeout": True},
        ConfigError,
        ["slice_timeout=True"],
    ),
]


@pytest.mark.parametrize(
    ("make", "error", "needles"),
    [pytest.param(make, error, needles, id=name) for name, make, error, needles in CASES],
)
def test_bad_input_fails_before_anything_is_written_or_started(tmp_path, make, error, needles):
    ray_was_up = ray.is_initialized()
    exp = Experiment("bad-input", experiment_path=tmp_path)
    with pytest.raises(error) as excinfo:
        exp.run_fit(**{**_valid_call(), **make()})
    assert isinstance(excinfo.value, (ValueError, TypeError))
    message = str(excinfo.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert not exp.dir.exists()
    assert list(tmp_path.iterdir()) == []
    assert ray.is_initialized() == ray_was_up


@pytest.mark.parametrize("name", ["", "  ", "a/b", "..", 7, "a#b", "a?b", "50%"])
def test_bad_experiment_name(tmp_path, name):
    with pytest.raises(ConfigError, match="experiment_name"):
        Experiment(name, experiment_path=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_results_of_an_experiment_that_never_ran_say_so(tmp_path):
    exp = Experiment("never-ran", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match="run_fit"):
        exp.get_runs_info()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "planned"),
    [({}, 1800.0), ({"slice_timeout": 90}, 90.0), ({"slice_timeout": None}, None)],
    ids=["default", "int-seconds", "no-deadline"],
)
def test_slice_timeout_goes_into_the_plan(tmp_path, given, planned):
    from rf_ray.plan import DEFAULT_SLICE_TIMEOUT

    call = _valid_call()
    exp = Experiment("slice-timeout", experiment_path=tmp_path)
    settings = ExperimentSettings.of(call["num_chunks"], 42, **given)
    plan = exp._prepare(
        call["param_config"], None, call["train_dataset"], call["eval_dataset"], settings
    )
    assert plan.settings.slice_timeout == planned
    assert DEFAULT_SLICE_TIMEOUT == 1800.0
    assert list(tmp_path.iterdir()) == []
