"""``policies.fusion.fusion_key``: which runs may share a fused pass (pure; no Ray, no torch)."""

from __future__ import annotations

import pytest

from policies.fusion import GENERATION_SETTINGS, fusion_key

GEN = dict.fromkeys(GENERATION_SETTINGS) | {"max_completion_length": 8, "temperature": 1.0}


def test_sft_and_dpo_key_on_base_and_algorithm():
    assert fusion_key("toy", "SFT") == "toy|SFT"
    assert fusion_key("toy", "DPO") == "toy|DPO"
    assert fusion_key("toy", "SFT", reason_not="DoRA") is None
    assert fusion_key("toy", "KTO") is None


def test_grpo_keys_on_its_generation_settings():
    base = fusion_key("toy", "GRPO", GEN)
    assert base is not None
    assert base.startswith("toy|GRPO|")
    # What only changes how many rows a run brings, or its training, does not split a batch.
    assert fusion_key("toy", "GRPO", {**GEN, "num_generations": 2, "learning_rate": 1.0}) == base
    assert fusion_key("other", "GRPO", GEN) != base


@pytest.mark.parametrize("name", GENERATION_SETTINGS)
def test_any_generation_setting_that_differs_splits_the_group(name):
    changed = {**GEN, name: {"value": 3}}
    assert fusion_key("toy", "GRPO", changed) != fusion_key("toy", "GRPO", GEN)


@pytest.mark.parametrize("backend", ["use_vllm", "use_transformers_continuous_batching"])
def test_generation_outside_the_model_never_fuses(backend):
    assert fusion_key("toy", "GRPO", {**GEN, backend: True}) is None


def test_unknown_generation_settings_never_fuse():
    assert fusion_key("toy", "GRPO") is None
    assert fusion_key("toy", "GRPO", {"temperature": 1.0}) is None
