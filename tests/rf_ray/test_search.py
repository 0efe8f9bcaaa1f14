"""Grid and random search: expanding knob spaces into concrete, validated runs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.errors import ConfigError
from rf_ray.configs import (
    List,
    Range,
    RFDPOConfig,
    RFGRPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rf_ray.search import ConfigGroup, RFGridSearch, RFRandomSearch
from rf_ray.specs import RunConfig, differing_params


def reward_len(completions, **kwargs):
    return [float(len(c)) for c in completions]


def reward_one(completions, **kwargs):
    return [1.0 for _ in completions]


def _sft(model="tiny", **training):
    return RFModelConfig(model, training_args=RFSFTConfig(**training))


def _concrete(run: RunConfig):
    return (run.model_name, run.training_args, run.lora)


# --------------------------------------------------------------------------- grid


@pytest.mark.parametrize("wrap", [List, list])
def test_grid_two_lrs_two_ranks_two_models(wrap):
    knobs = {"learning_rate": List([1e-4, 2e-4])}
    group = wrap([
        RFModelConfig("a", peft_config=RFLoraConfig(r=List([8, 16])),
                      training_args=RFSFTConfig(**knobs)),
        RFModelConfig("b", peft_config=RFLoraConfig(r=List([8, 16])),
                      training_args=RFSFTConfig(**knobs)),
    ])  # fmt: skip
    runs = RFGridSearch(group).expand()
    assert len(runs) == 8
    got = [(r.model_name, r.lora["r"], r.training_args["learning_rate"]) for r in runs]
    expected = [(m, r, lr) for m in "ab" for r in (8, 16) for lr in (1e-4, 2e-4)]
    assert got == expected  # outer list first, then knobs as written, last fastest
    assert all(isinstance(r, RunConfig) and r.trainer_type == "SFT" for r in runs)


def test_grid_expands_knobs_in_model_and_tokenizer_kwargs():
    cfg = RFModelConfig(
        List(["a", "b"]),
        model_kwargs={"dtype": List(["float32", "bfloat16"]), "revision": "main"},
        tokenizer_kwargs={"padding_side": List(["left", "right"])},
    )
    runs = RFGridSearch(cfg).expand()
    assert len(runs) == 8
    assert {(r.model_name, r.model_kwargs["dtype"], r.tokenizer_kwargs["padding_side"])
            for r in runs} == {(m, d, p) for m in "ab" for d in ("float32", "bfloat16")
                               for p in ("left", "right")}  # fmt: skip
    assert all(r.model_kwargs["revision"] == "main" for r in runs)
    assert len({r.model_key() for r in runs}) == 4


def test_plain_list_of_configs_counts_as_a_list():
    plain = RFGridSearch([_sft(learning_rate=1e-4), _sft(learning_rate=2e-4)]).expand()
    wrapped = RFGridSearch(List([_sft(learning_rate=1e-4), _sft(learning_rate=2e-4)])).expand()
    assert [_concrete(r) for r in plain] == [_concrete(r) for r in wrapped]
    assert [r.training_args["learning_rate"] for r in plain] == [1e-4, 2e-4]


def test_list_literal_inside_a_config_is_not_expanded():
    runs = RFGridSearch(
        RFModelConfig("tiny", peft_config=RFLoraConfig(target_modules=["q_proj", "v_proj"]))
    ).expand()
    assert len(runs) == 1
    assert runs[0].lora["target_modules"] == ["q_proj", "v_proj"]


def test_list_of_literal_lists_is_a_knob():
    lora = RFLoraConfig(target_modules=List([["q_proj"], ["q_proj", "v_proj"]]))
    runs = RFGridSearch(RFModelConfig("tiny", peft_config=lora)).expand()
    assert [r.lora["target_modules"] for r in runs] == [["q_proj"], ["q_proj", "v_proj"]]


def test_article_short_form_folds_lora_shorthand():
    runs = RFGridSearch(
        [RFSFTConfig(learning_rate=2e-4, lora_rank=64),
         RFSFTConfig(learning_rate=5e-5, lora_rank=List([128, 256]), lora_alpha=32)]
    ).expand()  # fmt: skip
    assert [r.lora for r in runs] == [
        {"r": 64},
        {"r": 128, "lora_alpha": 32},
        {"r": 256, "lora_alpha": 32},
    ]
    assert all("lora_rank" not in r.training_args for r in runs)
    assert [r.training_args for r in runs] == [
        {"learning_rate": 2e-4},
        {"learning_rate": 5e-5},
        {"learning_rate": 5e-5},
    ]


def test_search_model_name_names_bare_trainer_configs():
    runs = RFGridSearch(RFSFTConfig(lora_rank=8), model_name="tiny").expand()
    assert runs[0].model_name == "tiny"
    with pytest.raises(ConfigError, match="model_name"):
        RFGridSearch(_sft(), model_name="tiny")


def test_range_in_grid_names_the_knob():
    group = RFModelConfig("tiny", peft_config=RFLoraConfig(r=Range(4, 64, dtype=int)))
    with pytest.raises(ConfigError, match=r"peft_config\.r.*RFRandomSearch"):
        RFGridSearch(group).expand()


def test_grid_reward_funcs_knob():
    cfg = RFModelConfig(
        "tiny",
        training_args=RFGRPOConfig(learning_rate=1e-5),
        reward_funcs=List([[reward_len], [reward_len, reward_one]]),
    )
    runs = RFGridSearch(cfg, trainer_type="grpo").expand()
    assert [r.reward_funcs for r in runs] == [[reward_len], [reward_len, reward_one]]
    assert differing_params(runs) == ["reward_funcs"]


@pytest.mark.parametrize(
    ("trainer_type", "cls"), [("SFT", RFSFTConfig), ("dpo", RFDPOConfig), ("Grpo", RFGRPOConfig)]
)
def test_trainer_type_fills_missing_training_args(trainer_type, cls):
    reward = [reward_len] if cls is RFGRPOConfig else None
    runs = RFGridSearch(RFModelConfig("tiny", reward_funcs=reward), trainer_type).expand()
    assert runs[0].trainer_type == cls.trainer_type


def test_trainer_type_mismatch_is_an_error():
    cfg = RFModelConfig("tiny", training_args=RFDPOConfig(beta=0.1))
    with pytest.raises(ConfigError, match=r"RFDPOConfig.*trainer_type='SFT'"):
        RFGridSearch(cfg, trainer_type="sft")


def test_unknown_trainer_type_lists_valid_ones():
    with pytest.raises(ConfigError, match="'SFT', 'DPO', 'GRPO'"):
        RFGridSearch(_sft(), trainer_type="PPO")


@pytest.mark.parametrize("bad", [42, "tiny", [_sft(), {"learning_rate": 1e-4}]])
def test_group_items_must_be_configs(bad):
    with pytest.raises(TypeError):
        RFGridSearch(bad)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        (RFModelConfig("tiny", training_args=RFGRPOConfig()), "reward_funcs"),
        (RFModelConfig("tiny", reward_funcs=[reward_len]), "reward_funcs"),
        (_sft(lr_scheduler_type="not-a-schedule"), "not-a-schedule"),
        (RFModelConfig("tiny", model_kwargs={"quant": object()}), r"model_kwargs\.quant"),
    ],
)
def test_expand_validates_each_run(cfg, match):
    with pytest.raises(ConfigError, match=match):
        RFGridSearch(cfg).expand()


def test_both_searches_are_config_groups():
    assert isinstance(RFGridSearch(_sft()), ConfigGroup)
    assert isinstance(RFRandomSearch(_sft(), num_runs=1), ConfigGroup)


# --------------------------------------------------------------------------- random


def _space():
    return [
        RFModelConfig(
            "a",
            peft_config=RFLoraConfig(r=List([4, 8, 16]), lora_dropout=Range(0.0, 0.2)),
            training_args=RFSFTConfig(learning_rate=Range(1e-6, 1e-2, log=True)),
        ),
        RFModelConfig("b", training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4]))),
    ]


def test_random_search_is_deterministic_per_seed():
    def draw(seed):
        return [r.flat_params() for r in RFRandomSearch(_space(), 12, seed=seed).expand()]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), num_runs=st.integers(1, 10))
def test_random_search_runs_are_distinct_and_within_bounds(seed, num_runs):
    runs = RFRandomSearch(_space(), num_runs=num_runs, seed=seed).expand()
    assert len(runs) == num_runs
    flats = [sorted(r.flat_params().items()) for r in runs]
    assert len({tuple(f) for f in flats}) == num_runs
    for r in runs:
        lr = r.training_args["learning_rate"]
        if r.model_name == "a":
            assert 1e-6 <= lr <= 1e-2
            assert r.lora["r"] in (4, 8, 16)
            assert 0.0 <= r.lora["lora_dropout"] <= 0.2
        else:
            assert lr in (1e-4, 2e-4)


def test_random_search_can_draw_the_whole_finite_space():
    cfg = _sft(learning_rate=List([1e-4, 2e-4]), num_train_epochs=List([1, 2, 3, 4]))
    runs = RFRandomSearch(cfg, num_runs=8, seed=0).expand()
    assert {_concrete(r)[1]["num_train_epochs"] for r in runs} == {1, 2, 3, 4}
    assert len({tuple(sorted(r.training_args.items())) for r in runs}) == 8


@pytest.mark.parametrize(
    "cfg",
    [
        _sft(learning_rate=List([1e-4, 2e-4]), num_train_epochs=List([1, 2, 3, 4])),
        # 16 grid points but only 8 distinct: the repeated value must not count twice.
        _sft(learning_rate=List([1e-4, 2e-4, 1e-4, 2e-4]), num_train_epochs=List([1, 2, 3, 4])),
    ],
)
def test_random_search_too_many_runs_for_a_finite_space(cfg):
    with pytest.raises(ConfigError, match="num_runs=20 but this space has only 8 distinct configs"):
        RFRandomSearch(cfg, num_runs=20).expand()


def test_random_search_gives_up_on_a_space_of_repeats(monkeypatch):
    import rf_ray.search as search

    monkeypatch.setattr(search, "_ENUMERATE_LIMIT", 1)  # skip the exact count
    cfg = _sft(learning_rate=List([1e-4] * 30))
    with pytest.raises(ConfigError, match="lower num_runs"):
        RFRandomSearch(cfg, num_runs=2).expand()


@pytest.mark.parametrize("num_runs", [0, -1, 2.5, True])
def test_random_search_num_runs_must_be_positive_int(num_runs):
    with pytest.raises(ConfigError, match="num_runs"):
        RFRandomSearch(_sft(), num_runs=num_runs)


def test_random_search_over_reward_funcs_tells_functions_apart():
    cfg = RFModelConfig(
        "tiny",
        training_args=RFGRPOConfig(),
        reward_funcs=List([[lambda c, **k: [0.0] * len(c)], [lambda c, **k: [1.0] * len(c)]]),
    )
    runs = RFRandomSearch(cfg, num_runs=2, seed=1).expand()
    assert runs[0].reward_funcs != runs[1].reward_funcs


def test_runs_do_not_share_mutable_literals():
    runs = RFGridSearch(
        _sft(learning_rate=List([1e-4, 2e-4]), lora_rank=8, target_modules=["q_proj"])
    ).expand()
    runs[0].lora["target_modules"].append("v_proj")
    assert runs[1].lora["target_modules"] == ["q_proj"]
