"""Slice order: least progress first, ties to the smaller run id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import next_run


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        ({}, None),
        ({5: 3}, 5),
        ({1: 2, 2: 0, 3: 1}, 2),
        ({9: 1, 4: 1, 7: 1}, 4),
        ({0: 4, 10: 0, 3: 0}, 3),
    ],
)
def test_next_run(candidates: dict[int, int], expected: int | None) -> None:
    assert next_run(candidates) == expected


@given(st.dictionaries(st.integers(0, 1000), st.integers(0, 50), min_size=1))
def test_picks_least_progress_then_smallest_id(candidates: dict[int, int]) -> None:
    chosen = next_run(candidates)
    assert chosen in candidates
    assert all(candidates[chosen] <= done for done in candidates.values())
    assert all(
        run > chosen
        for run, done in candidates.items()
        if done == candidates[chosen] and run != chosen
    )


@given(st.integers(1, 8), st.integers(1, 5))
def test_round_robin_brings_every_run_to_each_chunk_together(n_runs: int, chunks: int) -> None:
    done = dict.fromkeys(range(n_runs), 0)
    order = []
    while (run := next_run({r: c for r, c in done.items() if c < chunks})) is not None:
        order.append(run)
        done[run] += 1
    # Every run trains chunk k before any run trains chunk k+1, in run-id order.
    assert order == list(range(n_runs)) * chunks
