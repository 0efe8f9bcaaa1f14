"""RapidFire AI's ``tutorial_notebooks/post-training/rf-tutorial-grpo-mathreasoning.ipynb``, ported.

Each cell's code is as written in the notebook (RapidFireAI/rapidfireai), in order; the only
lines changed are imports, the hub models and dataset and sizes, each with a comment saying so.
The notebook writes its experiment under ``./rf_experiments``: the test runs from a temporary
directory.

What it exercises: a ``formatting_func`` that builds GRPO's ``prompt`` (chat messages) from the
raw GSM8K columns, applied as RapidFire applies it (its columns added to each row, the raw ones
kept for the reward functions); five reward functions reading ``answer`` from those columns;
TRL 0.21 / transformers 4 fields (``warmup_ratio``, ``max_prompt_length``, ``torch_dtype``,
``load_in_4bit`` in ``model_kwargs``) and an 8-bit optimizer. This machine has no CUDA GPU, so
``load_in_4bit`` cannot train QLoRA here: ``run_fit`` says so once, before anything starts, and
loads the base unquantized (the CUDA path is ``tests/actors/test_qlora_cuda.py``). The notebook's
three base models become the toy, so its four runs share one base.

RapidFire's semantics asserted: 4 GRPO runs trained; each logs its mean reward and every reward
function's own mean per step; pruning (rf-ray's default) compares mean reward, higher is better.
"""

from __future__ import annotations

import math
import warnings

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a real experiment: Ray actors, TRL, MLflow (about a minute)

REWARDS = ("correctness_reward_func", "int_reward_func", "strict_format_reward_func",
           "soft_format_reward_func", "xmlcount_reward_func")  # fmt: skip


@pytest.fixture(scope="module")
def notebook(ray_cluster, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("grpo"))  # the notebook's ./rf_experiments
        yield run_notebook()


def run_notebook():  # noqa: C901  the notebook's cells, kept whole and in order
    """The notebook's cells, in order; returns the experiment and the warnings run_fit gave."""
    recorded = {}
    # The notebook's own layout, not the formatter's:
    # fmt: off

    # --- cell 2
    from rf_ray import Experiment  # import: rapidfireai -> rf_ray  # noqa: I001  cells' order
    from rf_ray.automl import List, RFGridSearch, RFGRPOConfig, RFLoraConfig, RFModelConfig  # import: rapidfireai.automl -> rf_ray.automl  # noqa: E501
    from rf_ray.toy import TOY_MODEL_PATH  # import: the embedded model replaces the hub's

    # --- cell 4
    from datasets import Dataset  # import: load_dataset comes from the offline stand-in below

    from tests.examples.rapidfire.hub import load_dataset  # import: an offline stand-in

    def get_gsm8k_questions(split = "train") -> Dataset:
        data = load_dataset('openai/gsm8k', 'main')[split]
        return data

    # Select a subset of the dataset for demo purposes
    train_dataset = get_gsm8k_questions(split="train").select(range(8))  # size: 500 rows -> 8
    eval_dataset = get_gsm8k_questions(split="test").select(range(2))  # size: 100 rows -> 2
    train_dataset = train_dataset.shuffle(seed=42)
    eval_dataset =  eval_dataset.shuffle(seed=42)

    # --- cell 6
    def sample_formatting_function(row):
        """Function to preprocess each example from dataset"""

        def extract_hash_answer(text: str) -> str | None:
            if "####" not in text:
                return None
            answer = text.split("####")[1].strip()
            try:
                answer = answer.replace(",", "")
            except:  # noqa: E722
                return None
            return answer

        SYSTEM_PROMPT = """
    Respond in the following format:
    <reasoning>
    ...
    </reasoning>
    <answer>
    ...
    </answer>
    """  # noqa: N806
        return { # Return a conversation format dictionary
            'prompt': [
                {'role': 'system', 'content': SYSTEM_PROMPT},
                {'role': 'user', 'content': row['question']}
            ],
            'question': row['question'],
            'answer': extract_hash_answer(row['answer'])
        }

    # --- cell 8
    # Every experiment instance must be uniquely named
    experiment = Experiment(experiment_name="exp1-math-reasoning", mode="fit")

    # --- cell 10
    def correctness_reward_func(prompts, completions, answer, **kwargs) -> list[float]:

        def extract_xml_answer(text: str) -> str:
            answer = text.split("<answer>")[-1]
            answer = answer.split("</answer>")[0]
            return answer.strip()

        responses = [completion[0]['content'] for completion in completions]
        q = prompts[0][-1]['content']  # noqa: F841
        extracted_responses = [extract_xml_answer(r) for r in responses]
        # x('-'*20, f"Question:\n{q}", f"\nAnswer:\n{answer[0]}", f"\nResponse:\n{responses[0]}", f"\nExtracted:\n{extracted_responses[0]}")  # noqa: E501
        return [2.0 if r == a else 0.0 for r, a in zip(extracted_responses, answer)]

    def int_reward_func(completions, **kwargs) -> list[float]:

        def extract_xml_answer(text: str) -> str:
            answer = text.split("<answer>")[-1]
            answer = answer.split("</answer>")[0]
            return answer.strip()
        responses = [completion[0]['content'] for completion in completions]
        extracted_responses = [extract_xml_answer(r) for r in responses]
        return [0.5 if r.isdigit() else 0.0 for r in extracted_responses]

    def strict_format_reward_func(completions, **kwargs) -> list[float]:
        """Reward function that checks if the completion has a specific format."""
        import re
        pattern = r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$"
        responses = [completion[0]["content"] for completion in completions]
        matches = [re.match(pattern, r) for r in responses]
        return [0.5 if match else 0.0 for match in matches]

    def soft_format_reward_func(completions, **kwargs) -> list[float]:
        """Reward function that checks if the completion has a specific format."""
        import re
        pattern = r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>"
        responses = [completion[0]["content"] for completion in completions]
        matches = [re.match(pattern, r) for r in responses]
        return [0.5 if match else 0.0 for match in matches]

    def xmlcount_reward_func(completions, **kwargs) -> list[float]:
        def count_xml(text) -> float:
            count = 0.0
            if text.count("<reasoning>\n") == 1:
                count += 0.125
            if text.count("\n</reasoning>\n") == 1:
                count += 0.125
            if text.count("\n<answer>\n") == 1:
                count += 0.125
                count -= len(text.split("\n</answer>\n")[-1])*0.001
            if text.count("\n</answer>") == 1:
                count += 0.125
                count -= (len(text.split("\n</answer>")[-1]) - 1)*0.001
            return count
        contents = [completion[0]["content"] for completion in completions]
        return [count_xml(c) for c in contents]

    # --- cell 12
    lora_config = RFLoraConfig(
            r=32,
            lora_alpha=64,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            bias="none"
        )

    grpo_config1 = RFGRPOConfig(
        learning_rate=5e-6,
        warmup_ratio=0.1,
        weight_decay=0.1,
        max_grad_norm=0.1,
        adam_beta1=0.9,
        adam_beta2=0.99,
        lr_scheduler_type = "linear",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=4,
        num_generations=8,
        optim ="adamw_8bit",
        num_train_epochs=2,
        max_prompt_length=1024,
        max_completion_length=8,  # size: 1024 tokens -> 8 (the toy has 256 positions)
        logging_steps=2,
        eval_steps=5
    )

    grpo_config2 = grpo_config1.copy()
    grpo_config2.learning_rate = 1e-5

    reward_funcs = [
        correctness_reward_func,
        int_reward_func,
        strict_format_reward_func,
        soft_format_reward_func,
        xmlcount_reward_func,
    ]

    # List of 4 separate configs
    config_set = List([
        RFModelConfig(
            model_name=str(TOY_MODEL_PATH),  # model: Llama-3.1-8B-Instruct -> the toy
            peft_config=lora_config,
            training_args=grpo_config1,
            formatting_func=sample_formatting_function,
            reward_funcs=reward_funcs,
            model_kwargs={"load_in_4bit": True, "device_map": "auto", "torch_dtype": "auto", "use_cache": False},  # noqa: E501
            tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True}
        ),
        RFModelConfig(
            model_name=str(TOY_MODEL_PATH),  # model: Qwen2.5-3B-Instruct -> the toy
            peft_config=lora_config,
            training_args=grpo_config1,
            formatting_func=sample_formatting_function,
            reward_funcs=reward_funcs,
            model_kwargs={"load_in_4bit": True, "device_map": "auto", "torch_dtype": "auto", "use_cache": False},  # noqa: E501
            tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True}
        ),
        RFModelConfig(
            model_name=str(TOY_MODEL_PATH),  # model: Qwen2.5-3B-Instruct -> the toy
            peft_config=lora_config,
            training_args=grpo_config2,
            formatting_func=sample_formatting_function,
            reward_funcs=reward_funcs,
            model_kwargs={"load_in_4bit": True, "device_map": "auto", "torch_dtype": "auto", "use_cache": False},  # noqa: E501
            tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True}
        ),
        RFModelConfig(
            model_name=str(TOY_MODEL_PATH),  # model: Qwen2.5-7B-Instruct -> the toy
            peft_config=lora_config,
            training_args=grpo_config1,
            formatting_func=sample_formatting_function,
            reward_funcs=reward_funcs,
            model_kwargs={"load_in_4bit": True, "device_map": "auto", "torch_dtype": "auto", "use_cache": False},  # noqa: E501
            tokenizer_kwargs={"model_max_length": 2048, "padding_side": "right", "truncation": True}
        ),
    ])

    # --- cell 14
    def sample_create_model(model_config):
       """Function to create model object for any given config; must return tuple of (model, tokenizer)"""  # noqa: E501

       from transformers import AutoModelForCausalLM, AutoTokenizer

       model_name = model_config["model_name"]
       model_kwargs = model_config["model_kwargs"]
       tokenizer_kwargs = model_config["tokenizer_kwargs"]
       return (
          AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs),
          AutoTokenizer.from_pretrained(model_name, **tokenizer_kwargs)
       )

    # --- cell 16
    # Simple grid search across all sets of config knob values = 4 combinations in total
    config_group = RFGridSearch(
        configs=config_set,
        trainer_type="GRPO",
    )

    # --- cell 18
    # Launch training of all configs in the config_group with swap granularity of 4 chunks
    with warnings.catch_warnings(record=True) as recorded["warnings"]:  # to assert on, below
        warnings.simplefilter("always")
        experiment.run_fit(config_group, sample_create_model, train_dataset, eval_dataset, num_chunks=4, seed=42)  # noqa: E501

    # --- cell 20
    experiment.end()
    # fmt: on
    return experiment, recorded


def test_the_four_grpo_runs_trained_on_one_shared_base(notebook):
    experiment, _ = notebook
    info = experiment.get_runs_info().sort_values("run_id")
    assert [c["learning_rate"] for c in info["config"]] == [5e-6, 5e-6, 1e-5, 5e-6]
    assert set(info["status"]) <= {"completed", "pruned"}  # rf-ray prunes by default
    assert "completed" in set(info["status"])
    assert (info["steps_done"] >= 1).all()
    assert experiment.stats()["base_loads"] == 1  # three hub models, one toy: loaded once


def test_every_reward_function_scored_the_completions_of_every_step(notebook):
    """The reward functions read ``answer``, a column the formatting_func built from GSM8K's
    raw ``answer`` (RapidFire maps the function over the rows for every trainer type)."""
    experiment, _ = notebook
    results = experiment.get_results()
    info = experiment.get_runs_info().set_index("run_id")
    client = MlflowClient(tracking_uri=experiment.tracking_uri)
    for run_id, row in info.iterrows():
        steps = results[results["run_id"] == run_id]
        assert len(steps) == row["steps_done"]
        assert steps["reward"].map(math.isfinite).all()
        for name in REWARDS:
            column = f"rewards/{name}/mean"
            assert steps[column].map(math.isfinite).all(), (run_id, column)
        logged = client.get_metric_history(row["mlflow_run_id"], "reward")
        assert sorted(m.step for m in logged) == list(range(2, row["steps_done"] + 1, 2))
    chunks = experiment.get_chunk_results()
    assert chunks["reward"].map(math.isfinite).all()  # what the pruner compared (max)


def test_older_fields_and_the_4bit_base_are_each_reported_once_before_the_start(notebook):
    experiment, recorded = notebook
    config = experiment.get_runs_info().set_index("run_id").loc[1, "config"]
    assert config["warmup_steps"] == 0.1
    assert config["model_kwargs.dtype"] == "auto"
    assert "model_kwargs.quantization_config" not in config  # no CUDA: loaded unquantized
    messages = [str(w.message) for w in recorded["warnings"]]
    replaced = [m for m in messages if "quantization_config" in m and "replaced" in m]
    assert len(replaced) == 1, messages
    assert "no CUDA GPU" in replaced[0]
    for field in ("warmup_ratio=", "max_prompt_length=", "model_kwargs.torch_dtype=",
                  "model_kwargs.load_in_4bit="):  # fmt: skip
        assert sum(field in m for m in messages) == 1, (field, messages)
