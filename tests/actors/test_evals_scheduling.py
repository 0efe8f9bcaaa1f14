"""An evals API pipeline does not occupy its executor: the scheduler grants it beside the runs
that do (local pipelines, training runs), without waiting for them or holding them up."""

from __future__ import annotations

from actors.messages import RunEntry
from actors.scheduler import Grant, SchedulerCore
from policies.chunking import ChunkPlan
from policies.pruning import NoPruning

PLAN = ChunkPlan(num_examples=8, batch_size=1, grad_accum=1, num_chunks=2)


def _core(api_ids: set[int], runs: int = 3) -> SchedulerCore:
    core = SchedulerCore(NoPruning().with_defaults("Samples Processed", "max"))
    for rid in range(1, runs + 1):
        core.add_run(RunEntry(rid, PLAN.to_dict(), b"", {}, {}, exclusive=rid not in api_ids))
    return core


def test_an_api_pipeline_in_flight_does_not_hold_up_the_executor() -> None:
    core = _core(api_ids={1})
    api = core.grant_for(1)  # least progressed and first: goes, without taking the executor
    assert isinstance(api, Grant)
    local = core.grant_for(2)
    assert isinstance(local, Grant)
    assert core.grant_for(3) is None  # the executor itself is still one run at a time
    core.on_result(2, local.end_step, [], {"Samples Processed": 4.0})
    assert isinstance(core.grant_for(3), Grant)
    assert core.runs[1].in_flight  # the API pipeline's first shard is still waiting on its endpoint


def test_a_busy_executor_does_not_hold_up_an_api_pipeline() -> None:
    core = _core(api_ids={3})
    assert isinstance(core.grant_for(1), Grant)
    assert core.grant_for(2) is None
    api = core.grant_for(3)
    assert isinstance(api, Grant)
    core.on_result(3, api.end_step, [], {"Samples Processed": 4.0})
    second = core.grant_for(3)  # its next shard too: no executor slot is waited for
    assert isinstance(second, Grant)
    assert second.start_step == api.end_step
