"""``ExperimentSettings``: one frozen, JSON-able value, checked once; the default metric rule."""

from __future__ import annotations

import dataclasses
import json

import pytest

from policies.errors import ConfigError
from policies.fusion import FusionPolicy
from policies.pruning import ASHA, NoPruning, SuccessiveHalving, ThresholdPruner
from policies.settings import (
    DEFAULT_SLICE_TIMEOUT,
    ExperimentSettings,
    default_metric,
    stored_settings,
)


@pytest.mark.parametrize(
    ("types", "has_eval", "expected"),
    [
        (["SFT"], False, ("train_loss", "min")),
        (["SFT", "DPO"], True, ("eval_loss", "min")),
        (["GRPO"], True, ("reward", "max")),
        (["GRPO", "GRPO"], False, ("reward", "max")),
        (["GRPO", "SFT"], False, ("train_loss", "min")),
        ([], True, ("eval_loss", "min")),  # no run yet: a Tune experiment adds them later
    ],
)
def test_the_default_metric_rule(types, has_eval, expected):
    assert default_metric(types, has_eval) == expected


def test_settings_round_trip_through_json_and_are_frozen():
    settings = ExperimentSettings.of(
        3, 7, ASHA(eta=3, metric="eval_loss"), FusionPolicy(2, 99), 5, 60
    ).resolved(["SFT"], has_eval=True)
    back = ExperimentSettings.from_dict(json.loads(json.dumps(settings.to_dict())))
    assert back == settings
    assert (back.metric, back.mode, back.slice_timeout) == ("eval_loss", "min", 60.0)
    assert back.new_pruner().settings() == ASHA(3, 1, "eval_loss", "min").settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.seed = 8  # type: ignore[misc]


def test_resolved_fills_only_what_the_user_left_out():
    grpo = ExperimentSettings.of(pruner=SuccessiveHalving()).resolved(["GRPO"], has_eval=False)
    assert (grpo.metric, grpo.mode) == ("reward", "max")
    named = ExperimentSettings.of(pruner=NoPruning(metric="eval_x")).resolved(["SFT"], True)
    assert (named.metric, named.mode, named.has_eval) == ("eval_x", "min", True)


def test_fusion_true_false_and_a_policy():
    assert ExperimentSettings.of(fusion=True).fusion == FusionPolicy()
    assert ExperimentSettings.of(fusion=False).fusion is None
    assert ExperimentSettings.of(fusion=FusionPolicy(3)).fusion == FusionPolicy(3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_chunks": 0}, "num_chunks=0"),
        ({"seed": "1"}, "seed='1'"),
        ({"max_slice_steps": 0}, "max_slice_steps must be None or an int >= 1, got 0"),
        ({"fusion": "yes"}, "fusion='yes'"),
        ({"pruner": "asha"}, "pruner must be a pruner"),
        ({"slice_timeout": 0}, "slice_timeout=0"),
    ],
)
def test_a_bad_setting_names_itself(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ExperimentSettings.of(**kwargs)


def test_a_store_from_before_settings_were_one_value_is_read_the_same_way():
    """Loose meta keys, and the pruner's parameters only in its state."""
    state = ThresholdPruner(bound=2.0, patience=3, metric="eval_loss", mode="min").to_dict()
    old = {
        "seed": 5, "num_chunks": 2, "has_eval": True, "max_slice_steps": None,
        "fusion": {"max_runs": 4, "max_tokens": 100}, "slice_timeout": 90.0,
        "pruner": {"type": "threshold", "metric": "eval_loss", "mode": "min"},
        "pruner_state": state,
    }  # fmt: skip
    settings = ExperimentSettings.from_meta(old)
    assert settings == ExperimentSettings(
        num_chunks=2, seed=5, has_eval=True, fusion=FusionPolicy(4, 100), slice_timeout=90.0,
        pruner=ThresholdPruner(bound=2.0, patience=3, metric="eval_loss", mode="min").settings(),
    )  # fmt: skip
    assert ExperimentSettings.from_meta({}) is None  # a store being created: no settings yet
    assert ExperimentSettings().slice_timeout == DEFAULT_SLICE_TIMEOUT


def test_readers_see_the_stored_settings_whatever_the_store_s_age():
    """``stored_settings`` never raises: ``rf-ray status`` and the dashboard show what is
    there."""
    new = ExperimentSettings.of(2, pruner=NoPruning(metric="eval_loss", mode="min"))
    assert stored_settings({"settings": new.to_dict()})["pruner"]["metric"] == "eval_loss"
    summary = {"type": "SuccessiveHalving", "metric": "loss", "mode": "min"}  # not a real type
    assert stored_settings({"pruner": summary, "num_chunks": 3}) == {
        "pruner": summary, "num_chunks": 3,
    }  # fmt: skip
    assert stored_settings({}) == {}
