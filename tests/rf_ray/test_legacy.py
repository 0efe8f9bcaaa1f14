"""Fields of the TRL 0.21 / transformers 4.5x releases RapidFire AI pins run under today's names
(``rf_ray.legacy``, issue 22 item 2), and what a field needs installed or a CUDA GPU for is
decided before anything starts (``rf_ray.compat.check_requirements``). Pure config: no Ray.

Each legacy field is accepted where RapidFire's notebooks set it, becomes today's field in the
run's config (and so in TRL's config object, the stored spec, the MLflow params and the base
model's identity), and is reported by ONE ``LegacyFieldWarning`` however many runs set it."""

from __future__ import annotations

import importlib.util
import sys
import warnings

import pytest
import torch
import transformers

import rf_ray
from policies.errors import ConfigError
from rf_ray.compat import ReplacedFieldWarning, check_requirements, warn_replaced
from rf_ray.configs import List, RFDPOConfig, RFGRPOConfig, RFModelConfig, RFSFTConfig
from rf_ray.legacy import LEGACY_TRAINER_FIELDS, LegacyFieldWarning, warn_legacy
from rf_ray.search import RFGridSearch
from rf_ray.specs import RunConfig, build_trl_config


def reward(prompts, completions, **kwargs):
    return [0.0 for _ in completions]


_CLASSES = {"SFT": RFSFTConfig, "DPO": RFDPOConfig, "GRPO": RFGRPOConfig}

# (trainer, legacy field, its value, today's field, today's value in TRL's config object)
CASES = [
    ("DPO", "warmup_ratio", 0.1, "warmup_steps", 0.1),
    ("SFT", "evaluation_strategy", "steps", "eval_strategy", "steps"),
    ("SFT", "per_gpu_train_batch_size", 3, "per_device_train_batch_size", 3),
    ("SFT", "per_gpu_eval_batch_size", 5, "per_device_eval_batch_size", 5),
    ("SFT", "include_inputs_for_metrics", True, "include_for_metrics", ["inputs"]),
    ("SFT", "adafactor", True, "optim", "adafactor"),
    ("SFT", "max_seq_length", 64, "max_length", 64),
    ("DPO", "use_liger_loss", False, "use_liger_kernel", False),
    ("DPO", "rpo_alpha", 0.5, "loss_weights", [1.0, 0.5]),
    ("GRPO", "vllm_guided_decoding_regex", "[0-9]+", "vllm_structured_outputs_regex", "[0-9]+"),
    ("GRPO", "wandb_log_unique_prompts", True, "log_unique_prompts", True),
    ("SFT", "gradient_checkpointing", True, "activation_checkpointing", True),
    ("DPO", "gradient_checkpointing_kwargs", {"use_reentrant": True},
     "activation_checkpointing_kwargs", {"use_reentrant": True}),
]  # fmt: skip


def _run(trainer: str, **fields) -> RunConfig:
    extra = {"reward_funcs": [reward]} if trainer == "GRPO" else {}
    if trainer == "GRPO":
        fields.setdefault("num_generations", 2)
        fields.setdefault("per_device_train_batch_size", 2)
    cfg = RFModelConfig("tiny", training_args=_CLASSES[trainer](**fields), **extra)
    (run,) = RFGridSearch(cfg, trainer_type=trainer).expand()
    return run


def test_the_cases_cover_the_whole_table():
    assert {field for _, field, *_ in CASES} | {"torchdynamo"} == set(LEGACY_TRAINER_FIELDS)


@pytest.mark.parametrize(("trainer", "field", "value", "today", "expected"), CASES)
def test_a_legacy_trainer_field_becomes_todays_in_trls_config(
    tmp_path, trainer, field, value, today, expected
):
    run = _run(trainer, **{field: value})
    assert field not in run.training_args
    assert run.flat_params()[today] is not None  # MLflow params show today's name
    built = build_trl_config(run, str(tmp_path), use_cpu=True)
    assert getattr(built, today) == expected
    assert f"training_args.{field}={value!r}" in run.legacy[field]
    assert LEGACY_TRAINER_FIELDS[field].today in run.legacy[field]


def test_torchdynamo_names_the_compile_backend():
    run = _run("SFT", torchdynamo="inductor")
    assert run.training_args == {"torch_compile_backend": "inductor"}


def test_warmup_ratio_is_a_fraction_of_the_steps_and_an_explicit_warmup_steps_wins(tmp_path):
    built = build_trl_config(_run("DPO", warmup_ratio=0.1), str(tmp_path), use_cpu=True)
    assert built.get_warmup_steps(200) == 20  # what the LR schedule of 200 steps warms up over
    run = _run("SFT", warmup_ratio=0.1, warmup_steps=7)  # transformers 4: warmup_steps won
    assert run.training_args["warmup_steps"] == 7


def test_rpo_alpha_adds_the_sft_term_to_a_list_of_losses():
    run = _run("DPO", loss_type=["sigmoid", "hinge"], loss_weights=[0.7, 0.3], rpo_alpha=0.2)
    assert run.training_args["loss_type"] == ["sigmoid", "hinge", "sft"]
    assert run.training_args["loss_weights"] == [0.7, 0.3, 0.2]
    with pytest.raises(ConfigError, match=r"rpo_alpha=0.2 with loss_type=.*'sft'"):
        _run("DPO", loss_type=["sigmoid", "sft"], rpo_alpha=0.2)


def test_reference_free_dpo_is_refused_and_its_false_default_dropped():
    with pytest.raises(ConfigError, match=r"reference_free=True is not supported.*drop"):
        _run("DPO", reference_free=True)
    run = _run("DPO", reference_free=False)
    assert "reference_free" not in run.training_args
    assert "reference_free" in run.legacy


def test_an_unknown_field_is_still_refused():
    with pytest.raises(rf_ray.UnknownKnobError, match="warmup_ratios"):
        RFDPOConfig(warmup_ratios=0.1)


def test_one_warning_per_field_for_many_runs():
    cfg = RFModelConfig(
        "tiny",
        training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4, 3e-4]), warmup_ratio=0.1,
                                  evaluation_strategy="no"),
        model_kwargs={"torch_dtype": "bfloat16"},
    )  # fmt: skip
    runs = RFGridSearch(cfg).expand()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_legacy([r.legacy for r in runs], "experiment 'x': ")
    messages = [str(w.message) for w in caught if w.category is LegacyFieldWarning]
    assert len(messages) == 3, messages
    assert all(m.startswith("experiment 'x': ") for m in messages)
    assert any("dtype" in m for m in messages)


# ------------------------------------------------------------------ model_kwargs


def test_torch_dtype_becomes_dtype_and_is_stored_by_name():
    run = RunConfig("tiny", model_kwargs={"torch_dtype": torch.bfloat16, "use_cache": False})
    assert run.model_kwargs == {"dtype": torch.bfloat16, "use_cache": False}
    assert '"dtype": "bfloat16"' in run.to_json()
    assert "model_kwargs.torch_dtype" in run.legacy


def test_load_in_4bit_becomes_a_quantization_config_that_is_part_of_the_base_identity():
    legacy = RunConfig("tiny", model_kwargs={"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                             "bnb_4bit_compute_dtype": torch.bfloat16})  # fmt: skip
    bnb = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    today = RunConfig("tiny", model_kwargs={"quantization_config": bnb})
    assert legacy.model_kwargs == {
        "quantization_config": {
            "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"
        }
    }  # fmt: skip
    assert today.model_kwargs["quantization_config"]["load_in_4bit"] is True
    assert today.model_kwargs["quantization_config"]["bnb_4bit_compute_dtype"] == "bfloat16"
    # A quantized base is another base: its runs do not share the unquantized one.
    assert legacy.model_key() != RunConfig("tiny").model_key()
    assert legacy.model_key() == RunConfig("tiny", model_kwargs=legacy.model_kwargs).model_key()
    # transformers takes the dict as it takes the object.
    config = transformers.BitsAndBytesConfig.from_dict(legacy.model_kwargs["quantization_config"])
    assert config.load_in_4bit
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_load_in_4bit_false_is_dropped_and_says_so():
    """RapidFire's GRPO lite notebook sets ``load_in_4bit=False``: nothing is quantized, and the
    warning must not claim a quantization_config is passed."""
    run = RunConfig("tiny", model_kwargs={"load_in_4bit": False, "bnb_4bit_quant_type": "nf4",
                                          "use_cache": False})  # fmt: skip
    assert run.model_kwargs == {"use_cache": False}
    note = run.legacy["model_kwargs.load_in_4bit"]
    assert "quantization_config" not in note
    assert "dropped" in note
    assert "bnb_4bit_quant_type" in note  # what went with it


def test_gradient_checkpointing_warns_once_as_ours_not_per_run_as_transformers(tmp_path):
    """transformers 5 renamed it ``activation_checkpointing``; its FutureWarning came once per
    run's TRL config (RapidFire's DPO lite and Colab notebooks set it)."""
    run = _run("DPO", gradient_checkpointing=True, gradient_checkpointing_kwargs={"a": 1})
    assert run.training_args == {"activation_checkpointing": True,
                                 "activation_checkpointing_kwargs": {"a": 1}}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = build_trl_config(run, str(tmp_path), use_cpu=True)
    assert [str(w.message) for w in caught if w.category is FutureWarning] == []
    assert built.gradient_checkpointing is True  # what TRL's trainers read
    assert built.gradient_checkpointing_kwargs == {"a": 1}


def test_quantization_given_twice_is_refused():
    with pytest.raises(ConfigError, match="quantization_config and \\['load_in_8bit'\\]"):
        RunConfig("tiny", model_kwargs={"load_in_8bit": True, "quantization_config": {}})


def test_flash_attention_and_auth_keywords_move_to_todays_names():
    run = RunConfig("tiny", model_kwargs={"use_flash_attention_2": True, "use_auth_token": "t"})
    assert run.model_kwargs == {"attn_implementation": "flash_attention_2", "token": "t"}


# ------------------------------------------------------------------ packages and devices


def test_an_8bit_optimizer_without_bitsandbytes_is_refused_naming_the_fix(monkeypatch):
    run = _run("DPO", optim="adamw_8bit")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # fault injection: not installed
    needle = (
        r"optim='adamw_8bit' needs the bitsandbytes package.*pip install bitsandbytes.*rapidfire"
    )
    with pytest.raises(ConfigError, match=needle):
        check_requirements([run], cuda=True)


def test_an_optimizer_of_another_package_names_that_package():
    with pytest.raises(ConfigError, match=r"needs the galore_torch package.*galore-torch"):
        check_requirements([_run("SFT", optim="galore_adamw")], cuda=True)


def test_a_quantized_base_without_bitsandbytes_is_refused(monkeypatch):
    run = RunConfig("tiny", model_kwargs={"load_in_4bit": True})
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match=r"quantization_config=.*needs the bitsandbytes package"):
        check_requirements([run], cuda=True)


def test_without_cuda_a_quantized_base_is_loaded_unquantized_with_one_warning():
    pytest.importorskip("bitsandbytes")
    runs = [RunConfig("tiny", model_kwargs={"load_in_4bit": True, "use_cache": False})
            for _ in range(3)]  # fmt: skip
    on_gpu = [RunConfig("tiny", model_kwargs={"load_in_4bit": True})]
    assert check_requirements(on_gpu, cuda=True) == {}
    assert on_gpu[0].model_kwargs == {"quantization_config": {"load_in_4bit": True}}
    notes = check_requirements(runs, cuda=False)
    assert [r.model_kwargs for r in runs] == [{"use_cache": False}] * 3
    assert list(notes) == ["quantization_config"]
    assert "no CUDA GPU" in notes["quantization_config"]
    assert "loaded unquantized" in notes["quantization_config"]
    with pytest.warns(ReplacedFieldWarning, match="experiment 'q': model_kwargs.quantization"):
        warn_replaced(notes, "experiment 'q': ")


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="installed")
def test_flash_attention_without_its_package_is_refused():
    run = RunConfig("tiny", model_kwargs={"attn_implementation": "flash_attention_2"})
    with pytest.raises(ConfigError, match="needs the flash_attn package"):
        check_requirements([run], cuda=False)


def test_the_warnings_are_public():
    assert {"LegacyFieldWarning", "ReplacedFieldWarning"} <= set(rf_ray.__all__)
    assert issubclass(rf_ray.LegacyFieldWarning, UserWarning)
