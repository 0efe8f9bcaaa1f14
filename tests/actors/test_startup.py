"""Start-up overlaps: the first slice starts as soon as one trial is up.

Time-sliced, a run whose trial asks first is granted even though a lower-numbered run's trial
has not asked yet (it is still starting); once every trial is up, least progress first, ties by
run id, holds as before. Runs that may fuse still wait for the least-progressed one, so a fused
group forms whole (tests/actors/test_scheduler_core.py holds that)."""

from __future__ import annotations

from actors.scheduler import Grant
from tests.actors.test_scheduler_core import _core


def test_the_first_trial_up_trains_without_waiting_for_the_others():
    core = _core(3)
    first = core.grant_for(3)  # runs 1 and 2 have not asked yet: their trials are starting
    assert isinstance(first, Grant)
    assert first.run_id == 3
    core.on_result(3, first.end_step, [{"step": 1, "loss": 1.0}], None)
    second = core.grant_for(2)  # up now, and less progressed than run 3
    assert isinstance(second, Grant)
    assert second.run_id == 2
    core.on_result(2, second.end_step, [{"step": 1, "loss": 1.0}], None)
    assert core.grant_for(3) is None  # a tie with run 2 (up): the lower id goes first


def test_once_every_trial_is_up_least_progress_first_holds():
    core = _core(3)
    for rid in (3, 2):
        grant = core.grant_for(rid)
        assert isinstance(grant, Grant)
        core.on_result(rid, grant.end_step, [{"step": 1, "loss": 1.0}], None)
    third = core.grant_for(1)  # the last trial up, and the least progressed
    assert isinstance(third, Grant)
    assert third.run_id == 1
    core.on_result(1, third.end_step, [{"step": 1, "loss": 1.0}], None)
    # All up, all one chunk in: ties go by run id again.
    assert core.grant_for(3) is None
    assert core.grant_for(2) is None
    assert isinstance(core.grant_for(1), Grant)
