"""RapidFire AI's ``tutorial_notebooks/post-training/rf-tutorial-dpo-alignment.ipynb``, ported.

Each cell's code is as written in the notebook (RapidFireAI/rapidfireai), in order; the only
lines changed are imports, the hub model and dataset and sizes, each with a comment saying so.
The notebook writes its experiment under ``./rf_experiments``: the test runs from a temporary
directory. Its DPO config is written for TRL 0.21 and transformers 4 (``warmup_ratio``,
``torch_dtype``, the adapter-name fields, ``max_prompt_length``) with an 8-bit optimizer; on
rf-ray it runs as written, each older field reported once under today's name.

RapidFire's semantics asserted: 4 DPO runs from one base config, copied and changed by attribute;
DPO's reward metrics logged per step; the 8-bit optimizer's state checkpointed after every slice.
Config 3 (``loss_type="robust"``, ``label_smoothing=0.5``) has an infinite loss: the robust loss
divides by ``1 - 2 * label_smoothing``, and TRL only logs a warning. That run fails alone, at its
start, saying so; the other three train. (RapidFire itself never applied that assignment: its
``copy()`` records only the fields the constructor was given, so its config 3 silently trained
with ``label_smoothing=0``, and its config 4 without ``loss_weights``.)
"""

from __future__ import annotations

import math
import warnings

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a real experiment: Ray actors, TRL, MLflow (about a minute)


@pytest.fixture(scope="module")
def notebook(ray_cluster, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("dpo"))  # the notebook's ./rf_experiments
        yield run_notebook()


def run_notebook():
    """The notebook's cells, in order; returns the experiment and the warnings run_fit gave."""
    recorded = {}
    # The notebook's own layout, not the formatter's:
    # fmt: off

    # --- cell 2
    from rf_ray import Experiment  # import: rapidfireai -> rf_ray
    from rf_ray.automl import (  # import: rapidfireai.automl -> rf_ray.automl
        List,
        RFDPOConfig,
        RFGridSearch,
        RFLoraConfig,
        RFModelConfig,
    )
    from rf_ray.toy import TOY_MODEL_PATH  # import: the embedded model replaces the hub's

    # --- cell 4
    from tests.examples.rapidfire.hub import load_dataset  # import: an offline stand-in

    # Select a subset of the dataset for demo purposes
    train_dataset = load_dataset("trl-lib/ultrafeedback_binarized", split="train").select(
        range(32)  # size: 500 rows -> 32
    )

    # --- cell 6
    # Every experiment instance must be uniquely named
    experiment = Experiment(experiment_name="exp1-sft-dpo", mode="fit")

    # --- cell 13
    from peft import TaskType

    MODEL_NAME_OR_PATH = str(TOY_MODEL_PATH)  # model: mistral-7b-sft-bnb-4bit -> the toy  # noqa: N806

    base_lora_config = RFLoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=64,
        lora_alpha=64,
        lora_dropout=0.1,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],  # noqa: E501
        bias="none",
    )

    base_dpo_config = RFDPOConfig(
        model_adapter_name="default",  # LoRA Adapter from original SFT trained model, if any. This adapter will be trained using DPO.  # noqa: E501
        ref_adapter_name="reference",  # LoRA Adapter from original SFT trained model, if any. This adapter will remain unchanged and will be used for reference model.  # noqa: E501
        force_use_ref_model=False,
        loss_type="sigmoid",  # Uses Bradley-Terry model to calculate the loss.
        beta=0.1,
        max_prompt_length=1024,
        max_completion_length=1024,
        max_length=2048,  # Prompt + completion
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        learning_rate=5e-6,
        warmup_ratio=0.1,
        weight_decay=0,
        lr_scheduler_type="linear",
        num_train_epochs=1,
        optim="adamw_8bit",
        bf16=True,
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=1,
    )

    # --- cell 15
    # Config 1 - Basic Bradley-Terry model with medium LoRA and large beta
    lora_config_1 = base_lora_config.copy()
    lora_config_1.r = 64
    lora_config_1.lora_alpha = 64

    dpo_config_1 = base_dpo_config.copy()
    dpo_config_1.loss_type = "sigmoid"
    dpo_config_1.beta = 0.1

    # Config 2 - High Rank and encourage divergence from reference model
    lora_config_2 = base_lora_config.copy()
    lora_config_2.r = 128
    lora_config_2.lora_alpha = 128

    dpo_config_2 = base_dpo_config.copy()
    dpo_config_2.loss_type = "sigmoid"
    dpo_config_2.beta = 0.001

    # Config 3 - Assumes noisy preference data, use label smoothing to handle it with Robust loss
    lora_config_3 = base_lora_config.copy()
    lora_config_3.r = 64
    lora_config_3.lora_alpha = 64

    dpo_config_3 = base_dpo_config.copy()
    dpo_config_3.loss_type = "robust"
    dpo_config_3.beta = 0.1
    dpo_config_3.label_smoothing = 0.5

    # Config 4 - Use a combined loss function with weighted sum
    lora_config_4 = base_lora_config.copy()
    lora_config_4.r = 64
    lora_config_4.lora_alpha = 64

    dpo_config_4 = base_dpo_config.copy()
    dpo_config_4.loss_type = ["sigmoid", "bco_pair", "sft"]
    dpo_config_4.loss_weights = [0.8, 0.2, 1.0]
    dpo_config_4.beta = 0.1

    # --- cell 16
    import torch

    # List of 4 separate configs
    config_set = List(
        [
            RFModelConfig(
                model_name=MODEL_NAME_OR_PATH,
                ref_model_name=None,
                peft_config=lora_config_1,
                training_args=dpo_config_1,
                model_kwargs={"device_map": "auto", "torch_dtype": torch.bfloat16},
                tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True},  # noqa: E501
            ),
            RFModelConfig(
                model_name=MODEL_NAME_OR_PATH,
                ref_model_name=None,
                peft_config=lora_config_2,
                training_args=dpo_config_2,
                model_kwargs={"device_map": "auto", "torch_dtype": torch.bfloat16},
                tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True},  # noqa: E501
            ),
            RFModelConfig(
                model_name=MODEL_NAME_OR_PATH,
                ref_model_name=None,
                peft_config=lora_config_3,
                training_args=dpo_config_3,
                model_kwargs={"device_map": "auto", "torch_dtype": torch.bfloat16},
                tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True},  # noqa: E501
            ),
            RFModelConfig(
                model_name=MODEL_NAME_OR_PATH,
                ref_model_name=None,
                peft_config=lora_config_4,
                training_args=dpo_config_4,
                model_kwargs={"device_map": "auto", "torch_dtype": torch.bfloat16},
                tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True},  # noqa: E501
            ),
        ]
    )

    # --- cell 18
    def sample_create_model(model_config):
        """Function to create model object for any given config; must return tuple of (model, tokenizer)"""  # noqa: E501
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            model_config["model_name"], **model_config["model_kwargs"]
        )
        model.config.use_cache = False  # Disable caching to save memory and stability during training  # noqa: E501

        tokenizer = AutoTokenizer.from_pretrained(
            model_config["model_name"], **model_config["tokenizer_kwargs"]
        )
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

        return (model, tokenizer)

    # --- cell 20
    # Simple grid search across all sets of config knob values = 4 combinations in total
    config_group = RFGridSearch(
        configs=config_set,
        trainer_type="DPO",
    )

    # --- cell 23
    # Launch training of all configs in the config_group with swap granularity of 4 chunks
    with warnings.catch_warnings(record=True) as recorded["warnings"]:  # to assert on, below
        warnings.simplefilter("always")
        experiment.run_fit(config_group, sample_create_model, train_dataset, eval_dataset=None, num_chunks=4, seed=42)  # noqa: E501

    # --- cell 25
    experiment.end()
    # fmt: on
    return experiment, recorded


def test_three_runs_trained_and_the_one_todays_trl_refuses_failed_alone(notebook):
    experiment, _ = notebook
    info = experiment.get_runs_info().set_index("run_id")
    configs = info["config"]
    assert [configs[i]["lora.r"] for i in (1, 2, 3, 4)] == [64, 128, 64, 64]
    assert [configs[i]["beta"] for i in (1, 2, 3, 4)] == [0.1, 0.001, 0.1, 0.1]
    assert configs[3]["label_smoothing"] == 0.5  # the attribute assignment was kept
    assert configs[4]["loss_weights"] == "0.8,0.2,1.0"
    assert info.loc[3, "status"] == "failed"
    assert "'robust'" in info.loc[3, "error"]
    assert "label_smoothing=0.5" in info.loc[3, "error"]
    assert info.loc[3, "steps_done"] == 0  # failed at its start, not on a NaN loss
    trained = info.drop(index=3)
    assert set(trained["status"]) <= {"completed", "pruned"}  # rf-ray prunes by default
    assert "completed" in set(trained["status"])
    assert (trained["steps_done"] >= 1).all()


def test_dpo_reward_metrics_are_logged_per_step(notebook):
    experiment, _ = notebook
    results = experiment.get_results()
    info = experiment.get_runs_info().set_index("run_id")
    client = MlflowClient(tracking_uri=experiment.tracking_uri)
    for run_id in (1, 2, 4):
        steps = results[results["run_id"] == run_id]
        assert len(steps) == info.loc[run_id, "steps_done"]
        for metric in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                       "rewards/margins"):  # fmt: skip
            assert steps[metric].map(math.isfinite).all(), (run_id, metric)
            history = client.get_metric_history(info.loc[run_id, "mlflow_run_id"], metric)
            assert len(history) == len(steps)  # logging_steps=1
        assert steps["loss"].map(math.isfinite).all()


def test_the_trl_0_21_fields_run_under_todays_names_each_reported_once(notebook):
    experiment, recorded = notebook
    config = experiment.get_runs_info().set_index("run_id").loc[1, "config"]
    assert config["warmup_steps"] == 0.1  # warmup_ratio=0.1: a tenth of the steps
    assert "warmup_ratio" not in config
    assert config["model_kwargs.dtype"] == "bfloat16"
    assert config["optim"] == "adamw_8bit"  # bitsandbytes is installed: 8-bit AdamW as asked
    messages = [str(w.message) for w in recorded["warnings"]]
    for field in ("warmup_ratio", "model_kwargs.torch_dtype", "model_adapter_name",
                  "max_prompt_length", "save_strategy"):  # fmt: skip
        assert sum(f"{field}=" in m for m in messages) == 1, (field, messages)
