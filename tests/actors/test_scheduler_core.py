"""The scheduler's run table and grant logic, without Ray."""

from __future__ import annotations

import math

import pytest

from actors.messages import RunEntry
from actors.scheduler import MAX_TRIAL_RESTARTS, Grant, SchedulerCore
from policies.chunking import ChunkPlan
from policies.pruning import NoPruning, SuccessiveHalving
from policies.state import RunStatus


def _core(n_runs=4, pruner=None, chunks=4, **kw):
    core = SchedulerCore(pruner or NoPruning().with_defaults("train_loss", "min"), **kw)
    for rid in range(1, n_runs + 1):
        core.add_run(
            _entry(rid, ChunkPlan(num_examples=64, batch_size=4, grad_accum=1, num_chunks=chunks))
        )
    return core


def _entry(rid, plan, **kw):
    return RunEntry(rid, plan.to_dict(), b"", {}, {}, **kw)


def _step(loss, step=1):
    return [{"step": step, "loss": loss}]


def _drive(core, loss_of):
    """Grant and complete slices until done; return the order of granted run ids."""
    order = []
    while not core.done():
        granted = [g for rid in sorted(core.runs) if isinstance(g := core.grant_for(rid), Grant)]
        assert len(granted) == 1, "one executor: exactly one grant at a time"
        g = granted[0]
        order.append(g.run_id)
        core.on_result(g.run_id, g.end_step, _step(loss_of(g.run_id)), None)
    return order


def test_least_progress_first_gives_every_run_a_chunk_before_any_second():
    core = _core(4)
    order = _drive(core, lambda rid: 1.0)
    assert order[:4] == [1, 2, 3, 4]
    assert order[4:8] == [1, 2, 3, 4]
    assert all(r.status is RunStatus.COMPLETED for r in core.runs.values())


def test_only_one_grant_while_the_executor_is_busy():
    core = _core(3)
    first = core.grant_for(1)
    assert isinstance(first, Grant)
    assert core.grant_for(2) is None
    assert core.grant_for(3) is None


def test_successive_halving_keeps_ceil_n_over_eta_per_rung():
    pruner = SuccessiveHalving(eta=2).with_defaults("train_loss", "min")
    core = _core(8, pruner=pruner)
    order = _drive(core, lambda rid: float(rid))  # lower id = better
    status = {rid: r.status for rid, r in core.runs.items()}
    # 8 -> 4 after chunk 1 -> 2 after chunk 2; the two best run to the end.
    assert [rid for rid, s in status.items() if s is RunStatus.COMPLETED] == [1, 2]
    pruned_at = {rid: core.runs[rid].pruned_at for rid in status if status[rid] is RunStatus.PRUNED}
    assert pruned_at == {5: 1, 6: 1, 7: 1, 8: 1, 3: 2, 4: 2}
    # slices granted: 8 at rung 1, 4 at rung 2, then 2 runs x 2 chunks
    assert len(order) == 8 + 4 + 2 * 2


def test_failure_marks_only_that_run_and_frees_the_executor():
    core = _core(3)
    g = core.grant_for(1)
    core.on_failure(1, "RuntimeError: boom")
    assert core.runs[1].status is RunStatus.FAILED
    assert core.runs[1].error.startswith("Runtime")
    assert isinstance(core.grant_for(2), Grant)
    assert core.grant_for(1) is RunStatus.FAILED
    assert g.run_id == 1


def test_chunk_metrics_are_means_of_step_metrics():
    core = _core(1, chunks=4)
    g = core.grant_for(1)
    steps = [
        {"step": i + 1, "loss": v, "mean_token_accuracy": a}
        for i, (v, a) in enumerate([(2.0, 0.1), (4.0, 0.3), (3.0, 0.2), (1.0, 0.4)])
    ]
    closed, _ = core.on_result(1, g.end_step, steps[: g.end_step], {"eval_loss": 0.5})
    assert closed is not None
    chunk, metrics = closed
    assert chunk == 1
    assert metrics["eval_loss"] == 0.5
    assert math.isclose(metrics["train_loss"], 2.5)
    assert math.isclose(metrics["mean_token_accuracy"], 0.25)


@pytest.mark.parametrize("max_slice_steps", [1, 3])
def test_slices_are_bounded_in_optimizer_steps(max_slice_steps):
    core = _core(1, max_slice_steps=max_slice_steps)
    ends = []
    while not core.done():
        g = core.grant_for(1)
        ends.append(g.end_step)
        core.on_result(1, g.end_step, _step(1.0, g.end_step), None)
    steps = [b - a for a, b in zip([0, *ends], ends)]
    assert max(steps) <= max_slice_steps
    assert ends[-1] == 16


def test_two_executors_both_work_and_runs_stay_where_their_adapter_lives():
    core = _core(4, num_executors=2)
    placed: dict[int, set[int]] = {rid: set() for rid in core.runs}
    while not core.done():
        grants = [g for rid in sorted(core.runs) if isinstance(g := core.grant_for(rid), Grant)]
        assert len(grants) <= 2
        assert len({g.executor for g in grants}) == len(grants)  # one slice per executor
        for g in grants:
            placed[g.run_id].add(g.executor)
        for g in grants:
            core.on_result(g.run_id, g.end_step, _step(1.0, g.end_step), None)
    assert {e for es in placed.values() for e in es} == {0, 1}
    assert all(len(es) == 1 for es in placed.values()), placed  # nobody moved


def test_an_idle_executor_takes_a_run_whose_executor_is_busy():
    core = _core(2, num_executors=2)
    core.runs[1].executor = core.runs[2].executor = 0  # both adapters live on executor 0
    first = core.grant_for(1)
    assert isinstance(first, Grant)
    assert first.executor == 0
    second = core.grant_for(2)  # executor 0 is busy: executor 1 would idle, so run 2 moves
    assert isinstance(second, Grant)
    assert second.executor == 1


def _fusing_core(n_runs, keys=None, tokens=100, **fusion):
    from policies.fusion import FusionPolicy

    core = SchedulerCore(
        NoPruning().with_defaults("train_loss", "min"), fusion=FusionPolicy(**fusion)
    )
    for rid in range(1, n_runs + 1):
        key = keys[rid - 1] if keys else "toy|SFT"
        plan = ChunkPlan(num_examples=64, batch_size=4, grad_accum=1, num_chunks=4)
        core.add_run(_entry(rid, plan, fusion_key=key, fusion_tokens=tokens))
    return core


def _ask_all(core, first):
    """Every other run's trial asks (and is told to wait), then ``first`` asks."""
    for rid in sorted(core.runs):
        if rid != first:
            assert not isinstance(core.grant_for(rid), Grant)
    return core.grant_for(first)


def test_a_fused_grant_hands_every_member_its_own_grant():
    core = _fusing_core(4, max_runs=3)
    first = _ask_all(core, 1)
    assert isinstance(first, Grant)
    assert first.group == (1, 2, 3)
    # Members pick up their grants (same executor, their own end step); run 4 waits.
    second, third = core.grant_for(2), core.grant_for(3)
    assert (second.group, second.executor, second.end_step) == ((1, 2, 3), 0, 4)
    assert third.run_id == 3
    assert core.grant_for(4) is None
    # The executor stays busy until the whole group has reported.
    core.on_result(1, 4, _step(1.0), None)
    core.on_result(2, 4, _step(1.0), None)
    assert core.grant_for(4) is None
    core.on_result(3, 4, _step(1.0), None)
    fourth = core.grant_for(4)
    assert fourth.group == (4,)  # runs 1-3 are a chunk ahead: not at run 4's rung


def test_unfusable_runs_and_fusion_off_are_time_sliced():
    core = _fusing_core(3, keys=[None, "toy|SFT", "toy|SFT"])
    assert _ask_all(core, 1).group == (1,)
    off = _core(3)  # no FusionPolicy
    assert off.grant_for(1).group == (1,)


def test_an_op_on_a_member_applies_at_the_slice_boundary():
    core = _fusing_core(3)
    grant = _ask_all(core, 1)
    assert grant.group == (1, 2, 3)
    core.apply_op("stop", 2)  # before run 2's trial picked its grant up
    assert core.grant_for(2).run_id == 2  # it trains this slice, as an in-flight run would
    core.on_result(1, 4, _step(1.0), None)
    core.on_result(2, 4, _step(1.0), None)
    core.on_result(3, 4, _step(1.0), None)
    assert core.runs[2].status is RunStatus.STOPPED
    assert _ask_all(core, 1).group == (1, 3)  # the next group goes on without it


def test_out_of_memory_halves_the_token_budget():
    core = _fusing_core(4, tokens=100, max_tokens=1000)
    assert _ask_all(core, 1).group == (1, 2, 3, 4)
    for rid in (2, 3, 4):
        core.grant_for(rid)
    core.on_fusion_oom(400)
    assert core.fusion.max_tokens == 200
    for rid in (1, 2, 3, 4):
        core.on_result(rid, 4, _step(1.0), None)
    assert _ask_all(core, 1).group == (1, 2)


def test_only_runs_whose_trials_are_up_join_a_group():
    core = _fusing_core(3)
    assert core.grant_for(3) is None  # run 3's trial asked; run 2's has not yet (still starting)
    assert core.grant_for(1).group == (1, 3)


# --------------------------------------------------------------------------- executor deaths


def test_an_uncharged_loss_hands_the_slice_back_unchanged():
    core = _core(2)
    g = core.grant_for(1)
    assert core.on_lost(1) is None
    assert core.runs[1].failures == 0
    assert core.runs[1].status is RunStatus.RUNNING
    again = core.grant_for(1)
    assert (again.start_step, again.end_step) == (g.start_step, g.end_step)


def test_the_second_charged_death_fails_the_run_and_only_it():
    core = _core(2)
    core.grant_for(1)
    assert core.on_lost(1, "ActorDiedError: gone") is None
    assert core.runs[1].status is RunStatus.RUNNING
    core.grant_for(1)
    assert core.on_lost(1, "ActorDiedError: gone again") is not None
    row = core.runs[1]
    assert row.status is RunStatus.FAILED
    assert row.error == (
        "the executor process died twice while this run's slice was in flight, with no slice "
        "of it completing in between: ActorDiedError: gone again"
    )
    assert isinstance(core.grant_for(2), Grant)


def test_a_recorded_slice_clears_the_charges_so_deaths_at_different_slices_never_add_up():
    core = _core(1)
    for _ in range(3):  # three deaths in all, each on another slice of run 1 (kills from outside)
        lost = core.grant_for(1)
        assert core.on_lost(1, "ActorDiedError: killed") is None
        assert core.runs[1].failures == 1
        g = core.grant_for(1)  # the same slice, re-run after the restart, goes through
        assert (g.start_step, g.end_step) == (lost.start_step, lost.end_step)
        core.on_result(1, g.end_step, _step(1.0), None)
        assert core.runs[1].failures == 0
        assert core.runs[1].status is RunStatus.RUNNING
    core.grant_for(1)
    assert core.on_lost(1, "ActorDiedError: killed") is None  # one charge again, not four


def test_a_recorded_slice_clears_the_trial_restarts_too():
    core = _core(1, chunks=MAX_TRIAL_RESTARTS + 2)  # one slice per chunk
    for _ in range(MAX_TRIAL_RESTARTS + 2):  # more trial deaths than restarts, each on a new slice
        core.grant_for(1)
        assert core.on_trial_lost(1, "ActorDiedError: trial killed") == (True, set())
        g = core.grant_for(1)  # the new trial's grant goes through
        core.on_result(1, g.end_step, _step(1.0), None)
        assert core.runs[1].trial_restarts == 0
    assert core.runs[1].status is RunStatus.COMPLETED
    assert core.runs[1].error is None


def test_a_dead_trial_is_restarted_with_the_same_grant_until_its_restarts_run_out():
    core = _core(2)
    g = core.grant_for(1)
    for restart in range(1, MAX_TRIAL_RESTARTS + 1):
        assert core.on_trial_lost(1, "ActorDiedError: trial gone") == (True, set())
        assert core.runs[1].trial_restarts == restart
        again = core.grant_for(1)  # the new trial's grant: the same slice
        assert (again.start_step, again.end_step) == (g.start_step, g.end_step)
    restart, pruned = core.on_trial_lost(1, "ActorDiedError: trial gone")
    assert (restart, pruned) == (False, set())
    assert core.runs[1].status is RunStatus.FAILED
    assert core.runs[1].error == (
        f"the run's trial actor died {MAX_TRIAL_RESTARTS + 1} times (restarted "
        f"{MAX_TRIAL_RESTARTS} times); last: ActorDiedError: trial gone"
    )
    assert isinstance(core.grant_for(2), Grant)  # the others go on


def test_a_dead_trial_of_a_run_that_is_over_is_not_restarted():
    core = _core(2)
    core.grant_for(1)
    core.apply_op("stop", 1)  # takes effect at the slice boundary; the slice is in flight
    assert core.on_trial_lost(1, "gone") == (False, set())
    assert not core.runs[1].in_flight
    assert core.runs[1].status is RunStatus.STOPPED


def test_grants_carry_the_deadline_and_the_chunk():
    core = SchedulerCore(NoPruning().with_defaults("train_loss", "min"), deadline_s=12.5)
    core.add_run(_entry(1, ChunkPlan(num_examples=64, batch_size=4, grad_accum=1, num_chunks=4)))
    g = core.grant_for(1)
    assert (g.deadline_s, g.chunk) == (12.5, 1)


# --------------------------------------------------------------------------- resumed runs


def test_a_resumed_run_closes_its_partial_chunk_as_an_uninterrupted_one():
    plan = ChunkPlan(num_examples=64, batch_size=4, grad_accum=1, num_chunks=4)  # 4 steps/chunk
    losses = [4.0, 3.0, 2.0, 1.0, 0.5, 0.25]
    whole = SchedulerCore(NoPruning().with_defaults("train_loss", "min"), max_slice_steps=1)
    whole.add_run(_entry(1, plan))
    for i, loss in enumerate(losses):
        g = whole.grant_for(1)
        whole.on_result(1, g.end_step, [{"step": i + 1, "loss": loss}], None)
    # The driver died after step 6: the run's record is rebuilt from the store.
    row = whole.runs[1]
    resumed = SchedulerCore(NoPruning().with_defaults("train_loss", "min"), max_slice_steps=1)
    resumed.add_run(
        _entry(
            1,
            plan,
            status="running",
            steps_done=6,
            last_metric=row.last_metric,
            best_metric=row.best_metric,
            chunk_steps=list(row.chunk_steps),
        )
    )
    for core in (whole, resumed):
        for step, loss in ((7, 0.2), (8, 0.1)):
            g = core.grant_for(1)
            core.on_result(1, g.end_step, [{"step": step, "loss": loss}], None)
    a, b = whole.runs[1], resumed.runs[1]
    assert (a.last_metric, a.best_metric, a.chunks_done) == (b.last_metric, b.best_metric, 2)
    assert math.isclose(b.last_metric, (0.5 + 0.25 + 0.2 + 0.1) / 4)
