"""RapidFire AI's ``tutorial_notebooks/fine-tuning/rf-tutorial-optuna-sft-chatqa-tiny.ipynb``,
ported.

Each cell's code is as written in the notebook (RapidFireAI/rapidfireai), in order; the only
lines changed are imports, the hub model and dataset and sizes, each with a comment saying so.
The notebook writes its experiment under ``./rf_experiments``: the test runs from a temporary
directory.

RapidFire's semantics asserted: Optuna's TPE proposes ``n_initial`` runs from the template's
``List`` knobs; after every chunk each run's ROUGE-L (computed by the notebook's
``compute_metrics`` on generated text) is reported to its trial, and a run below the median of
its peers is pruned, reported to Optuna as PRUNED, and replaced by a new suggestion until
``budget`` trials; a run that trains to the end is a COMPLETE trial valued at its last ROUGE-L.
The study the notebook reads (``config_group._study``) says all of it.

Needs the ``rapidfire`` extra (evaluate, rouge-score, nltk, optuna) and, from the ``rfa``
branch, ``hub.py`` / ``conftest.py`` of this package (offline datasets and metric scripts) and
RapidFire's ``compute_metrics``-on-generated-text semantics (issue 22, item 1).
"""

from __future__ import annotations

import json
import math
import warnings

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # a real experiment: Ray actors, TRL, Optuna, MLflow


@pytest.fixture(scope="module")
def notebook(ray_cluster, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("optuna-tiny"))  # the notebook's ./rf_experiments
        yield run_notebook()


def run_notebook():
    """The notebook's cells, in order; returns what the later cells built."""
    out = {}

    # --- cell 3
    import os

    os.environ["RF_MLFLOW_ENABLED"] = "true"

    # --- cell 5
    from rf_ray import Experiment  # import: rapidfireai -> rf_ray
    from rf_ray.automl import (  # import: rapidfireai.automl -> rf_ray.automl
        List,
        Range,  # noqa: F401  imported by the notebook, unused by its template
        RFLoraConfig,
        RFModelConfig,
        RFOptuna,
        RFSFTConfig,
    )
    from rf_ray.toy import TOY_MODEL_PATH  # import: the embedded model replaces the hub's

    # --- cell 7
    from tests.examples.rapidfire.hub import load_dataset  # import: an offline stand-in

    dataset = load_dataset("bitext/Bitext-customer-support-llm-chatbot-training-dataset")

    train_dataset = dataset["train"].select(range(32))  # size: 128 rows -> 32
    eval_dataset = dataset["train"].select(range(32, 40))  # size: 24 rows -> 8
    train_dataset = train_dataset.shuffle(seed=42)
    eval_dataset = eval_dataset.shuffle(seed=42)

    # --- cell 9
    def sample_formatting_function(row):
        """Function to preprocess each example from dataset"""
        SYSTEM_PROMPT = "You are a helpful and friendly customer support assistant. Please answer the user's query to the best of your ability."  # noqa: E501, N806
        return {
            "prompt": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": row["instruction"]},
            ],
            "completion": [{"role": "assistant", "content": row["response"]}],
        }

    # --- cell 11
    def sample_compute_metrics(eval_preds):
        """Optional function to compute eval metrics based on predictions and labels"""
        predictions, labels = eval_preds

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

    # --- cell 13
    experiment = Experiment(experiment_name="exp-optuna-chatqa-tiny1", mode="fit")

    # --- cell 15
    config_template = RFModelConfig(
        model_name=str(TOY_MODEL_PATH),  # model: TinyLlama-1.1B-Chat -> the toy
        peft_config=RFLoraConfig(
            r=List([8, 32]),
            lora_alpha=List([16, 32, 64, 128]),
            lora_dropout=0.1,
            target_modules=List(
                [
                    ["q_proj", "v_proj"],
                    ["q_proj", "k_proj", "v_proj", "o_proj"],
                ]
            ),
            bias="none",
        ),
        training_args=RFSFTConfig(
            learning_rate=List([1e-3, 1e-4]),
            lr_scheduler_type="linear",
            per_device_train_batch_size=4,
            per_device_eval_batch_size=4,
            max_steps=16,  # size: 128 steps -> 16 (2 epochs of 4 chunks, 2 steps each)
            gradient_accumulation_steps=1,
            logging_steps=2,
            eval_strategy="steps",
            eval_steps=4,
            bf16=True,
        ),
        model_type="causal_lm",
        model_kwargs={"device_map": "auto", "torch_dtype": "auto", "use_cache": False},
        formatting_func=sample_formatting_function,
        compute_metrics=sample_compute_metrics,
        generation_config={
            "max_new_tokens": 16,  # size: 256 -> 16 (the toy has 256 positions)
            "temperature": 0.8,
            "top_p": 0.9,
            "top_k": 30,
            "repetition_penalty": 1.05,
        },
    )

    # --- cell 17
    config_group = RFOptuna(
        configs=[config_template],
        trainer_type="SFT",
        n_initial=4,
        budget=6,
        objective="maximize:rougeL",
        sampler="tpe",
        pruner="median",
        seed=42,
    )

    # --- cell 19
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
        else:
            model = AutoModelForCausalLM.from_pretrained(model_name, **model_kwargs)

        tokenizer = AutoTokenizer.from_pretrained(model_name)

        return (model, tokenizer)

    # --- cell 21
    with warnings.catch_warnings(record=True) as out["warnings"]:  # to assert on, below
        warnings.simplefilter("always")
        experiment.run_fit(
            config_group, sample_create_model, train_dataset, eval_dataset, num_chunks=4, seed=42
        )

    # --- cell 23
    import pandas as pd
    from optuna.trial import TrialState

    study = config_group._study

    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]

    print(f"Trials: {len(study.trials)} total, {len(completed)} completed, {len(pruned)} pruned")

    try:
        best = study.best_trial
        print(f"Best trial: #{best.number} with rougeL = {best.value:.4f}")
    except ValueError as exc:
        print(f"No best trial available yet ({exc}).")

    trials_df = pd.DataFrame(
        [
            {
                "trial": t.number,
                "state": t.state.name,
                "best": "✓" if t.number == study.best_trial.number else "",
                **{k.split(".")[-1]: v for k, v in t.params.items()},
                "rougeL": f"{t.value:.4f}" if t.value is not None else "—",
            }
            for t in study.trials
        ]
    )
    trials_df  # noqa: B018  the notebook's cell shows it

    # --- cell 25
    results = experiment.get_results()
    results  # noqa: B018  the notebook's cell shows it

    # --- cell 27
    experiment.end()

    out.update(experiment=experiment, config_group=config_group, trials_df=trials_df)
    out.update(results=results)
    return out


def test_optuna_proposed_the_runs_and_replaced_each_pruned_one_within_the_budget(notebook):
    search, experiment = notebook["config_group"], notebook["experiment"]
    trials = search.study.trials
    info = experiment.get_runs_info().set_index("run_id")
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    # RapidFire: n_initial runs; each pruned one is replaced while the budget lasts.
    assert (search.n_initial, search.budget) == (4, 6)  # the notebook's
    assert len(trials) == min(search.n_initial + len(pruned), search.budget)
    assert len(info) == len(trials)
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert [t.state.name for t in trials].count("COMPLETE") >= 1
    for run_id, trial in search.trials_by_run().items():
        config = info.loc[run_id, "config"]
        assert config["learning_rate"] == trial.params["training_args.learning_rate"]
        assert config["lora.r"] == trial.params["peft_config.r"]
        assert config["lora.lora_alpha"] == trial.params["peft_config.lora_alpha"]
        modules = json.loads(trial.params["peft_config.target_modules"])  # a list: JSON label
        assert config["lora.target_modules"] == ",".join(modules)
        # Optuna prunes, rf-ray's own pruner does not: a PRUNED trial is a pruned run.
        expected = {"PRUNED": "pruned", "COMPLETE": "completed"}[trial.state.name]
        assert info.loc[run_id, "status"] == expected


def test_each_trial_holds_its_runs_rouge_l_and_the_best_is_the_highest(notebook):
    search, experiment = notebook["config_group"], notebook["experiment"]
    chunks = experiment.get_chunk_results().sort_values(["run_id", "chunk"])
    rouge = {rid: dict(zip(g["chunk"], g["rougeL"], strict=True)) for rid, g in
             chunks.groupby("run_id")}  # fmt: skip
    for run_id, trial in search.trials_by_run().items():
        mine = chunks[chunks["run_id"] == run_id]
        # The notebook's compute_metrics scored GENERATED text: ROUGE-L and BLEU every chunk.
        assert mine["rougeL"].map(math.isfinite).all()
        assert mine["bleu"].between(0, 1).all()
        # Every chunk's ROUGE-L went to the run's trial, up to its pruning.
        assert trial.intermediate_values.items() <= rouge[run_id].items()
        assert min(trial.intermediate_values) == 1
    complete = {r: t for r, t in search.trials_by_run().items() if t.state.name == "COMPLETE"}
    assert complete
    for run_id, trial in complete.items():
        assert trial.intermediate_values == rouge[run_id]
        assert trial.value == pytest.approx(rouge[run_id][max(rouge[run_id])])  # its last
    assert search.study.best_trial.value == max(t.value for t in complete.values())
    df = notebook["trials_df"]
    assert list(df["state"]) == [t.state.name for t in search.study.trials]
    assert (df["best"] == "✓").sum() == 1


def test_the_runs_logged_to_mlflow_and_get_results(notebook):
    experiment = notebook["experiment"]
    info = experiment.get_runs_info().set_index("run_id")
    client = MlflowClient(tracking_uri=experiment.tracking_uri)
    results = notebook["results"]
    for run_id, row in info.iterrows():
        assert sorted(results.loc[results["run_id"] == run_id, "step"]) == list(
            range(1, row["steps_done"] + 1)
        )
        history = client.get_metric_history(row["mlflow_run_id"], "chunk/rougeL")
        assert len(history) == row["chunks_done"]
    pruned = info[info["status"] == "pruned"]
    assert (pruned["chunks_done"] < 8).all()  # pruned before their last chunk
    done = info[info["status"] == "completed"]
    assert (done["steps_done"] == 16).all()  # max_steps
