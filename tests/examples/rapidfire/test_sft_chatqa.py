"""RapidFire AI's ``tutorial_notebooks/fine-tuning/rf-tutorial-sft-chatqa.ipynb``, ported.

Each cell's code is as written in the notebook (RapidFireAI/rapidfireai), in order; the only
lines changed are imports, the hub models and dataset and sizes, each with a comment saying so.
The notebook writes its experiment under ``./rf_experiments``: the test runs from a temporary
directory. The notebook's two base models (Llama-3.1-8B and Mistral-7B) both become the toy
model, so this port also checks that runs naming the same model with the same ``model_kwargs``
share ONE resident base. RapidFire's semantics asserted: 2 x 2 = 4 runs on the SFT trainer over
2 epochs with gradient accumulation; every run's evaluations carry the ROUGE-L and BLEU that
``compute_metrics`` computes on generated text, in the store and in MLflow.
"""

from __future__ import annotations

import math
import warnings

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a real experiment: Ray actors, TRL, MLflow (about a minute)

STEPS = 8  # 64 rows / (batch 4 x accumulation 4) = 4 optimizer steps an epoch, 2 epochs


@pytest.fixture(scope="module")
def notebook(ray_cluster, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("chatqa"))  # the notebook's ./rf_experiments
        yield run_notebook()


def run_notebook():
    """The notebook's cells, in order; returns the experiment and the warnings run_fit gave."""
    recorded = {}

    # --- cell 2
    from rf_ray import Experiment  # import: rapidfireai -> rf_ray
    from rf_ray.automl import (  # import: rapidfireai.automl -> rf_ray.automl
        List,
        RFGridSearch,
        RFLoraConfig,
        RFModelConfig,
        RFSFTConfig,
    )
    from rf_ray.toy import TOY_MODEL_PATH  # import: the embedded model replaces the hub's

    # --- cell 4
    from tests.examples.rapidfire.hub import load_dataset  # import: an offline stand-in

    dataset = load_dataset("bitext/Bitext-customer-support-llm-chatbot-training-dataset")

    # Select a subset of the dataset for demo purposes
    train_dataset = dataset["train"].select(range(64))  # size: 5000 rows -> 64
    eval_dataset = dataset["train"].select(range(64, 70))  # size: 200 rows -> 6
    train_dataset = train_dataset.shuffle(seed=42)
    eval_dataset = eval_dataset.shuffle(seed=42)

    # --- cell 6
    def sample_formatting_function(row):
        """Function to preprocess each example from dataset"""
        # Special tokens for formatting
        SYSTEM_PROMPT = "You are a helpful and friendly customer support assistant. Please answer the user's query to the best of your ability."  # noqa: E501, N806
        return {
            "prompt": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": row["instruction"]},
            ],
            "completion": [{"role": "assistant", "content": row["response"]}],
        }

    # --- cell 8
    # Every experiment instance must be uniquely named
    experiment = Experiment(experiment_name="exp1-chatqa", mode="fit")

    # --- cell 10
    def sample_compute_metrics(eval_preds):
        """Optional function to compute eval metrics based on predictions and labels"""
        predictions, labels = eval_preds

        # Standard text-based eval metrics: Rouge and BLEU
        import evaluate

        rouge = evaluate.load("rouge")
        bleu = evaluate.load("bleu")

        rouge_output = rouge.compute(predictions=predictions, references=labels, use_stemmer=True)
        rouge_l = rouge_output["rougeL"]
        bleu_output = bleu.compute(predictions=predictions, references=labels)
        bleu_score = bleu_output["bleu"]

        return {
            "rougeL": round(rouge_l, 4),
            "bleu": round(bleu_score, 4),
        }

    # --- cell 12
    # 2 LoRA PEFT configs with different adapter capacities
    peft_configs = List(
        [
            RFLoraConfig(
                r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                bias="none",
            ),
            RFLoraConfig(
                r=128, lora_alpha=256, lora_dropout=0.05,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], bias="none",
            ),
        ]
    )  # fmt: skip

    # 2 base models x 2 peft configs = 4 combinations in total
    config_set = List(
        [
            RFModelConfig(
                model_name=str(TOY_MODEL_PATH),  # model: Llama-3.1-8B-Instruct -> the toy
                peft_config=peft_configs,
                training_args=RFSFTConfig(
                    learning_rate=2e-4,
                    lr_scheduler_type="linear",
                    per_device_train_batch_size=4,
                    per_device_eval_batch_size=8,
                    num_train_epochs=2,
                    gradient_accumulation_steps=4,
                    logging_steps=5,
                    eval_strategy="steps",
                    eval_steps=25,
                    bf16=True,
                    save_strategy="epoch",
                ),
                model_type="causal_lm",
                model_kwargs={"device_map": "auto", "torch_dtype": "auto", "use_cache": False},
                formatting_func=sample_formatting_function,
                compute_metrics=sample_compute_metrics,
                generation_config={  # This is for text based evaluation/prediction for causal_lm models  # noqa: E501
                    "max_new_tokens": 8,  # size: 256 -> 8 (the toy has 256 positions)
                    "temperature": 0.6,
                    "top_p": 0.9,
                    "top_k": 40,
                    "repetition_penalty": 1.18,
                },
            ),
            RFModelConfig(
                model_name=str(TOY_MODEL_PATH),  # model: Mistral-7B-Instruct-v0.3 -> the toy
                peft_config=peft_configs,
                training_args=RFSFTConfig(
                    learning_rate=2e-4,
                    lr_scheduler_type="linear",
                    per_device_train_batch_size=4,
                    per_device_eval_batch_size=8,
                    num_train_epochs=2,
                    gradient_accumulation_steps=4,
                    logging_steps=5,
                    eval_strategy="steps",
                    eval_steps=25,
                    bf16=True,
                    save_strategy="epoch",
                ),
                model_type="causal_lm",
                model_kwargs={"device_map": "auto", "torch_dtype": "auto", "use_cache": False},
                formatting_func=sample_formatting_function,
                compute_metrics=sample_compute_metrics,
                generation_config={  # This is for text based evaluation/prediction for causal_lm models  # noqa: E501
                    "max_new_tokens": 8,  # size: 256 -> 8 (the toy has 256 positions)
                    "temperature": 0.6,
                    "top_p": 0.9,
                    "top_k": 40,
                    "repetition_penalty": 1.18,
                },
            ),
        ]
    )

    # --- cell 14
    def sample_create_model(model_config):
        """Function to create model object for any given config; must return tuple of (model, tokenizer)"""  # noqa: E501
        from transformers import (
            AutoModelForCausalLM,
            AutoModelForMaskedLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )

        model_name = model_config["model_name"]
        model_type = model_config["model_type"]
        model_kwargs = model_config["model_kwargs"]

        if model_type == "causal_lm":
            model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)
        elif model_type == "seq2seq_lm":
            model = AutoModelForSeq2SeqLM.from_pretrained(model_name, **model_kwargs)
        elif model_type == "masked_lm":
            model = AutoModelForMaskedLM.from_pretrained(model_name, **model_kwargs)
        elif model_type == "custom":
            # Handle custom model loading logic, e.g., loading your own checkpoints
            # model = ...
            pass
        else:
            # Default to causal LM
            model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)

        tokenizer = AutoTokenizer.from_pretrained(model_name)

        return (model, tokenizer)

    # --- cell 16
    # Simple grid search across all sets of config knob values = 4 combinations in total
    config_group = RFGridSearch(configs=config_set, trainer_type="SFT")

    # --- cell 18
    # Launch training of all configs in the config_group with swap granularity of 4 chunks
    with warnings.catch_warnings(record=True) as recorded["warnings"]:  # to assert on, below
        warnings.simplefilter("always")
        experiment.run_fit(
            config_group, sample_create_model, train_dataset, eval_dataset, num_chunks=4, seed=42
        )

    # --- cell 20
    experiment.end()
    return experiment, recorded


def test_the_four_runs_trained_on_one_shared_base(notebook):
    experiment, _ = notebook
    info = experiment.get_runs_info().sort_values("run_id")
    assert [c["lora.r"] for c in info["config"]] == [16, 128, 16, 128]
    assert set(info["status"]) <= {"completed", "pruned"}  # rf-ray prunes by default
    assert "completed" in set(info["status"])
    assert (info["chunks_done"] >= 1).all()
    assert (info.loc[info["status"] == "completed", "steps_done"] == STEPS).all()
    # The notebook's two models are one model here: it was loaded once, for all 4 runs.
    assert experiment.stats()["base_loads"] == 1


def test_compute_metrics_scored_generated_text_at_every_evaluation_of_every_run(notebook):
    experiment, _ = notebook
    info = experiment.get_runs_info().set_index("run_id")
    chunks = experiment.get_chunk_results()
    client = MlflowClient(tracking_uri=experiment.tracking_uri)
    for run_id, row in info.iterrows():
        mine = chunks[chunks["run_id"] == run_id]
        assert len(mine) == row["chunks_done"]
        for metric in ("rougeL", "bleu"):
            assert mine[metric].between(0, 1).all(), (run_id, metric)
            history = client.get_metric_history(row["mlflow_run_id"], f"chunk/{metric}")
            assert len(history) == row["chunks_done"], (run_id, metric)
        assert mine["eval_loss"].map(math.isfinite).all()


def test_ignored_and_renamed_fields_are_reported_once_for_the_four_runs(notebook):
    experiment, recorded = notebook
    results = experiment.get_results()
    for run_id, row in experiment.get_runs_info().set_index("run_id").iterrows():
        steps = results[results["run_id"] == run_id]
        assert sorted(steps["step"]) == list(range(1, row["steps_done"] + 1))
    messages = [str(w.message) for w in recorded["warnings"]]
    assert sum("save_strategy='epoch' is ignored" in m for m in messages) == 1, messages
    assert sum("model_kwargs.torch_dtype" in m for m in messages) == 1, messages
