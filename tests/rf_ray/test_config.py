"""Knob classes, user configs, RunConfig and the TRL/PEFT builders (no model, no Ray)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.storage.layout import ExperimentDir
from policies.errors import ConfigError, UnknownKnobError
from rf_ray.configs import (
    List,
    Range,
    RFDPOConfig,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rf_ray.specs import RunConfig, build_lora_config, build_trl_config, differing_params


def reward_len(completions, **kwargs):
    return [float(len(c)) for c in completions]


# --------------------------------------------------------------------------- knobs


@pytest.mark.parametrize("values", [[], (), "ab", 3])
def test_list_rejects_empty_or_non_sequence(values):
    with pytest.raises(ConfigError):
        List(values)


def test_list_keeps_values_as_tuple():
    assert List([1, 2]).values == (1, 2)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((1.0, 1.0), {}),
        ((2.0, 1.0), {}),
        ((0.0, 1.0), {"log": True}),
        ((-1.0, 1.0), {"log": True}),
        ((1, 5), {"dtype": str}),
        ((0.5, 3), {"dtype": int}),
        ((1.0, float("inf")), {}),
    ],
)
def test_range_rejects_bad_bounds(args, kwargs):
    with pytest.raises(ConfigError):
        Range(*args, **kwargs)


def test_int_range_allows_equal_bounds():
    assert Range(4, 4, dtype=int).sample(random.Random(0)) == 4


@given(
    low=st.floats(1e-8, 1e2),
    span=st.floats(1.0001, 1e6),
    seed=st.integers(0, 2**32),
)
def test_log_range_samples_stay_within_bounds(low, span, seed):
    knob = Range(low, low * span, log=True)
    rng = random.Random(seed)
    for _ in range(20):
        assert knob.low <= knob.sample(rng) <= knob.high


@given(low=st.integers(1, 64), width=st.integers(0, 512), log=st.booleans(), seed=st.integers())
def test_int_range_samples_are_ints_within_bounds(low, width, log, seed):
    knob = Range(low, low + width, log=log, dtype=int)
    value = knob.sample(random.Random(seed))
    assert isinstance(value, int)
    assert low <= value <= low + width


def test_log_range_is_log_uniform():
    knob = Range(1e-6, 1e-2, log=True)
    rng = random.Random(0)
    draws = [knob.sample(rng) for _ in range(4000)]
    below_1e4 = sum(d < 1e-4 for d in draws) / len(draws)
    assert 0.45 < below_1e4 < 0.55  # half the log-interval lies below 1e-4


# --------------------------------------------------------------------------- names and values


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: RFSFTConfig(learnig_rate=1e-4), "learnig_rate"),
        (lambda: RFDPOConfig(betaa=0.1), "betaa"),
        (lambda: RFLoraConfig(rank=8), "rank"),
        (lambda: RFLoraConfig(lora_alpah=8), "lora_alpah"),
        (lambda: RFSFTConfig(r=8), "'r'"),
    ],
)
def test_unknown_knob_names_the_knob(build, name):
    with pytest.raises(UnknownKnobError, match=name) as info:
        build()
    assert isinstance(info.value, TypeError)


def test_unknown_knob_suggests_close_match():
    with pytest.raises(UnknownKnobError, match="learning_rate"):
        RFSFTConfig(learnig_rate=1e-4)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: RFSFTConfig(learning_rate=0), "learning_rate"),
        (lambda: RFSFTConfig(learning_rate=-1), "learning_rate"),
        (lambda: RFSFTConfig(learning_rate="fast"), "learning_rate"),
        (lambda: RFSFTConfig(learning_rate=List([1e-4, 0.0])), "learning_rate"),
        (lambda: RFSFTConfig(learning_rate=Range(-1.0, 1.0)), "learning_rate"),
        (lambda: RFSFTConfig(per_device_train_batch_size=0), "per_device_train_batch_size"),
        (lambda: RFSFTConfig(gradient_accumulation_steps=1.5), "gradient_accumulation_steps"),
        (lambda: RFSFTConfig(num_train_epochs=0), "num_train_epochs"),
        (lambda: RFLoraConfig(r=0), "r"),
        (lambda: RFLoraConfig(r=True), "r"),
        (lambda: RFLoraConfig(r=Range(4.0, 8.0)), "r"),
        (lambda: RFLoraConfig(lora_alpha=0), "lora_alpha"),
        (lambda: RFLoraConfig(lora_dropout=1.0), "lora_dropout"),
        (lambda: RFSFTConfig(lora_rank=0), "lora_rank"),
    ],
)
def test_bad_values_name_the_field(build, field):
    with pytest.raises(ConfigError, match=rf"\b{field}\b"):
        build()


def test_plain_list_value_suggests_wrapping_in_list():
    with pytest.raises(ConfigError, match=r"List\("):
        RFSFTConfig(learning_rate=[1e-4, 2e-4])


def test_plain_list_is_a_literal_inside_a_config():
    lora = RFLoraConfig(target_modules=["q_proj", "v_proj"])
    assert lora.kwargs == {"target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize(
    ("field", "fix"),
    [("model_init_kwargs", "model_kwargs=..."), ("deepspeed", "Remove deepspeed="),
     ("fsdp", "Remove fsdp= and the fsdp_config=")],
)  # fmt: skip
def test_fields_that_break_the_engine_are_refused_with_the_fix(field, fix):
    with pytest.raises(ConfigError, match=f"{field}= is not supported") as err:
        RFSFTConfig(**{field: "x"})
    assert fix in str(err.value)


def test_shorthand_is_kept_apart_from_trainer_fields():
    cfg = RFSFTConfig(learning_rate=2e-4, lora_rank=64, target_modules=["q_proj"])
    assert cfg.kwargs == {"learning_rate": 2e-4}
    assert cfg.lora_kwargs == {"lora_rank": 64, "target_modules": ["q_proj"]}


@pytest.mark.parametrize(
    ("cls", "trainer_type", "field"),
    [(RFSFTConfig, "SFT", "max_length"), (RFDPOConfig, "DPO", "beta"),
     (RFGRPOConfig, "GRPO", "num_generations")],
)  # fmt: skip
def test_each_trainer_config_accepts_its_own_fields(cls, trainer_type, field):
    assert cls.trainer_type == trainer_type
    assert cls(**{field: 2}).kwargs == {field: 2}


# --------------------------------------------------------------------------- RFModelConfig


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model_name": 3},
        {"model_name": ""},
        {"model_name": List(["a", 7])},
        {"model_name": "m", "peft_config": {"r": 8}},
        {"model_name": "m", "training_args": {"learning_rate": 1e-4}},
        {"model_name": "m", "formatting_func": "not callable"},
        {"model_name": "m", "model_kwargs": ["dtype"]},
        {"model_name": "m", "reward_funcs": reward_len},
        {"model_name": "m", "reward_funcs": List([reward_len])},
    ],
)
def test_model_config_type_errors(kwargs):
    with pytest.raises(TypeError):
        RFModelConfig(**kwargs)


def test_model_config_defaults_to_sft():
    cfg = RFModelConfig("m")
    assert isinstance(cfg.training_args, RFSFTConfig)
    assert cfg.default_training_args


def test_lora_given_twice_is_an_error():
    with pytest.raises(ConfigError, match="pick one"):
        RFModelConfig("m", peft_config=RFLoraConfig(r=8), training_args=RFSFTConfig(lora_rank=16))


# --------------------------------------------------------------------------- RunConfig


def _run(**overrides):
    fields = {
        "model_name": "tiny",
        "training_args": {"learning_rate": 1e-4, "max_length": 64},
        "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"]},
        "model_kwargs": {"dtype": "float32"},
        "formatting_func": reward_len,
    }
    return RunConfig(**{**fields, **overrides})


def test_flat_params_is_flat_and_deterministic():
    flat = _run().flat_params()
    assert flat == {
        "model_name": "tiny",
        "trainer_type": "SFT",
        "learning_rate": 1e-4,
        "max_length": 64,
        "lora.r": 8,
        "lora.target_modules": "q_proj,v_proj",
        "model_kwargs.dtype": "float32",
        "formatting_func": "reward_len",
    }
    reordered = _run(training_args={"max_length": 64, "learning_rate": 1e-4}).flat_params()
    assert list(reordered) == list(flat)


def test_differing_params_lists_only_what_differs():
    runs = [_run(), _run(training_args={"learning_rate": 2e-4, "max_length": 64}),
            _run(lora={"r": 16, "target_modules": ["q_proj", "v_proj"]})]  # fmt: skip
    assert differing_params(runs) == ["learning_rate", "lora.r"]
    assert differing_params([_run(), _run(model_kwargs={})]) == ["model_kwargs.dtype"]
    assert differing_params([_run()]) == []


def test_model_key_ignores_kwarg_order_but_not_values():
    a = _run(model_kwargs={"dtype": "float32", "revision": "main"})
    b = _run(model_kwargs={"revision": "main", "dtype": "float32"})
    c = _run(model_kwargs={"revision": "main", "dtype": "bfloat16"})
    assert a.model_key() == b.model_key() != c.model_key()
    assert _run(training_args={}).model_key() == _run().model_key()
    assert _run(model_name="other").model_key() != _run().model_key()


def test_json_round_trip_excludes_callables():
    run = _run(generation_config={"temperature": 0.7})
    back = RunConfig.from_json(run.to_json())
    assert back.formatting_func is None
    assert back == _run(generation_config={"temperature": 0.7}, formatting_func=None)
    assert RunConfig.from_json(run.to_json(), formatting_func=reward_len) == run


def test_to_json_names_a_value_it_cannot_store():
    with pytest.raises(ConfigError, match=r"model_kwargs\.device_map"):
        _run(model_kwargs={"device_map": object()}).to_json()


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"trainer_type": "PPO"}, ConfigError),
        ({"training_args": {"learning_rate": 0}}, ConfigError),
        ({"training_args": {"lora_rank": 8}}, ConfigError),
        ({"training_args": {"nope": 1}}, UnknownKnobError),
        ({"lora": {"r": 0}}, ConfigError),
        ({"lora": {"r": List([8, 16])}}, ConfigError),
        ({"lora": {"target_modules": [List(["q_proj"])]}}, ConfigError),
    ],
)
def test_run_config_validates_itself(overrides, error):
    with pytest.raises(error):
        _run(**overrides)


# --------------------------------------------------------------------------- builders


@pytest.mark.parametrize("user_bf16", [None, True])
def test_build_trl_config_on_cpu(tmp_path, user_bf16):
    args = {"learning_rate": 3e-4} if user_bf16 is None else {"learning_rate": 3e-4, "bf16": True}
    cfg = build_trl_config(_run(training_args=args), str(tmp_path), use_cpu=True)
    import trl

    assert isinstance(cfg, trl.SFTConfig)
    assert cfg.use_cpu is True
    assert cfg.bf16 is False
    assert cfg.learning_rate == 3e-4
    assert cfg.output_dir == str(tmp_path)
    assert cfg.report_to in ("none", [], ["none"])
    assert cfg.logging_steps == 1


@pytest.mark.parametrize(
    ("trainer_type", "cls_name"), [("DPO", "DPOConfig"), ("GRPO", "GRPOConfig")]
)
def test_build_trl_config_picks_the_trainer_class(tmp_path, trainer_type, cls_name):
    run = _run(trainer_type=trainer_type, training_args={"learning_rate": 1e-4})
    assert type(build_trl_config(run, str(tmp_path), use_cpu=True)).__name__ == cls_name


def test_build_trl_config_wraps_trl_errors(tmp_path):
    run = _run(training_args={"lr_scheduler_type": "not-a-schedule"})
    with pytest.raises(ConfigError, match="not-a-schedule"):
        build_trl_config(run, str(tmp_path), use_cpu=True)


def test_build_lora_config():
    lora = build_lora_config(_run())
    assert lora.r == 8
    assert set(lora.target_modules) == {"q_proj", "v_proj"}
    assert str(lora.task_type.value if hasattr(lora.task_type, "value") else lora.task_type) == (
        "CAUSAL_LM"
    )


def test_build_lora_config_wraps_peft_errors():
    with pytest.raises(ConfigError, match="LoRA"):
        build_lora_config(_run(lora={"r": 8, "layers_pattern": "layers"}))


@pytest.mark.parametrize("user_seed", [None, 3])
def test_each_runs_trl_config_is_built_once_and_equals_a_fresh_build(tmp_path, user_seed):
    """Validation (expand) builds a run's TRL and PEFT configs; build_specs reuses them, with
    the run's place and seed set on a copy: the result equals building with them set."""
    from unittest import mock

    from rf_ray import specs
    from rf_ray.search import RFGridSearch

    args = {"learning_rate": 3e-4, "per_device_train_batch_size": 2}
    if user_seed is not None:
        args["seed"] = user_seed
    with mock.patch.object(specs, "build_trl_config", wraps=specs.build_trl_config) as builds:
        (run,) = RFGridSearch(RFModelConfig("tiny", training_args=RFSFTConfig(**args))).expand()
        (spec,) = specs.build_specs([run], tmp_path, train_rows=16, num_chunks=2, seed=7)
    assert builds.call_count == 1
    run_dir = str(ExperimentDir(tmp_path).run(1).path)
    fresh = build_trl_config(spec.model_config, run_dir, use_cpu=True)
    assert spec.trl_args.to_dict() == fresh.to_dict()
    assert spec.trl_args.seed == (7 if user_seed is None else user_seed)
    assert spec.model_config.training_args["seed"] == spec.trl_args.seed  # stored as before
    validated, _ = specs.build_run_configs(run)
    assert validated.output_dir == specs.UNPLACED  # the run's copy was placed, not the original


def test_to_jsonable_is_strict_with_a_path_and_lenient_without():
    from rf_ray.specs import to_jsonable

    value = {"a": (1, float("nan")), "b": object}
    with pytest.raises(ConfigError, match=r"kw\.b="):
        to_jsonable(value, "kw")
    lenient = to_jsonable(value)
    assert lenient["a"] == [1, None]
    assert lenient["b"] == repr(object)


def test_str_enums_become_plain_values_so_params_unpickle_without_their_library():
    """RapidFire's DPO notebook passes ``task_type=TaskType.CAUSAL_LM`` (a ``str`` enum): the run's
    params travel to the scheduler, trial and tracking actors, and an enum object in them made
    each unpickle PEFT (and with it torch, transformers, bitsandbytes) in a process meant to stay
    lean."""
    import enum
    import pickle

    from rf_ray.specs import to_jsonable

    class Kind(str, enum.Enum):
        CAUSAL_LM = "CAUSAL_LM"

    run = _run(lora={"r": 8, "task_type": Kind.CAUSAL_LM},
               training_args={"lr_scheduler_type": Kind.CAUSAL_LM})  # fmt: skip
    flat = run.flat_params()
    assert type(flat["lora.task_type"]) is str
    assert flat["lora.task_type"] == "CAUSAL_LM"
    assert type(flat["lr_scheduler_type"]) is str
    assert b"Kind" not in pickle.dumps(flat)
    assert type(to_jsonable(Kind.CAUSAL_LM)) is str
    assert type(to_jsonable({"k": [Kind.CAUSAL_LM]}, "kw")["k"][0]) is str
