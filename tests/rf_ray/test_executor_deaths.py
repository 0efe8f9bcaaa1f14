"""Executor deaths are charged to the run in flight: a run whose code kills the executor
process (fault injection: ``os._exit`` in its formatting function, only inside the executor)
fails after two deaths on the same slice with an error that says so; the executor restarts
and the others go on.
"""

from __future__ import annotations

import pytest

from rf_ray import Experiment
from tests.rf_ray.test_deadlines import ROWS, exit_in_executor, faulty, fit, healthy

pytestmark = pytest.mark.slow


def test_a_run_that_kills_the_executor_fails_after_two_deaths(ray_cluster, tmp_path):
    exp = Experiment("deaths", experiment_path=tmp_path)
    info = fit(exp, [healthy(3e-3), faulty(exit_in_executor), healthy(3e-4)], None)
    bad = info.loc[2]
    assert bad["status"] == "failed", info[["status", "error"]]
    assert "the executor process died twice while this run's slice was in flight" in bad["error"]
    assert bad["failures"] == 2
    good = info.drop(index=2)
    assert (good["status"] == "completed").all(), info[["status", "error"]]
    assert good["error"].isna().all()
    assert (good["steps_done"] == ROWS // 4).all()
    assert (good["failures"] == 0).all()
