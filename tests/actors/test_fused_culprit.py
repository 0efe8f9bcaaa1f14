"""A fused pass that hangs or loses its executor charges none of its members: each re-runs its
slice alone, where a hang or a death is its own (``SchedulerCore.on_lost``), so only the
culprit fails and the others fuse again once they have recorded a slice. Without Ray; the end
to end test with real actors and GRPO reward functions is ``tests/rf_ray/test_fused_faults.py``.
"""

from __future__ import annotations

from actors.scheduler import Grant
from policies.state import RunStatus
from tests.actors.test_scheduler_core import _ask_all, _fusing_core, _step

LOST = "ActorDiedError: the fused pass died"


def _lose_group(core, group):
    for rid in group:
        if rid != group[0]:
            assert core.grant_for(rid).group == group
    for rid in group:
        assert core.on_lost(rid, LOST) is None


def test_a_lost_fused_pass_charges_no_member_and_each_re_runs_alone():
    core = _fusing_core(3)
    grant = _ask_all(core, 1)
    assert grant.group == (1, 2, 3)
    _lose_group(core, grant.group)
    for rid in (1, 2, 3):
        row = core.runs[rid]
        assert (row.failures, row.status, row.alone_after) == (0, RunStatus.RUNNING, (1, 2, 3))
    # Each member re-runs the same slice alone, one at a time (least progress first).
    alone = _ask_all(core, 1)
    assert (alone.group, alone.start_step, alone.end_step) == ((1,), 0, 4)
    assert core.grant_for(2) is None  # the executor is busy with run 1's slice alone
    core.on_result(1, 4, _step(1.0), None)
    assert not core.runs[1].alone_after  # its slice went through: it may fuse again


def test_the_culprit_alone_is_charged_and_fails_the_others_go_on_and_fuse_again():
    core = _fusing_core(3)
    _lose_group(core, _ask_all(core, 1).group)
    core.on_result(1, core.grant_for(1).end_step, _step(1.0), None)
    # Run 2 kills the executor again on its own: charged, twice, then failed.
    assert core.grant_for(2).group == (2,)
    assert core.on_lost(2, "ActorDiedError: again") is None
    assert core.runs[2].failures == 1
    assert core.grant_for(2).group == (2,)
    assert core.on_lost(2, "ActorDiedError: again") is not None
    assert core.runs[2].status is RunStatus.FAILED
    assert core.runs[2].error.startswith("the executor process died twice")
    assert core.runs[2].error.endswith(
        "(this slice ran alone after the fused pass of runs [1, 2, 3] did not finish: the fault "
        "is this run's own)"
    )
    third = core.grant_for(3)
    assert third.group == (3,)
    core.on_result(3, third.end_step, _step(1.0), None)
    # The healthy runs share a pass again from their next slice on.
    nxt = _ask_all(core, 1)
    assert isinstance(nxt, Grant)
    assert nxt.group == (1, 3)
    assert [core.runs[r].failures for r in (1, 3)] == [0, 0]


def test_an_uncharged_loss_of_a_fused_pass_keeps_the_group():
    """The executor found dead before the runs' calls ran: nobody's code did it."""
    core = _fusing_core(2)
    grant = _ask_all(core, 1)
    core.grant_for(2)
    for rid in grant.group:
        assert core.on_lost(rid) is None
    assert core.runs[1].alone_after == core.runs[2].alone_after == ()
    assert _ask_all(core, 1).group == (1, 2)
