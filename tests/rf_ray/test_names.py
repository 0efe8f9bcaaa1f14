"""Experiment names are limited to a documented safe set, refused up front otherwise.

A name is a directory name, part of the scheduler's actor name and of the store's read-only
SQLite ``file:`` URI, where ``#``, ``?`` and ``%`` change the meaning (issue 12, item 11).
"""

from __future__ import annotations

import pytest

from policies.errors import ConfigError
from rf_ray import Experiment
from rf_ray.plan import NAME_MAX_LEN


@pytest.mark.parametrize(
    ("name", "needles"),
    [
        ("run#1", ["'#'", "letters, digits, '.', '_' and '-'", "'run-1'"]),
        ("what?", ["'?'", "'what-'"]),
        ("100%", ["'%'", "'100-'"]),
        ("my run", ["' '", "'my-run'"]),
        ("..", ["must start with a letter or digit"]),
        ("a/b", ["'/'", "experiment_path"]),
        ("-lead", ["must start with a letter or digit", "'lead'"]),
        ("", ["non-empty str"]),
        (7, ["non-empty str"]),
        ("x" * (NAME_MAX_LEN + 1), [f"{NAME_MAX_LEN + 1} characters", f"limit is {NAME_MAX_LEN}"]),
    ],
    ids=["hash", "question", "percent", "space", "dotdot", "slash", "dash", "empty", "int", "long"],
)
def test_a_name_outside_the_safe_set_is_refused_naming_what_is_wrong(tmp_path, name, needles):
    with pytest.raises(ConfigError) as excinfo:
        Experiment(name, experiment_path=tmp_path)
    message = str(excinfo.value)
    assert "experiment_name" in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["lr-sweep", "a", "Run_2.v1", "0", "x" * NAME_MAX_LEN])
def test_names_in_the_safe_set_are_accepted(tmp_path, name):
    exp = Experiment(name, experiment_path=tmp_path)
    assert exp.dir == (tmp_path / name).resolve()
