"""Chunk plans against a step-by-step re-enactment of Hugging Face Trainer's data loop."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import ChunkPlan, epoch_order
from policies.errors import ConfigError


def reference_steps(plan: ChunkPlan, seed: int) -> list[list[list[int]]]:
    """Every optimizer step of the run as its micro-batches, built the naive way.

    An epoch's dataloader yields batches of ``b`` positions of the shuffled order (the short last
    one dropped with drop_last); the trainer groups them ``g`` at a time into optimizer steps.
    """
    n, b, g = plan.num_examples, plan.batch_size, plan.grad_accum
    steps: list[list[list[int]]] = []
    per_epoch: int | None = None
    epoch = 0
    while True:
        order = epoch_order(n, seed, epoch)
        batches = [order[i : i + b] for i in range(0, n, b)]
        if plan.drop_last and len(batches[-1]) < b:
            batches.pop()
        epoch_steps = [batches[i : i + g] for i in range(0, len(batches), g)]
        per_epoch = per_epoch or max(len(epoch_steps), 1)
        total = (
            plan.max_steps if plan.max_steps > 0 else math.ceil(plan.num_train_epochs * per_epoch)
        )
        for step in epoch_steps:
            if len(steps) == total:
                return steps
            steps.append(step)
        if len(steps) == total:
            return steps
        epoch += 1


def reference_chunks(plan: ChunkPlan) -> list[tuple[int, int]]:
    """Chunk bounds by walking epochs: K near-equal slices of S steps each, cut at the total."""
    s, k, total = plan.steps_per_epoch, plan.num_chunks, plan.total_steps
    sizes = [len(range(s)[i * s // k : (i + 1) * s // k]) for i in range(k)]
    chunks, start = [], 0
    while start < total:
        for size in sizes:
            if start >= total:
                break
            chunks.append((start, min(start + size, total)))
            start += size
    return chunks


@st.composite
def plans(draw: st.DrawFn) -> ChunkPlan:
    n = draw(st.integers(1, 60))
    b = draw(st.integers(1, 8))
    g = draw(st.integers(1, 4))
    drop_last = draw(st.booleans()) and n >= b
    batches = n // b if drop_last else math.ceil(n / b)
    steps = max(math.ceil(batches / g), 1)
    k = draw(st.integers(1, steps))
    if draw(st.booleans()):
        return ChunkPlan(n, b, g, k, max_steps=draw(st.integers(1, 40)), drop_last=drop_last)
    epochs = draw(st.sampled_from([0.3, 0.5, 1.0, 1.5, 2.0, 3.0]))
    return ChunkPlan(n, b, g, k, num_train_epochs=epochs, drop_last=drop_last)


@pytest.mark.parametrize(
    ("n", "b", "g", "drop_last", "batches", "steps"),
    [
        (40, 4, 2, False, 10, 5),
        (41, 4, 2, False, 11, 6),
        (41, 4, 2, True, 10, 5),
        (3, 8, 1, False, 1, 1),
        (10, 1, 4, False, 10, 3),
        (7, 2, 8, False, 4, 1),
    ],
)
def test_step_accounting_matches_trainer(
    n: int, b: int, g: int, drop_last: bool, batches: int, steps: int
) -> None:
    plan = ChunkPlan(n, b, g, 1, drop_last=drop_last)
    assert plan.batches_per_epoch == batches
    assert plan.steps_per_epoch == steps


@pytest.mark.parametrize(
    ("epochs", "max_steps", "total"), [(1.0, -1, 5), (2.5, -1, 13), (0.3, -1, 2), (3.0, 7, 7)]
)
def test_total_steps(epochs: float, max_steps: int, total: int) -> None:
    assert ChunkPlan(40, 4, 2, 5, num_train_epochs=epochs, max_steps=max_steps).total_steps == total


@given(plans(), st.integers(0, 3))
def test_microbatches_match_reference(plan: ChunkPlan, seed: int) -> None:
    reference = reference_steps(plan, seed)
    assert len(reference) == plan.total_steps
    assert [plan.step_microbatches(s, seed) for s in range(plan.total_steps)] == reference


@given(plans(), st.integers(0, 3))
def test_every_example_once_per_full_epoch(plan: ChunkPlan, seed: int) -> None:
    full_epochs = plan.total_steps // plan.steps_per_epoch
    kept = plan.batches_per_epoch * plan.batch_size if plan.drop_last else plan.num_examples
    for epoch in range(full_epochs):
        seen = Counter(
            i
            for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
            for batch in plan.step_microbatches(step, seed)
            for i in batch
        )
        assert set(seen.values()) == {1}
        assert len(seen) == kept
        assert seen.keys() <= set(range(plan.num_examples))


@given(plans())
def test_chunks_match_reference_and_tile_the_run(plan: ChunkPlan) -> None:
    bounds = [plan.chunk_bounds(c) for c in range(plan.total_chunks)]
    assert bounds == reference_chunks(plan)
    assert bounds[0][0] == 0
    assert bounds[-1][1] == plan.total_steps
    assert all(start < end for start, end in bounds)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(bounds))
    # A chunk never crosses an epoch boundary.
    epoch = plan.steps_per_epoch
    assert all(start // epoch == (end - 1) // epoch for start, end in bounds)


@given(plans())
def test_chunks_done_counts_finished_chunks(plan: ChunkPlan) -> None:
    ends = [plan.chunk_bounds(c)[1] for c in range(plan.total_chunks)]
    previous = 0
    for steps in range(plan.total_steps + 3):
        done = plan.chunks_done(steps)
        assert done == sum(end <= steps for end in ends)
        assert done >= previous
        previous = done
    assert plan.chunks_done(plan.total_steps) == plan.total_chunks


@given(st.integers(1, 30), st.integers(1, 5), st.integers(1, 60))
def test_max_steps_stops_the_run(n: int, b: int, max_steps: int) -> None:
    plan = ChunkPlan(n, b, 1, 1, num_train_epochs=100.0, max_steps=max_steps)
    assert plan.total_steps == max_steps
    assert plan.chunk_bounds(plan.total_chunks - 1)[1] == max_steps
    with pytest.raises(ConfigError, match="global_step"):
        plan.step_microbatches(max_steps, seed=0)


def test_chunks_are_balanced_within_an_epoch() -> None:
    plan = ChunkPlan(40, 4, 2, 2, num_train_epochs=2.0)  # 5 steps per epoch, 2 chunks
    assert [plan.chunk_bounds(c) for c in range(plan.total_chunks)] == [
        (0, 2),
        (2, 5),
        (5, 7),
        (7, 10),
    ]


@given(st.integers(0, 200), st.integers(0, 10**6), st.integers(0, 5))
def test_epoch_order_is_a_permutation(n: int, seed: int, epoch: int) -> None:
    order = epoch_order(n, seed, epoch)
    assert sorted(order) == list(range(n))
    assert order == epoch_order(n, seed, epoch)


def test_epoch_order_differs_per_epoch_and_seed() -> None:
    base = epoch_order(50, 1, 0)
    assert base != epoch_order(50, 1, 1)
    assert base != epoch_order(50, 2, 0)


def test_epoch_order_is_stable_across_processes() -> None:
    # A fresh interpreter gets a different hash() salt; the order must not change with it.
    code = "from policies import epoch_order; print(epoch_order(20, 3, 1))"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": salt},
        ).stdout.strip()
        for salt in ("1", "2")
    }
    assert outputs == {str(epoch_order(20, 3, 1))}


@given(plans())
def test_dict_round_trip(plan: ChunkPlan) -> None:
    again = ChunkPlan.from_dict(plan.to_dict())
    assert again == plan
    assert again.total_chunks == plan.total_chunks


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_examples": 0}, "num_examples=0.*empty"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"grad_accum": 0}, "grad_accum=0"),
        ({"num_chunks": 0}, "num_chunks=0"),
        ({"num_chunks": 8}, r"num_chunks=8 is more than the 5 effective batches.*num_chunks <= 5"),
        ({"num_train_epochs": 0.0}, "num_train_epochs=0.0"),
        ({"num_train_epochs": -1.0}, "num_train_epochs=-1.0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"drop_last": True, "num_examples": 3}, "drop_last=True"),
    ],
)
def test_bad_plans_raise_config_error_naming_the_field(kwargs: dict, match: str) -> None:
    args = {"num_examples": 40, "batch_size": 4, "grad_accum": 2, "num_chunks": 5, **kwargs}
    with pytest.raises(ConfigError, match=match):
        ChunkPlan(**args)


def test_epochs_are_ignored_when_max_steps_is_set() -> None:
    assert ChunkPlan(40, 4, 2, 5, num_train_epochs=0.0, max_steps=3).total_steps == 3


@pytest.mark.parametrize("chunk", [-1, 5])
def test_chunk_out_of_range(chunk: int) -> None:
    with pytest.raises(ConfigError, match=f"chunk={chunk}"):
        ChunkPlan(40, 4, 2, 5).chunk_bounds(chunk)


def test_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        ChunkPlan.from_dict({**ChunkPlan(40, 4, 2, 5).to_dict(), "bogus": 1})
