"""One record per run: ``RunEntry`` (the scheduler's ``RunRow`` extends it) round-trips through
the store's columns, status is one enum, and the store's progress columns are the entry's."""

from __future__ import annotations

from actors.messages import PROGRESS_COLUMNS, RunEntry
from actors.scheduler import RunRow
from actors.storage.store import RUN_FIELDS, Store
from policies.chunking import ChunkPlan
from policies.state import RunStatus

PLAN = ChunkPlan(num_examples=64, batch_size=4, grad_accum=1, num_chunks=4)


def test_an_entry_round_trips_through_the_store_and_its_row_is_the_entry(tmp_path):
    entry = RunEntry(
        3, PLAN.to_dict(), b"spec", {"lr": 1e-3}, {}, status="running", steps_done=6,
        pruned_at=None, error="boom", checkpoint="/c/step-6", mlflow_run_id="m1",
        last_metric=0.5, best_metric=0.4, failures=1,
    )  # fmt: skip
    assert entry.status is RunStatus.RUNNING  # a status string becomes the enum
    assert entry.plan == PLAN
    assert entry.chunks_done == 1
    with Store(tmp_path) as store:
        store.add_run(3, entry.params, "pending", PLAN.total_steps, PLAN.total_chunks)
        store.update_run(3, **entry.columns())
        row = store.run(3)
    fresh = RunEntry(3, PLAN, b"spec", {"lr": 1e-3}, {})
    back = fresh.with_columns(row, checkpoint="/c/other", chunk_steps=[{"step": 6.0}])
    assert back.columns() == {**entry.columns(), "checkpoint": "/c/other"}
    assert back.chunk_steps == [{"step": 6.0}]
    scheduler_row = RunRow.of(back)
    assert isinstance(scheduler_row, RunEntry)
    assert scheduler_row.columns() == back.columns()
    assert scheduler_row.chunk_steps is not back.chunk_steps  # its own copy
    assert set(PROGRESS_COLUMNS) | {"chunks_done"} <= set(RUN_FIELDS)
