"""Run specs are stored as data (``rf_ray.spec_store``): JSON config, functions by reference.

A spec read back equals the one written (TRL args, LoRA config, chunk plan, params; importable
functions are the very same objects), a lambda or closure falls back to one cloudpickle file, the
files are private (0600 in 0700 directories) and a run's spec is never overwritten.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from actors.storage.layout import ExperimentDir, function_file
from actors.storage.store import Store
from policies.errors import ConfigError
from rf_ray import spec_store as specfiles
from rf_ray.specs import RunConfig, build_specs
from rf_ray.toy import TOY_MODEL_NAME, arithmetic_reward, default_create_model_fn, format_reward

TRAIN_ROWS = 16


def to_text(example):
    """An importable formatting function (tests.rf_ray.test_specfiles:to_text)."""
    return f"{example['prompt']}{example['completion']}"


def _exp_dir(tmp_path: Path) -> Path:
    exp_dir = tmp_path / "exp"
    store = Store(exp_dir)
    try:
        store.set_meta(train_rows=TRAIN_ROWS, num_chunks=2, seed=7)
    finally:
        store.close()
    return exp_dir


def _sft(**functions) -> RunConfig:
    return RunConfig(
        model_name=TOY_MODEL_NAME,
        trainer_type="SFT",
        training_args={"learning_rate": 3e-4, "per_device_train_batch_size": 2,
                       "gradient_accumulation_steps": 2, "max_length": 64},
        lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        model_kwargs={"dtype": "float32"},
        **functions,
    )  # fmt: skip


def _grpo(reward_funcs) -> RunConfig:
    return RunConfig(
        model_name=TOY_MODEL_NAME,
        trainer_type="GRPO",
        training_args={"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                       "num_generations": 4, "max_completion_length": 4},
        lora={"r": 4, "target_modules": ["q_proj", "v_proj"]},
        reward_funcs=reward_funcs,
    )  # fmt: skip


def _build(exp_dir: Path, run: RunConfig, run_id: int = 1):
    (spec,) = build_specs([run], exp_dir, TRAIN_ROWS, num_chunks=2, seed=7, first_run_id=run_id)
    return spec


def _assert_same(read, spec) -> None:
    assert read.run_id == spec.run_id
    assert read.trl_args == spec.trl_args
    assert read.lora_config == spec.lora_config
    assert read.plan == spec.plan
    assert read.params == spec.params
    assert read.model_key == spec.model_key
    assert read.seed == spec.seed
    assert read.parent_run_id == spec.parent_run_id
    assert read.model_config.to_json() == spec.model_config.to_json()


@pytest.mark.parametrize(
    "run",
    [_sft(formatting_func=to_text), _grpo([arithmetic_reward, format_reward])],
    ids=["sft", "grpo"],
)
def test_round_trip_gives_back_the_same_spec_and_the_same_functions(tmp_path, run):
    exp_dir = _exp_dir(tmp_path)
    spec = _build(exp_dir, run, run_id=3)
    spec.parent_run_id = 1
    specfiles.write_spec(exp_dir, spec)

    record = json.loads(ExperimentDir(exp_dir).run(3).spec_file.read_text())
    assert record["config"]["trainer_type"] == run.trainer_type
    assert not ExperimentDir(exp_dir).run(3).functions_dir.exists()  # all by reference

    read, blob = specfiles.read_spec(exp_dir, 3)
    _assert_same(read, spec)
    assert read.formatting_func is spec.formatting_func
    assert read.model_config.formatting_func is run.formatting_func
    if run.reward_funcs is not None:
        assert [f is g for f, g in zip(read.reward_funcs, run.reward_funcs, strict=True)] == [
            True,
            True,
        ]
    assert blob == specfiles.spec_blob(read)


def test_references_name_module_and_qualname(tmp_path):
    exp_dir = _exp_dir(tmp_path)
    specfiles.write_spec(exp_dir, _build(exp_dir, _grpo([arithmetic_reward])))
    record = json.loads(ExperimentDir(exp_dir).run(1).spec_file.read_text())
    assert record["functions"] == {
        "formatting_func": None,
        "compute_metrics": None,
        "reward_funcs": [{"import": "rf_ray.toy:arithmetic_reward"}],
    }


def test_a_lambda_and_a_closure_fall_back_to_one_cloudpickle_file_each(tmp_path):
    exp_dir = _exp_dir(tmp_path)
    bonus = 0.5

    def closure(prompts, completions, **kwargs):
        return [bonus] * len(completions)

    run = _grpo([arithmetic_reward, closure, lambda prompts, completions, **kw: [1.0]])
    specfiles.write_spec(exp_dir, _build(exp_dir, run))
    record = json.loads(ExperimentDir(exp_dir).run(1).spec_file.read_text())
    assert record["functions"]["reward_funcs"] == [
        {"import": "rf_ray.toy:arithmetic_reward"},
        {"pickle": "functions/reward_funcs.1.cloudpickle"},
        {"pickle": "functions/reward_funcs.2.cloudpickle"},
    ]
    read, _ = specfiles.read_spec(exp_dir, 1)
    assert read.reward_funcs[0] is arithmetic_reward
    assert read.reward_funcs[1](["p"], ["a", "b"]) == [0.5, 0.5]
    assert read.reward_funcs[2](["p"], ["a"]) == [1.0]


class _Planted:
    """Unpickling it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("named", ["../../../planted.pkl", "/PLANTED", "spec.json"])
def test_a_spec_that_names_a_pickle_outside_its_functions_directory_is_damaged(tmp_path, named):
    """The trust check (``actors.storage.trust``) looks at the pickles of a run's ``functions/``
    directory; a spec naming a pickle elsewhere (another user's file in /tmp) was unpickled."""
    import pickle

    from policies.errors import DamagedFileError

    exp_dir = _exp_dir(tmp_path)
    specfiles.write_spec(exp_dir, _build(exp_dir, _sft(formatting_func=lambda row: "x")))
    marker = tmp_path / "planted-code-ran"
    planted = tmp_path / "planted.pkl"
    planted.write_bytes(pickle.dumps(_Planted(marker)))
    spec_file = exp_dir / "runs" / "1" / "spec.json"
    record = json.loads(spec_file.read_text())
    named = str(planted) if named == "/PLANTED" else named
    record["functions"]["formatting_func"] = {"pickle": named}
    spec_file.write_text(json.dumps(record))
    with pytest.raises(DamagedFileError, match="rf-ray keeps pickles only in"):
        specfiles.read_spec(exp_dir, 1)
    assert not marker.exists()


def test_files_are_private_and_a_spec_is_never_overwritten(tmp_path):
    exp_dir = _exp_dir(tmp_path)
    spec = _build(exp_dir, _sft(formatting_func=lambda ex: ex["prompt"]))
    specfiles.write_spec(exp_dir, spec)
    specfiles.write_create_model_fn(exp_dir, default_create_model_fn)
    run_dir = ExperimentDir(exp_dir).run(1)
    for path in [run_dir.spec_file, function_file(run_dir.path, "formatting_func"),
                 ExperimentDir(exp_dir).model_fn_file]:  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in [run_dir.path, run_dir.functions_dir]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    before = run_dir.spec_file.read_bytes()
    other = _build(exp_dir, _sft(formatting_func=to_text))
    with pytest.raises(ConfigError, match="run 1 already has a spec"):
        specfiles.write_spec(exp_dir, other)
    assert run_dir.spec_file.read_bytes() == before
    assert not list(run_dir.path.glob(".tmp-*"))


def test_create_model_fn_by_reference_or_pickled(tmp_path):
    exp_dir = _exp_dir(tmp_path)
    specfiles.write_create_model_fn(exp_dir, default_create_model_fn)
    assert json.loads((exp_dir / "create_model_fn.json").read_text()) == {
        "import": "rf_ray.toy:default_create_model_fn"
    }
    assert specfiles.read_create_model_fn(exp_dir) is default_create_model_fn
    specfiles.write_create_model_fn(exp_dir, lambda cfg: ("model", "tokenizer"))
    assert specfiles.read_create_model_fn(exp_dir)(None) == ("model", "tokenizer")


def test_a_function_of_main_is_pickled_not_referenced():
    def fake():
        return 1

    fake.__module__ = "__main__"
    fake.__qualname__ = "fake"
    assert specfiles.import_reference(fake) is None
    assert specfiles.import_reference(to_text) == "tests.rf_ray.test_specfiles:to_text"


def test_built_in_metric_names_are_stored_by_name_not_pickled(tmp_path):
    """issue 21, item 9: ``eval_metrics_fn=["rougeL"]`` is data, not code (docs/security.md)."""
    from actors.engine.gen_eval import GenerationEval
    from rf_ray.metrics import FromComputeMetrics, MetricSet

    exp_dir = _exp_dir(tmp_path)
    names = _sft(generation_eval=GenerationEval(MetricSet(("rougeL", "bleu")), 3))
    specfiles.write_spec(exp_dir, _build(exp_dir, names))
    record = json.loads(ExperimentDir(exp_dir).run(1).spec_file.read_text())
    assert record["functions"]["generation_eval"] == {
        "metrics_fn": {"metrics": ["rougeL", "bleu"]},
        "num_prompts": 3,
        "prompts_fn": None,
    }
    assert not ExperimentDir(exp_dir).run(1).functions_dir.exists()
    read, _ = specfiles.read_spec(exp_dir, 1)
    assert read.model_config.generation_eval == names.generation_eval

    wrapped = GenerationEval(FromComputeMetrics(text_metrics), 2, prompt_of)
    specfiles.write_spec(exp_dir, _build(exp_dir, _sft(generation_eval=wrapped), run_id=2))
    record = json.loads(ExperimentDir(exp_dir).run(2).spec_file.read_text())
    assert record["functions"]["generation_eval"] == {
        "metrics_fn": {
            "from_compute_metrics": {"import": "tests.rf_ray.test_specfiles:text_metrics"}
        },
        "num_prompts": 2,
        "prompts_fn": {"import": "tests.rf_ray.test_specfiles:prompt_of"},
    }
    read, _ = specfiles.read_spec(exp_dir, 2)
    assert read.model_config.generation_eval == wrapped


def text_metrics(pair):
    """An importable RapidFire-style text metric."""
    predictions, references = pair
    return {"same": float(predictions == references)}


def prompt_of(row):
    """An importable eval_prompts_fn."""
    return row["prompt"], row["completion"]
