"""Start-up overlaps: the first slice starts as soon as one trial is up.

Time-sliced, the first run whose trial asks is granted even though a lower-numbered run's trial
has not asked yet (it is still starting). After that first grant, least progress first over
every live run, ties by run id (``policies.order.next_run``), holds as before. Runs that may fuse
wait for the least-progressed one from the start, so a fused group forms whole
(tests/actors/test_scheduler_core.py holds that)."""

from __future__ import annotations

from actors.scheduler import Grant
from tests.actors.test_scheduler_core import _core


def test_the_first_trial_up_trains_without_waiting_for_the_others():
    core = _core(3)
    first = core.grant_for(3)  # runs 1 and 2 have not asked yet: their trials are starting
    assert isinstance(first, Grant)
    assert first.run_id == 3


def test_after_the_first_grant_least_progress_first_holds():
    core = _core(3)
    first = core.grant_for(3)
    assert isinstance(first, Grant)
    core.on_result(3, first.end_step, [{"step": 1, "loss": 1.0}], None)
    assert core.grant_for(3) is None  # runs 1 and 2 are behind: they go first
    assert core.grant_for(2) is None  # ... lower run id first, even before its trial asked
    second = core.grant_for(1)
    assert isinstance(second, Grant)
    assert second.run_id == 1
