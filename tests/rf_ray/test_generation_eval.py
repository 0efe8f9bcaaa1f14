"""Generation metrics end to end (``RFModelConfig(eval_metrics_fn=...)``): real Ray actors, TRL,
PEFT and MLflow. Every chunk end logs each run's generation metric beside its eval loss, the
pruner can rank on it, ``rf-ray samples`` and ``rf-ray status`` show it; bad input is refused
before anything starts."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
from datasets import Dataset
from mlflow.tracking import MlflowClient

from actors.storage.layout import ExperimentDir
from rf_ray import ConfigError, Experiment, List, RFModelConfig, RFSFTConfig, SuccessiveHalving
from rf_ray.cli import main
from rf_ray.toy import TOY_MODEL_NAME, sft_dataset, sft_eval_dataset

TRAIN_ARGS = dict(per_device_train_batch_size=4, num_train_epochs=1, max_length=48)
GENERATION = {"max_new_tokens": 8, "do_sample": False}


def _config(**gen):
    return RFModelConfig(
        model_name=TOY_MODEL_NAME,
        training_args=RFSFTConfig(learning_rate=List([3e-3, 1e-4]), lora_rank=4, **TRAIN_ARGS),
        generation_config=GENERATION,
        **gen,
    )


@pytest.fixture(scope="module")
def gen_grid(ray_cluster, tmp_path_factory):
    """Two SFT runs, 2 chunks, pruned on ROUGE-L of their generations after chunk 1."""
    root = tmp_path_factory.mktemp("gen-e2e")
    exp = Experiment("gen-e2e", experiment_path=root)
    try:
        info = exp.run_fit(
            _config(eval_metrics_fn=["rougeL", "exact_match"], eval_generations=6),
            train_dataset=sft_dataset(16, seed=0),
            eval_dataset=sft_eval_dataset(12, seed=1),
            num_chunks=2,
            seed=42,
            pruner=SuccessiveHalving(metric="rougeL", mode="max", eta=2),
            live_view=False,
        )
    finally:
        exp.end()
    return SimpleNamespace(exp=exp, root=root, info=info.set_index("run_id", drop=False))


def test_each_chunk_logs_the_generation_metrics_and_the_pruner_ranks_on_them(gen_grid):
    chunks = gen_grid.exp.get_chunk_results()
    first = chunks[chunks["chunk"] == 1].set_index("run_id")
    assert sorted(first.index) == [1, 2]
    for column in ("rougeL", "exact_match", "eval_loss"):
        assert first[column].map(math.isfinite).all(), column
    info = gen_grid.info
    (pruned,) = info.index[info["status"] == "pruned"]
    (kept,) = info.index[info["status"] == "completed"]
    # Higher ROUGE-L survives (ties go to the smaller run id: policies.pruning).
    assert (first.loc[kept, "rougeL"], -kept) > (first.loc[pruned, "rougeL"], -pruned)
    assert info.loc[kept, "best_metric"] == pytest.approx(
        chunks[chunks["run_id"] == kept]["rougeL"].max()
    )


def test_mlflow_has_the_generation_metric_per_chunk(gen_grid):
    client = MlflowClient(tracking_uri=gen_grid.exp.tracking_uri)
    for row in gen_grid.info.itertuples():
        history = client.get_metric_history(row.mlflow_run_id, "chunk/rougeL")
        assert len(history) == row.chunks_done
        params = client.get_run(row.mlflow_run_id).data.params
        assert params["eval_metrics_fn"] == "rougeL+exact_match"
        assert params["eval_generations"] == "6"


def test_samples_and_status_show_the_generations(gen_grid, capsys):
    root = str(gen_grid.root)
    kept = int(gen_grid.info.index[gen_grid.info["status"] == "completed"][0])
    assert main(["samples", "gen-e2e", str(kept), "--path", root, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["samples"]) == 6
    eval_rows = sft_eval_dataset(12, seed=1)
    assert [s["prompt"] for s in record["samples"]] == eval_rows["prompt"][:6]
    assert [s["reference"] for s in record["samples"]] == [
        c.strip() for c in eval_rows["completion"][:6]
    ]
    assert main(["samples", "gen-e2e", str(kept), "--path", root, "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "reference" in text
    assert eval_rows["prompt"][0] in text
    assert main(["status", "gen-e2e", "--path", root]) == 0
    status = capsys.readouterr().out
    assert "exact_match" in status.splitlines()[5]  # a column beside the pruner's rougeL
    assert main(["status", "gen-e2e", "--path", root, "--json"]) == 0
    runs = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert set(runs[kept]["generation_metrics"]) == {"rougeL", "exact_match"}


def test_samples_of_a_run_without_generations_says_why(gen_grid, capsys):
    assert main(["samples", "gen-e2e", "99", "--path", str(gen_grid.root)]) == 2
    assert "has no samples.json yet" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"eval_metrics_fn": 3}, ["eval_metrics_fn=3", "metric name"]),
        ({"eval_metrics_fn": "rouge"}, ["eval_metrics_fn=['rouge']", "unknown metric"]),
        ({"eval_metrics_fn": "rougeL", "eval_generations": 0}, ["eval_generations=0", ">= 1"]),
        ({"eval_metrics_fn": "rougeL", "eval_generations": True}, ["eval_generations=True"]),
        ({"eval_metrics_fn": "rougeL", "eval_prompts_fn": "x"}, ["eval_prompts_fn='x'"]),
        ({"eval_prompts_fn": lambda row: ("p", "r")}, ["eval_metrics_fn is None"]),
        ({"eval_metrics_fn": List(["rougeL", "bleu"])}, ["is a knob"]),
    ],
)
def test_bad_generation_fields_are_refused_naming_field_and_value(kwargs, words):
    with pytest.raises(ConfigError) as info:
        _config(**kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("eval_dataset", "words"),
    [
        (None, ["eval_metrics_fn='rougeL'", "eval_dataset=None", "pass an eval_dataset"]),
        (
            Dataset.from_dict({"text": ["a b"], "completion": ["c"]}),
            ["columns ['completion', 'text']", "eval_prompts_fn"],
        ),
    ],
)
def test_an_eval_set_without_usable_prompts_is_refused_before_start(tmp_path, eval_dataset, words):
    exp = Experiment("gen-bad", experiment_path=tmp_path)
    with pytest.raises(ConfigError) as info:
        exp.run_fit(
            _config(eval_metrics_fn="rougeL"),
            train_dataset=sft_dataset(16),
            eval_dataset=eval_dataset,
            num_chunks=2,
            live_view=False,
        )
    for word in words:
        assert word in str(info.value)
    assert not ExperimentDir(tmp_path / "gen-bad").runs_dir.exists()  # nothing written
