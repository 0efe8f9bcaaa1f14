"""A toy run_fit that touches every line of noise rf-ray used to cause (``test_noise.py`` runs
it as a user would, in a fresh process): a chat model's sampling defaults with rf-ray's greedy
generation metrics, runs fused on one base, a run whose trainer fails beside the others' adapters,
a new Ray cluster and a new MLflow store. Its user-caused warning (``save_strategy``) must stay.

    python tests/rf_ray/noisy_toy_run.py ROOT
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rf_ray import Experiment, List, RFLoraConfig, RFModelConfig, RFSFTConfig
from rf_ray.toy import TOY_MODEL_NAME, load_toy_model, sft_dataset, sft_eval_dataset


def chat_model(model_config):
    """The toy model with a chat model's sampling defaults in its generation config."""
    model, tokenizer = load_toy_model()
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.6
    model.generation_config.top_p = 0.95
    return model, tokenizer


def broken_format(row):
    raise ValueError("this formatting function is broken on purpose")


def main(root):
    exp = Experiment("noisy", experiment_path=root)
    good = RFModelConfig(
        TOY_MODEL_NAME,
        peft_config=List([RFLoraConfig(r=2), RFLoraConfig(r=4)]),
        training_args=RFSFTConfig(
            per_device_train_batch_size=4,
            max_length=48,
            num_train_epochs=1,
            save_strategy="epoch",  # the user's: its IgnoredFieldWarning must stay
        ),
        eval_metrics_fn=["exact_match"],
        eval_generations=2,
    )
    bad = RFModelConfig(
        TOY_MODEL_NAME,
        peft_config=RFLoraConfig(r=8),
        # eval_strategy="steps": never in a fused group (it fails alone, on the shared base)
        training_args=RFSFTConfig(
            per_device_train_batch_size=4,
            max_length=48,
            num_train_epochs=1,
            eval_strategy="steps",
            eval_steps=2,
        ),
        formatting_func=broken_format,
    )
    try:
        exp.run_fit([good, bad], chat_model, sft_dataset(16), sft_eval_dataset(4), num_chunks=2)
    finally:
        exp.end()


if __name__ == "__main__":
    main(sys.argv[1])
