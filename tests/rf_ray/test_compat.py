"""A RapidFire AI or TRL user's config runs as written (issue 13). Pure config: no Ray starts.

Each accepted form gives the runs it should (count and knob values); each refused form names
the field and the fix; an ignored TRL field is reported once per experiment.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import rf_ray
import rf_ray.automl
from policies.errors import ConfigError, UnknownKnobError
from rf_ray import ops
from rf_ray.compat import (
    IGNORED_TRAINER_FIELDS,
    IgnoredFieldWarning,
    forwarded_reporters,
    ignored_field_warnings,
)
from rf_ray.configs import (
    List,
    Range,
    RFDPOConfig,
    RFLoraConfig,
    RFModelConfig,
    RFSFTConfig,
)
from rf_ray.experiment import Experiment
from rf_ray.search import RFGridSearch, RFRandomSearch
from rf_ray.specs import RunConfig, build_trl_config

ROOT = Path(__file__).resolve().parents[2]


def fmt_a(example):
    return example["prompt"]


def fmt_b(example):
    return example["prompt"] + "!"


def _knobs(runs):
    return [(r.lora.get("r"), r.training_args.get("learning_rate")) for r in runs]


# ------------------------------------------------------------------ 1. List / Range everywhere


@pytest.mark.parametrize("wrap", [List, list])
def test_a_list_of_lora_configs_times_a_list_of_learning_rates(wrap):
    cfg = RFModelConfig(
        "tiny",
        peft_config=wrap([RFLoraConfig(r=8, lora_alpha=16), RFLoraConfig(r=16, lora_alpha=32)]),
        training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4])),
    )
    runs = RFGridSearch(cfg).expand()
    assert _knobs(runs) == [(8, 1e-4), (8, 2e-4), (16, 1e-4), (16, 2e-4)]
    assert [r.lora["lora_alpha"] for r in runs] == [16, 16, 32, 32]


def test_a_list_of_trainer_configs_and_a_list_of_model_configs():
    group = List(
        [
            RFModelConfig(
                "a",
                training_args=List(
                    [
                        RFSFTConfig(learning_rate=1e-4),
                        RFSFTConfig(learning_rate=2e-4, max_length=64),
                    ]
                ),
            ),
            RFModelConfig("b", peft_config=RFLoraConfig(r=List([4, 8]))),
        ]
    )
    runs = RFGridSearch(configs=group, trainer_type="SFT").expand()
    assert [(r.model_name, r.training_args, r.lora.get("r")) for r in runs] == [
        ("a", {"learning_rate": 1e-4}, None),
        ("a", {"learning_rate": 2e-4, "max_length": 64}, None),
        ("b", {}, 4),
        ("b", {}, 8),
    ]


def test_ranges_inside_a_list_of_lora_configs_under_random_search():
    cfg = RFModelConfig(
        "tiny",
        peft_config=List(
            [RFLoraConfig(r=8, lora_alpha=Range(8, 32, dtype=int)), RFLoraConfig(r=16)]
        ),
        training_args=RFSFTConfig(learning_rate=Range(1e-5, 1e-3, log=True)),
    )
    runs = RFRandomSearch(cfg, num_runs=6, seed=3).expand()
    assert len(runs) == 6
    assert {r.lora["r"] for r in runs} == {8, 16}  # both, so the check below runs
    for run in runs:
        assert 1e-5 <= run.training_args["learning_rate"] <= 1e-3
        if run.lora["r"] == 8:
            assert 8 <= run.lora["lora_alpha"] <= 32
            assert isinstance(run.lora["lora_alpha"], int)


@pytest.mark.parametrize(
    ("knob", "allowed"),
    [
        (Range(8, 32), set(range(8, 33))),  # RapidFire: int bounds make an int Range
        (Range(8, 32, dtype="int", step=8), {8, 16, 24, 32}),
        (Range(4.0, 8.0, dtype="int"), set(range(4, 9))),
    ],
)
def test_rapidfire_range_forms_draw_ints_for_a_rank(knob, allowed):
    cfg = RFModelConfig("tiny", peft_config=RFLoraConfig(r=knob))
    runs = RFRandomSearch(cfg, num_runs=4, seed=1).expand()
    assert len(runs) == 4
    for run in runs:
        assert type(run.lora["r"]) is int
        assert run.lora["r"] in allowed


def test_a_stepped_float_range_and_its_refusals():
    knob = Range(0.0, 0.2, step=0.05)
    runs = RFRandomSearch(RFModelConfig("t", peft_config=RFLoraConfig(lora_dropout=knob)), 3)
    for run in runs.expand():
        assert round(run.lora["lora_dropout"] / 0.05, 6).is_integer()
    with pytest.raises(ConfigError, match=r"step=0.1.*log=True"):
        Range(1e-4, 1e-2, log=True, step=0.1)
    with pytest.raises(ConfigError, match="'int' or 'float'"):
        Range(1, 2, dtype="integer")


def test_knobs_inside_kwargs_dicts_and_generation_config_nested_too():
    cfg = RFModelConfig(
        "tiny",
        model_kwargs={"rope_scaling": {"factor": List([1.0, 2.0])}, "use_cache": False},
        tokenizer_kwargs={"padding_side": List(["left", "right"])},
        generation_config={"temperature": List([0.5, 1.0]), "max_new_tokens": 8},
    )
    runs = RFGridSearch(cfg).expand()
    assert len(runs) == 8
    got = {
        (r.model_kwargs["rope_scaling"]["factor"], r.tokenizer_kwargs["padding_side"],
         r.generation_config["temperature"])
        for r in runs
    }  # fmt: skip
    assert got == {(f, p, t) for f in (1.0, 2.0) for p in ("left", "right") for t in (0.5, 1.0)}
    assert all(r.model_kwargs["use_cache"] is False for r in runs)
    # Runs do not share the nested dict.
    assert runs[0].model_kwargs["rope_scaling"] is not runs[1].model_kwargs["rope_scaling"]


def test_a_list_of_formatting_functions():
    cfg = RFModelConfig("tiny", formatting_func=List([fmt_a, fmt_b]), compute_metrics=None)
    runs = RFGridSearch(cfg).expand()
    assert [r.formatting_func for r in runs] == [fmt_a, fmt_b]


def test_mixed_trainer_types_in_one_training_args_list_are_refused():
    with pytest.raises(
        ConfigError, match=r"training_args=.*mixes trainer types.*own RFModelConfig"
    ):
        RFModelConfig("tiny", training_args=List([RFSFTConfig(), RFDPOConfig()]))


def test_a_wrong_object_in_a_peft_config_list_names_the_field():
    with pytest.raises(TypeError, match="peft_config must be an RFLoraConfig, or a List"):
        RFModelConfig("tiny", peft_config=List([RFLoraConfig(r=8), {"r": 16}]))


def test_a_trl_scripts_own_config_objects_are_refused_naming_the_rf_class():
    import peft
    import trl

    args = trl.SFTConfig(output_dir="out", learning_rate=2e-4, use_cpu=True, bf16=False)
    with pytest.raises(ConfigError, match=r"training_args is a trl.SFTConfig.*RFSFTConfig\("):
        RFModelConfig("tiny", training_args=args)
    with pytest.raises(ConfigError, match=r"peft_config is a peft.LoraConfig.*RFLoraConfig\("):
        RFModelConfig("tiny", peft_config=peft.LoraConfig(r=8))


def test_rf_searcher_names_the_knobs_of_a_list_of_lora_configs():
    from rf_ray.tune import RFSearcher

    cfg = RFModelConfig(
        "tiny",
        peft_config=List([RFLoraConfig(r=8), RFLoraConfig(r=16, lora_dropout=0.1)]),
        training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4])),
    )
    searcher = RFSearcher(RFGridSearch(cfg), metric="eval_loss", mode="min")
    points = [searcher.suggest(f"t{i}") for i in range(4)]
    assert set(searcher.keys) == {"lora.r", "lora.lora_dropout", "learning_rate"}
    assert [(p["lora.r"], p["learning_rate"]) for p in points] == [
        (8, 1e-4), (8, 2e-4), (16, 1e-4), (16, 2e-4),
    ]  # fmt: skip
    assert searcher.to_run_config(points[3]).lora == {"r": 16, "lora_dropout": 0.1}


def test_rapidfire_dpo_tutorial_shape_copies_and_attribute_assignments():
    base_lora = RFLoraConfig(r=64, lora_alpha=64, lora_dropout=0.1, bias="none")
    base_dpo = RFDPOConfig(
        model_adapter_name="default", ref_adapter_name="reference", force_use_ref_model=False,
        loss_type="sigmoid", beta=0.1, max_prompt_length=512, max_length=1024,
        learning_rate=5e-5, save_strategy="no", output_dir="./output",
    )  # fmt: skip
    lora_2, dpo_2 = base_lora.copy(), base_dpo.copy()
    lora_2.r = 32
    dpo_2.beta = 0.01
    assert (base_lora.r, base_dpo.beta) == (64, 0.1)  # the copies are independent
    group = List([RFModelConfig("tiny", peft_config=base_lora, training_args=base_dpo),
                  RFModelConfig("tiny", peft_config=lora_2, training_args=dpo_2)])  # fmt: skip
    runs = RFGridSearch(configs=group, trainer_type="DPO").expand()
    assert [(r.lora["r"], r.training_args["beta"]) for r in runs] == [(64, 0.1), (32, 0.01)]
    notes = ignored_field_warnings(runs)
    for field in ("model_adapter_name", "ref_adapter_name", "force_use_ref_model"):
        assert "DPO reference policy is the resident base" in notes[field]
    assert "truncate whole sequences with max_length" in notes["max_prompt_length"]
    with pytest.raises(UnknownKnobError, match="'bta'"):
        dpo_2.bta = 0.2


def test_grpos_max_prompt_length_note_speaks_of_grpo():
    run = RunConfig("tiny", trainer_type="GRPO", training_args={"max_prompt_length": 64},
                    reward_funcs=[fmt_a])  # fmt: skip
    note = ignored_field_warnings([run])["max_prompt_length"]
    assert "GRPOConfig has no such field: GRPO keeps each prompt whole" in note
    assert "SFT and DPO" not in note


def test_a_field_this_trl_keeps_is_honoured_not_ignored(tmp_path):
    run = RunConfig("tiny", trainer_type="GRPO", training_args={"max_completion_length": 12},
                    reward_funcs=[fmt_a])  # fmt: skip
    assert "max_completion_length" not in ignored_field_warnings([run])
    assert build_trl_config(run, str(tmp_path), use_cpu=True).max_completion_length == 12


# ------------------------------------------------------------------ 2. TRL fields rf-ray owns


@pytest.mark.parametrize(
    ("field", "value"),
    [("output_dir", "./out"), ("save_strategy", "epoch"), ("disable_tqdm", True),
     ("use_cpu", True), ("push_to_hub", True), ("save_steps", 50), ("run_name", "mine")],
)  # fmt: skip
def test_an_ignored_trl_field_is_accepted_and_reported_with_what_rf_ray_does(
    tmp_path, field, value
):
    (run,) = RFGridSearch(
        RFModelConfig("tiny", training_args=RFSFTConfig(**{field: value}))
    ).expand()
    assert run.training_args[field] == value  # kept as the user wrote it (MLflow params)
    notes = ignored_field_warnings([run])
    assert notes[field] == (
        f"training_args.{field}={value!r} is ignored: {IGNORED_TRAINER_FIELDS[field]}"
    )
    args = build_trl_config(run, str(tmp_path / "run"), use_cpu=True)
    assert args.output_dir == str(tmp_path / "run")
    assert args.save_strategy == "no"
    assert args.push_to_hub is False


def test_each_ignored_field_is_reported_once_for_many_runs():
    cfg = RFModelConfig(
        "tiny",
        training_args=RFSFTConfig(learning_rate=List([1e-4, 2e-4, 3e-4]), save_strategy="epoch",
                                  output_dir="./out"),
        num_gpus=2,
    )  # fmt: skip
    notes = ignored_field_warnings(RFGridSearch(cfg).expand())
    assert sorted(notes) == ["num_gpus", "output_dir", "save_strategy"]


def test_logging_steps_and_eval_steps_are_honoured_in_the_trl_config(tmp_path):
    run = RunConfig("tiny", training_args={"logging_steps": 5, "eval_strategy": "steps"})
    args = build_trl_config(run, str(tmp_path), use_cpu=True)
    assert args.logging_steps == 1  # TRL logs every step to rf-ray; the trial thins MLflow rows
    assert args.eval_steps == 5  # as HF: eval_steps defaults to the user's logging_steps
    assert run.flat_params()["logging_steps"] == 5  # what the trial reads


@pytest.mark.parametrize("field", ["logging_steps", "eval_steps"])
def test_a_ratio_step_count_is_refused_naming_the_fix(field):
    with pytest.raises(ConfigError, match=f"{field}=0.1 is invalid.*a step count"):
        RFSFTConfig(**{field: 0.1})


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_report_to_wandb_without_wandb_warns_and_logs_to_mlflow_only(tmp_path):
    forwarded, notes = forwarded_reporters(["wandb", "mlflow"])
    assert forwarded == []
    assert notes == [
        "report_to='wandb' is not forwarded: the wandb package is not installed (pip install "
        "wandb); rf-ray still logs every run to MLflow"
    ]
    run = RunConfig("tiny", training_args={"report_to": ["wandb", "mlflow"]})
    assert build_trl_config(run, str(tmp_path), use_cpu=True).report_to in ([], "none", ["none"])
    assert list(ignored_field_warnings([run]).values()) == [f"training_args.{notes[0]}"]


def test_report_to_an_integration_rf_ray_does_not_forward_says_so():
    _, notes = forwarded_reporters("comet_ml")
    assert notes == [
        "report_to='comet_ml' is not forwarded: rf-ray logs every run to MLflow and forwards "
        "only wandb, tensorboard"
    ]


# ------------------------------------------------------------------ 3. clone changes


def _base_run():
    (run,) = RFGridSearch(
        RFModelConfig("tiny", peft_config=RFLoraConfig(r=8), training_args=RFSFTConfig())
    ).expand()
    return run


@pytest.mark.parametrize(
    "changes",
    [
        {"training_args": {"learning_rate": 1e-4}, "peft_config": {"r": 32}},
        {"training_args": RFSFTConfig(learning_rate=1e-4), "peft_config": RFLoraConfig(r=32)},
        {"learning_rate": 1e-4, "lora.r": 32},
        {"learning_rate": 1e-4, "lora_rank": 32},
    ],
    ids=["nested", "rf-configs", "flat", "shorthand"],
)
def test_clone_changes_in_rapidfire_shape_and_flat_give_the_same_run(changes):
    run = ops.modified(_base_run(), changes)
    assert run.training_args == {"learning_rate": 1e-4}
    assert run.lora == {"r": 32}


def test_nested_clone_changes_reach_kwargs_sections():
    run = ops.modified(
        _base_run(),
        {"model_kwargs": {"use_cache": False}, "generation_config": {"temperature": 0.7}},
    )
    assert run.model_kwargs == {"use_cache": False}
    assert run.generation_config == {"temperature": 0.7}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"peft_config": 32}, "changes['peft_config']=32 must be a dict"),
        ({"lora.r": 16, "peft_config": {"r": 32}}, "sets 'lora.r' twice"),
        ({"training_args": {"learning_rte": 1e-4}}, "learning_rte"),
    ],
)
def test_bad_clone_changes_name_the_field(changes, needle):
    with pytest.raises(ConfigError, match=None) as err:
        ops.modified(_base_run(), changes)
    assert needle in str(err.value)


# ------------------------------------------------------------------ 4. RapidFire names


def test_experiment_takes_rapidfire_positional_mode(tmp_path):
    exp = Experiment("port", "fit", tmp_path)
    assert exp.mode == "fit"
    assert exp.dir == (tmp_path / "port").resolve()
    assert exp.get_log_file_path() == exp.dir / "rf_ray.log"
    exp.cancel_current()  # nothing running: a no-op, not an error


def test_modes_are_fit_and_evals_and_each_method_names_its_mode(tmp_path):
    with pytest.raises(ConfigError, match=r"mode='eval' is not supported.*'fit'.*'evals'"):
        Experiment("port", mode="eval", experiment_path=tmp_path)
    evals = Experiment("port", mode="evals", experiment_path=tmp_path)
    with pytest.raises(ConfigError, match=r"run_fit\(\) is for mode='fit'"):
        evals.run_fit(RFModelConfig("tiny"), train_dataset=[{"text": "a"}])
    with pytest.raises(ConfigError, match=r"run_evals\(\) is for mode='evals'"):
        Experiment("port", experiment_path=tmp_path).run_evals({}, [{"query": "q"}])


def test_rapidfire_model_config_fields():
    cfg = RFModelConfig(
        "tiny", model_type="causal_lm", ref_model_name="tiny", tokenizer="other", num_gpus=1
    )
    (run,) = RFGridSearch(cfg).expand()
    assert sorted(ignored_field_warnings([run])) == ["num_gpus", "ref_model_name", "tokenizer"]
    # create_model_fn reads the model config as RapidFire's dict does.
    assert (run["model_name"], run["model_type"], run["model_kwargs"]) == ("tiny", "causal_lm", {})
    assert run.get("tokenizer") is None
    with pytest.raises(KeyError, match="model_name"):
        run["bogus"]


@pytest.mark.parametrize(
    ("kwargs", "needles"),
    [
        ({"ref_model_name": "other"}, ["ref_model_name='other'", "drop ref_model_name"]),
        ({"model_type": "seq2seq"}, ["model_type='seq2seq'", "causal_lm"]),
        ({"num_gpus": -1}, ["num_gpus=-1"]),
    ],
)
def test_rapidfire_fields_that_cannot_work_are_refused(kwargs, needles):
    with pytest.raises(ConfigError) as err:
        RFModelConfig("tiny", **kwargs)
    for needle in needles:
        assert needle in str(err.value)


def test_rf_ray_automl_has_rapidfires_names():
    for name in rf_ray.automl.__all__:
        assert getattr(rf_ray.automl, name) is getattr(rf_ray, name)
    assert rf_ray.RFOptuna.__module__ == "rf_ray.tune.optuna_search"  # loaded on use
    assert issubclass(IgnoredFieldWarning, UserWarning)
    assert "IgnoredFieldWarning" in rf_ray.__all__


def test_rf_optuna_proposes_runs_from_the_knobs_of_one_config():
    cfg = RFModelConfig(
        "tiny",
        peft_config=RFLoraConfig(r=List([4, 8])),
        training_args=RFSFTConfig(learning_rate=Range(1e-5, 1e-3, log=True), max_length=64),
    )
    search = rf_ray.RFOptuna(cfg, trainer_type="SFT", n_initial=3, budget=5, seed=0)
    runs = search.expand()
    assert (search.budget, search.n_initial, search.objective.metrics) == (5, 3, ("eval_loss",))
    assert len(runs) == 3
    for run in runs:
        assert run.lora["r"] in (4, 8)
        assert 1e-5 <= run.training_args["learning_rate"] <= 1e-3
        assert run.training_args["max_length"] == 64


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: rf_ray.RFOptuna(RFModelConfig("t"), objective="best"), "minimize:<metric>"),
        (lambda: rf_ray.RFOptuna(RFModelConfig("t")), "no List or Range knob"),
    ],
)
def test_rf_optuna_refusals_name_the_fix(make, needle):
    with pytest.raises(ConfigError) as err:
        make()
    assert needle in str(err.value)


# ------------------------------------------------------------------ 6. extras


def test_the_tune_example_without_optuna_fails_with_its_docstring_sentence():
    sentence = 'This example needs the tune extra: pip install "rf-ray[tune]"'
    source = (ROOT / "examples" / "tune_optuna_asha.py").read_text()
    assert sentence in source.split('"""')[1]  # the docstring says it
    code = (
        "import runpy, sys; sys.modules['optuna'] = None; "
        "runpy.run_path('examples/tune_optuna_asha.py', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == sentence


@pytest.mark.parametrize("example", ["sft_grid", "dpo_grid", "grpo_grid", "rapidfire_port"])
def test_every_other_example_says_it_needs_no_extra(example):
    docstring = (ROOT / "examples" / f"{example}.py").read_text().split('"""')[1]
    assert "It needs no extra: ``pip install rf-ray`` brings everything it imports." in " ".join(
        docstring.split()
    )


# ------------------------------------------------------------------ formatting_func, every trainer


def _to_grpo(row):  # RapidFire's GRPO tutorial shape: prompt built from a raw column
    return {"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"]}


def _grpo_run(formatting_func):
    from rf_ray.configs import RFGRPOConfig

    cfg = RFModelConfig(
        "tiny", training_args=RFGRPOConfig(num_generations=2, per_device_train_batch_size=2),
        formatting_func=formatting_func, reward_funcs=[fmt_a],
    )  # fmt: skip
    (run,) = RFGridSearch(cfg, trainer_type="GRPO").expand()
    return run


def test_a_grpo_formatting_func_that_builds_prompt_from_raw_columns_is_accepted():
    from datasets import Dataset

    from rf_ray.data import check_columns

    raw = Dataset.from_dict({"question": ["add: 1 2 ="], "answer": ["1 + 2 #### 3"]})
    with pytest.raises(ConfigError, match=r"columns \['answer', 'question'\], but GRPO needs"):
        check_columns(raw, _grpo_run(None), "train_dataset")  # no formatting_func: refused
    check_columns(raw, _grpo_run(_to_grpo), "train_dataset")  # the columns it adds count


@pytest.mark.parametrize(
    ("func", "needle"),
    [
        (lambda row: row["question"], r"returned str for train_dataset\[0\].*must return a dict"),
        (lambda row: {"q": row["question"]}, r"after formatting_func .*GRPO needs prompt"),
        (lambda row: row["missing"], r"formatting_func .* failed on train_dataset\[0\].*KeyError"),
    ],
)
def test_a_dpo_or_grpo_formatting_func_is_checked_on_the_first_row(func, needle):
    from datasets import Dataset

    from rf_ray.data import check_columns

    raw = Dataset.from_dict({"question": ["add: 1 2 ="], "answer": ["3"]})
    with pytest.raises(ConfigError, match=needle):
        check_columns(raw, _grpo_run(func), "train_dataset")


def test_rapidfires_tracking_switches_are_said_to_do_nothing_here(tmp_path, monkeypatch):
    """RapidFire's trackio notebooks set RF_TRACKIO_ENABLED=true and RF_MLFLOW_ENABLED=false
    (its Colab default is TensorBoard on, MLflow off): rf-ray logs to MLflow whatever they say,
    so run_fit says so once, before anything starts, instead of ignoring them silently."""
    monkeypatch.setenv("RF_TRACKIO_ENABLED", "true")
    monkeypatch.setenv("RF_MLFLOW_ENABLED", "false")
    monkeypatch.setenv("RF_TENSORBOARD_ENABLED", "True")
    exp = Experiment("port", experiment_path=tmp_path)
    cfg = RFModelConfig("tiny", training_args=RFSFTConfig(max_length=32))
    SuccessiveHalving = rf_ray.SuccessiveHalving  # noqa: N806
    with pytest.warns(rf_ray.IgnoredFieldWarning) as caught, pytest.raises(ConfigError):
        exp.run_fit(cfg, train_dataset=[{"text": "a"}] * 4,  # refused after the warnings
                    pruner=SuccessiveHalving(metric="no_such_metric"))  # fmt: skip
    notes = [str(w.message) for w in caught if w.category is rf_ray.IgnoredFieldWarning]
    assert len(notes) == 3, notes
    trackio, mlflow, tensorboard = sorted(
        notes, key=lambda n: ("TRACKIO" not in n, "MLFLOW" not in n)
    )
    assert "RF_TRACKIO_ENABLED='true' is ignored" in trackio
    assert "RF_MLFLOW_ENABLED='false' is ignored" in mlflow
    assert "MLflow" in mlflow
    assert "report_to='tensorboard'" in tensorboard
    monkeypatch.setenv("RF_MLFLOW_ENABLED", "true")  # what rf-ray does anyway: nothing to say
    monkeypatch.delenv("RF_TRACKIO_ENABLED")
    monkeypatch.delenv("RF_TENSORBOARD_ENABLED")
    second = Experiment("port2", experiment_path=tmp_path)
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError):
            second.run_fit(cfg, train_dataset=[{"text": "a"}] * 4,
                           pruner=SuccessiveHalving(metric="nope"))  # fmt: skip
    assert not [w for w in quiet if "RF_" in str(w.message)]


def test_run_fit_takes_rapidfires_num_gpus_and_monte_carlo_simulations(tmp_path):
    """RapidFire's ``run_fit(..., num_chunks, seed, num_gpus=1, monte_carlo_simulations=1000)``:
    its DPO fsdp-lite notebook passes ``num_gpus=2`` (a TypeError before). Both are accepted in
    RapidFire's positions and said to be ignored; num_gpus=1 (RapidFire's default) says nothing;
    a bad value is refused."""
    import inspect

    params = list(inspect.signature(Experiment.run_fit).parameters)
    assert params[1:9] == ["param_config", "create_model_fn", "train_dataset", "eval_dataset",
                           "num_chunks", "seed", "num_gpus", "monte_carlo_simulations"]  # fmt: skip
    cfg = RFModelConfig("tiny", training_args=RFSFTConfig(max_length=32))
    exp = Experiment("port", experiment_path=tmp_path)
    bad = rf_ray.SuccessiveHalving(metric="no_such_metric")  # refused after the warnings
    with pytest.warns(rf_ray.IgnoredFieldWarning) as caught, pytest.raises(ConfigError):
        exp.run_fit(cfg, None, [{"text": "a"}] * 4, None, 4, 42, 2, 500, pruner=bad)
    notes = sorted(str(w.message) for w in caught if w.category is rf_ray.IgnoredFieldWarning)
    assert len(notes) == 2, notes
    assert "run_fit(monte_carlo_simulations=500) is ignored" in notes[0]
    assert "run_fit(num_gpus=2) is ignored" in notes[1]
    assert "num_executors" in notes[1]
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError):
            exp.run_fit(cfg, train_dataset=[{"text": "a"}] * 4, num_gpus=1, pruner=bad)
    assert not [w for w in quiet if "num_gpus" in str(w.message)]
    with pytest.raises(ConfigError, match=r"num_gpus=0\): num_gpus must be an integer >= 1"):
        exp.run_fit(cfg, train_dataset=[{"text": "a"}] * 4, num_gpus=0)
