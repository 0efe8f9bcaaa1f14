"""RapidFire AI's SFT tutorial, run on rf-ray with only its imports changed.

The shape of RapidFire's customer-support SFT notebook: a formatting function that turns each
row into chat messages, a compute_metrics function scoring the runs' generated answers (the
model config sets a generation_config, so it gets decoded text, as in RapidFire), a List of
LoRA configs inside each model config, a List of two model configs (two learning rates), a grid
search and 4 chunks. The two
import lines are the only change from a RapidFire script (``rapidfireai`` -> ``rf_ray``); the
model is the embedded tiny Llama (loaded from its local path, as any local model is) and the
data its synthetic instructions, so it runs offline on a CPU in a few minutes:

    python examples/rapidfire_port.py

It needs no extra: ``pip install rf-ray`` brings everything it imports. It prints each run's
config, its last eval_loss and its last exact_match; ``rf-ray dashboard`` shows the MLflow runs.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer

# The only change from the RapidFire script: these two imports.
from rf_ray import Experiment
from rf_ray.automl import List, RFGridSearch, RFLoraConfig, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_PATH, sft_dataset, sft_eval_dataset

SYSTEM_PROMPT = "You are a helpful assistant. Answer with the letters asked for."


def sample_formatting_function(row):
    """Each row as chat messages (RapidFire's shape: new prompt and completion columns)."""
    return {
        "prompt": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["prompt"]},
        ],
        "completion": [{"role": "assistant", "content": row["completion"].strip()}],
    }


def sample_compute_metrics(eval_preds):
    """Exact match of the generated answers. With a generation_config, RapidFire (and rf-ray)
    call compute_metrics with decoded text: (predictions, references), one string each."""
    predictions, references = eval_preds
    hits = sum(p.split() == r.split() for p, r in zip(predictions, references))
    return {"exact_match": hits / len(predictions)}


def sample_create_model(model_config):
    """RapidFire's create_model_fn: the model config is read as a dict."""
    model_name = model_config["model_name"]
    model_type = model_config["model_type"]
    model_kwargs = model_config["model_kwargs"]
    if model_type != "causal_lm":
        raise ValueError(f"unexpected model_type {model_type!r}")
    model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    return (model, tokenizer)


def main() -> None:  # the RapidFire script it ports, in its order, read top to bottom
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="rf_experiments", help="where experiments are kept")
    parser.add_argument("--rows", type=int, default=64, help="training rows")
    parser.add_argument("--name", default="rapidfire-port")
    args = parser.parse_args()

    train_dataset = sft_dataset(args.rows, seed=0).shuffle(seed=42)
    eval_dataset = sft_eval_dataset(16, seed=1).shuffle(seed=42)

    experiment = Experiment(experiment_name=args.name, mode="fit", experiment_path=args.path)

    peft_configs = List(
        [
            RFLoraConfig(r=4, lora_alpha=8, lora_dropout=0.05,
                         target_modules=["q_proj", "v_proj"], bias="none"),
            RFLoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], bias="none"),
        ]
    )  # fmt: skip
    config_set = List(
        [
            RFModelConfig(
                model_name=str(TOY_MODEL_PATH),
                peft_config=peft_configs,
                training_args=RFSFTConfig(
                    learning_rate=learning_rate,
                    lr_scheduler_type="linear",
                    per_device_train_batch_size=4,
                    per_device_eval_batch_size=4,
                    gradient_accumulation_steps=1,
                    num_train_epochs=1,
                    max_length=64,
                    logging_steps=2,
                    eval_strategy="steps",
                    eval_steps=3,
                    save_strategy="epoch",
                    fp16=True,
                ),
                model_type="causal_lm",
                model_kwargs={"use_cache": False},
                formatting_func=sample_formatting_function,
                compute_metrics=sample_compute_metrics,
                generation_config={"max_new_tokens": 16, "temperature": 0.6, "top_p": 0.9},
            )
            for learning_rate in (2e-3, 5e-4)
        ]
    )
    config_group = RFGridSearch(configs=config_set, trainer_type="SFT")

    experiment.run_fit(
        config_group, sample_create_model, train_dataset, eval_dataset, num_chunks=4, seed=42
    )
    info = experiment.get_runs_info()
    chunks = experiment.get_chunk_results()
    experiment.end()
    for _, row in info.iterrows():
        config = row["config"]
        exact = chunks.loc[chunks["run_id"] == row["run_id"], "exact_match"].iloc[-1]
        print(
            f"run {row['run_id']}: {row['status']}, lr={config['learning_rate']}, "
            f"r={config['lora.r']}, last eval_loss={row['last_metric']:.4f}, "
            f"last exact_match={exact:.2f}"
        )
    print(f"{len(info)} runs; log file: {experiment.get_log_file_path()}")


if __name__ == "__main__":
    main()
