"""``IntervalPruner``: a pipeline is dropped once its interval lies wholly below another's."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from policies import IntervalPruner, pruner_from_dict


def metrics(value: float, lower: float, upper: float, name: str = "acc") -> dict[str, float]:
    return {name: value, f"{name}/lower": lower, f"{name}/upper": upper}


def test_clearly_worse_is_pruned_overlapping_goes_on() -> None:
    p = IntervalPruner(metric="acc", mode="max")
    p.observe(1, 1, metrics(0.8, 0.7, 0.9))
    p.observe(2, 1, metrics(0.3, 0.2, 0.4))  # wholly below run 1
    p.observe(3, 1, metrics(0.65, 0.5, 0.75))  # overlaps run 1
    assert p.decide({1: 1, 2: 1, 3: 1}) == {2}
    assert p.decide({1: 1, 3: 1}) == set()  # nothing twice


def test_waits_until_every_live_run_has_the_shard() -> None:
    p = IntervalPruner(metric="loss", mode="min")
    p.observe(1, 1, metrics(1.0, 0.9, 1.1, "loss"))
    p.observe(2, 1, metrics(3.0, 2.9, 3.1, "loss"))
    assert p.decide({1: 1, 2: 1, 3: 0}) == set()
    p.observe(3, 1, metrics(1.05, 0.8, 1.3, "loss"))
    assert p.decide({1: 1, 2: 1, 3: 1}) == {2}


def test_late_comer_meets_the_intervals_recorded_before_and_state_round_trips() -> None:
    p = IntervalPruner(metric="acc", mode="max")
    p.observe(1, 1, metrics(0.8, 0.7, 0.9))
    p.observe(2, 1, metrics(0.75, 0.6, 0.85))
    assert p.decide({1: 1, 2: 1}) == set()
    p = pruner_from_dict(json.loads(json.dumps(p.to_dict())))
    assert isinstance(p, IntervalPruner)
    p.observe(9, 1, metrics(0.1, 0.0, 0.2))  # a clone scored after the comparison
    assert p.decide({1: 1, 2: 1, 9: 1}) == {9}


def test_missing_bounds_never_prune() -> None:
    p = IntervalPruner(metric="acc", mode="max")
    p.observe(1, 1, metrics(0.9, 0.85, 0.95))
    p.observe(2, 1, {"acc": 0.1})
    assert p.decide({1: 1, 2: 1}) == set()


intervals = st.tuples(st.floats(0, 1), st.floats(0, 1)).map(sorted)


@given(st.dictionaries(st.integers(1, 20), intervals, min_size=1, max_size=8))
def test_never_prunes_the_best_and_only_disjoint_ones(bounds: dict) -> None:
    p = IntervalPruner(metric="acc", mode="max")
    for run_id, (low, high) in bounds.items():
        p.observe(run_id, 1, metrics((low + high) / 2, low, high))
    pruned = p.decide(dict.fromkeys(bounds, 1))
    best_lower = max(low for low, _ in bounds.values())
    best = max(bounds, key=lambda r: bounds[r][0])
    assert best not in pruned
    assert pruned == {r for r, (_, high) in bounds.items() if high < best_lower}
