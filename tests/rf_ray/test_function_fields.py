"""Clone changes that are not functions for function fields are refused with a ``ConfigError``
before any run is added (issue 21, item 4): from Python (``ops.modified``, the one path of every
clone) and from the command line (before any process starts). The page's answer (400) is in
``test_dashboard_limits.py``; a clone refused on a running experiment adds no run
(``test_steering.py``).

Before, ``formatting_func="f"`` and ``compute_metrics="x"`` made a run that failed later
(``'str' object is not callable``) and ``reward_funcs="x"`` raised a ``TypeError`` (a 500 on the
page).
"""

from __future__ import annotations

import inspect

import pytest

from policies.errors import ConfigError
from rf_ray import RFModelConfig, cli, ops
from rf_ray.specs import RunConfig
from rf_ray.toy import TOY_MODEL_NAME

SFT = RunConfig(model_name=TOY_MODEL_NAME, training_args={"learning_rate": 1e-3})
GRPO = RunConfig(model_name=TOY_MODEL_NAME, trainer_type="GRPO", reward_funcs=[len])


def test_function_fields_are_found_from_the_config_class():
    annotated = {
        name
        for name, p in inspect.signature(RFModelConfig.__init__).parameters.items()
        if "Callable" in str(p.annotation)
    }
    assert set(ops.function_fields()) == annotated
    assert {"formatting_func", "compute_metrics", "reward_funcs", "eval_metrics_fn"} <= annotated


@pytest.mark.parametrize(
    ("run", "field", "value"),
    [(SFT, "formatting_func", "my_module:fmt"), (SFT, "compute_metrics", "accuracy"),
     (GRPO, "reward_funcs", "my_reward"), (GRPO, "reward_funcs", ["my_reward"]),
     (GRPO, "reward_funcs", []), (SFT, "formatting_func", 3),
     (SFT, "eval_metrics_fn", "rougeL"), (SFT, "eval_prompts_fn", print)],
)  # fmt: skip
def test_a_function_field_that_is_not_a_function_is_a_config_error(run, field, value):
    with pytest.raises(ConfigError) as excinfo:
        ops.modified(run, {field: value})
    assert f"changes[{field!r}]" in str(excinfo.value)


def test_the_nested_form_is_checked_too():
    with pytest.raises(ConfigError, match="formatting_func"):
        ops.modified(SFT, {"training_args": {"formatting_func": "fmt"}})


def test_functions_are_still_accepted_from_python():
    def fmt(example):
        return example["text"]

    assert ops.modified(SFT, {"formatting_func": fmt}).formatting_func is fmt
    assert ops.modified(SFT, {"formatting_func": None}).formatting_func is None
    assert ops.modified(GRPO, {"reward_funcs": [len, abs]}).reward_funcs == [len, abs]


def test_the_command_line_refuses_text_for_a_function_before_anything_starts(tmp_path, capsys):
    argv = ["ops", "clone", "nowhere", "1", "reward_funcs=my_reward", "--path", str(tmp_path)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "reward_funcs" in err
    assert "clone from Python" in err


def test_brackets_copied_from_a_usage_line_say_what_they_mean(tmp_path, capsys):
    argv = [
        "ops",
        "clone",
        "x",
        "2",
        "learning_rate=1e-4",
        "[--warm-start]",
        "--path",
        str(tmp_path),
    ]
    assert cli.main(argv) == 2
    assert "type --warm-start without them" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["formatting_func", "compute_metrics"])
def test_a_run_built_by_hand_with_text_for_a_function_is_refused(field):
    """``Experiment.add_runs`` takes ``RunConfig``s built by hand: one holding text for a
    function was stored (the text pickled) and failed at its first slice."""
    with pytest.raises(TypeError, match=f"{field} must be a callable or None, got 'my_fn'"):
        RunConfig(model_name=TOY_MODEL_NAME, **{field: "my_fn"})
