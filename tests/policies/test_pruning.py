"""Pruners: successive halving, ASHA, threshold and median rules, driven by plain records."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import (
    ASHA,
    MedianStopping,
    NoPruning,
    Pruner,
    SuccessiveHalving,
    ThresholdPruner,
    next_run,
    pruner_from_dict,
)
from policies.errors import ConfigError

values = st.floats(-10, 10, allow_nan=False)
maybe_values = st.one_of(st.none(), values, st.just(math.nan))
modes = st.sampled_from(["min", "max"])


def score(value: float, mode: str) -> float:
    """Lower is better; NaN is worst."""
    if math.isnan(value):
        return math.inf
    return value if mode == "min" else -value


def report_all(pruner: Pruner, chunk: int, vals: dict[int, float | None]) -> dict[int, int]:
    for run_id, value in vals.items():
        pruner.record(run_id, chunk, value)
    return dict.fromkeys(vals, chunk)


def round_trip(pruner: Pruner) -> Pruner:
    return pruner_from_dict(json.loads(json.dumps(pruner.to_dict())))


# Successive halving ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "vals", "pruned"),
    [
        ("min", {1: 0.5, 2: 0.1, 3: 0.9, 4: 0.3}, {1, 3}),
        ("max", {1: 0.5, 2: 0.1, 3: 0.9, 4: 0.3}, {2, 4}),
        ("min", {1: 0.5, 2: None, 3: 0.4}, {1}),  # missing: not judged; ceil(2/2) = 1 survives
        ("min", {1: 0.2, 2: 0.2, 3: 0.2, 4: 0.2}, {3, 4}),  # ties go to the smaller id
        ("min", {7: 1.0}, set()),
    ],
)
def test_sh_first_rung(mode: str, vals: dict[int, float | None], pruned: set[int]) -> None:
    sh = SuccessiveHalving(mode=mode)
    assert sh.decide(report_all(sh, 1, vals)) == pruned


@given(
    st.dictionaries(st.integers(0, 50), maybe_values, min_size=1, max_size=20),
    st.integers(2, 4),
    st.integers(1, 3),
    modes,
)
def test_sh_keeps_ceil_n_over_eta_best(
    vals: dict[int, float | None], eta: int, min_chunks: int, mode: str
) -> None:
    sh = SuccessiveHalving(eta=eta, min_chunks=min_chunks, mode=mode)
    live = report_all(sh, min_chunks, vals)
    pruned = sh.decide(live)
    valued = {r: v for r, v in vals.items() if v is not None}
    survivors = set(valued) - pruned
    assert pruned <= set(valued)  # never on a missing value
    assert len(survivors) == math.ceil(len(valued) / eta)
    if pruned:
        worst_kept = max(score(valued[r], mode) for r in survivors)
        assert all(score(valued[r], mode) >= worst_kept for r in pruned)
    assert sh.decide(live) == set()  # idempotent
    assert round_trip(sh).decide(live) == set()


def test_sh_waits_for_every_live_run_before_resolving() -> None:
    sh = SuccessiveHalving(eta=2, mode="min")
    sh.record(1, 1, 0.9)
    live = {1: 1, 2: 0, 3: 0}
    assert sh.decide(live) == set()
    assert not sh.may_advance(1, 1, live)  # held at the rung
    assert sh.may_advance(2, 0, live)
    sh.record(2, 1, 0.1)
    sh.record(3, 1, 0.5)
    live = {1: 1, 2: 1, 3: 1}
    assert sh.decide(live) == {1}
    assert sh.may_advance(2, 1, {2: 1, 3: 1})


def test_sh_between_rungs_runs_advance_freely() -> None:
    sh = SuccessiveHalving(eta=2, min_chunks=2, mode="min")
    live = {1: 1, 2: 0}
    assert sh.may_advance(1, 1, live)  # chunk 1 is no rung
    assert not sh.may_advance(1, 2, {1: 2, 2: 1})
    assert sh.may_advance(1, 2, {1: 2, 2: 2})  # nobody below: free (decide resolves it)


def test_sh_completed_run_does_not_block_a_rung() -> None:
    sh = SuccessiveHalving(eta=2, mode="min")
    report_all(sh, 1, {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert sh.decide({1: 1, 2: 1, 3: 1, 4: 1}) == {3, 4}
    sh.record(1, 2, 0.05)
    # Run 2 completed after one more chunk without reaching rung 2 as a live run.
    assert sh.decide({1: 2}) == set()


def test_sh_resolves_successive_rungs() -> None:
    sh = SuccessiveHalving(eta=2, mode="max")  # rungs at chunks 1, 2, 4
    assert sh.decide(report_all(sh, 1, {r: float(r) for r in range(8)})) == {0, 1, 2, 3}
    assert sh.decide(report_all(sh, 2, {4: 4.0, 5: 1.0, 6: 3.0, 7: 2.0})) == {5, 7}
    assert sh.decide(report_all(sh, 3, {4: 0.0, 6: 9.0})) == set()  # chunk 3 is no rung
    assert sh.decide(report_all(sh, 4, {4: 5.0, 6: 1.0})) == {6}


def test_sh_rung_two_halves_again() -> None:
    sh = SuccessiveHalving(eta=2, mode="min")
    sh.decide(report_all(sh, 1, {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}))
    assert sh.decide(report_all(sh, 2, {1: 0.5, 2: 0.3})) == {1}


def test_sh_late_joiner_is_judged_against_the_rung_record() -> None:
    sh = SuccessiveHalving(eta=2, mode="min")
    assert sh.decide(report_all(sh, 1, {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})) == {3, 4}
    # A clone (run 5) joins; runs 1 and 2 wait at rung 2 until it catches up.
    assert not sh.may_advance(1, 2, {1: 2, 2: 2, 5: 0})
    assert sh.may_advance(5, 1, {1: 2, 2: 2, 5: 1})  # rung 1 is resolved
    sh.record(5, 1, 0.35)  # 4th of 5 at rung 1: outside the best ceil(5/2) = 3
    assert sh.decide({1: 2, 2: 2, 5: 1}) == {5}
    assert sh.decide({1: 2, 2: 2, 5: 1}) == set()


def test_sh_good_late_joiner_survives_and_takes_part_in_the_next_rung() -> None:
    sh = SuccessiveHalving(eta=2, mode="min")
    sh.decide(report_all(sh, 1, {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}))
    sh.record(5, 1, 0.15)
    assert sh.decide({1: 1, 2: 1, 5: 1}) == set()
    assert sh.decide(report_all(sh, 2, {1: 0.3, 2: 0.1, 5: 0.2})) == {1}


def test_sh_resumed_run_is_not_pruned_twice_at_the_same_rung() -> None:
    sh = SuccessiveHalving(eta=2, mode="min")
    assert sh.decide(report_all(sh, 1, {1: 0.1, 2: 0.9})) == {2}
    live = {1: 1, 2: 1}  # a person resumed run 2
    assert sh.decide(live) == set()
    assert sh.may_advance(2, 1, live)


def test_sh_holds_then_releases_all_runs_in_a_full_simulation() -> None:
    sh = SuccessiveHalving(eta=3, mode="min")
    total_chunks, loss = 9, {r: 1.0 + r / 10 for r in range(9)}
    live = dict.fromkeys(loss, 0)
    survivors_at: dict[int, int] = {}
    while live:
        free = {r: c for r, c in live.items() if sh.may_advance(r, c, live)}
        run = next_run(free)
        assert run is not None, "pruner deadlocked the schedule"
        live[run] += 1
        sh.record(run, live[run], loss[run] / live[run])
        for pruned in sh.decide(live):
            del live[pruned]
        for r in [r for r, c in live.items() if c == total_chunks]:
            del live[r]
        for c in {1, 3, 9}:
            if all(done >= c for done in live.values()) and c not in survivors_at:
                survivors_at[c] = len(live)
    assert survivors_at[1] == 3
    assert survivors_at[3] == 1


# ASHA ------------------------------------------------------------------------------------------


def test_asha_judges_each_report_on_arrival() -> None:
    asha = ASHA(eta=2, mode="min")
    asha.record(1, 1, 0.5)  # alone: promoted
    asha.record(2, 1, 0.7)  # 2nd of 2, keep 1: pruned
    asha.record(3, 1, 0.1)  # best of 3: promoted
    live = {1: 1, 2: 1, 3: 1}
    assert all(asha.may_advance(r, c, live) for r, c in live.items())
    assert asha.decide(live) == {2}
    assert asha.decide(live) == set()


def test_asha_ignores_chunks_between_rungs() -> None:
    asha = ASHA(eta=2, min_chunks=2, mode="min")
    asha.record(1, 1, 0.1)
    asha.record(2, 1, 0.9)
    asha.record(1, 3, 0.1)
    asha.record(2, 3, 0.9)
    assert asha.decide({1: 3, 2: 3}) == set()


@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(1, 8), values), max_size=60),
    st.integers(2, 4),
    modes,
)
def test_asha_never_prunes_the_best_at_a_rung_so_far(
    reports: list[tuple[int, int, float]], eta: int, mode: str
) -> None:
    asha = ASHA(eta=eta, mode=mode)
    seen: dict[int, dict[int, float]] = {}
    must_keep: set[int] = set()
    for run_id, chunk, value in reports:
        if (run_id, chunk) in {(r, c) for c, rs in seen.items() for r in rs}:
            continue  # a re-report is not judged again
        at_rung = seen.setdefault(chunk, {})
        at_rung[run_id] = value
        best = min(at_rung, key=lambda r: (score(at_rung[r], mode), r))
        if asha.is_rung(chunk) and best == run_id:
            must_keep.add(run_id)
        asha.record(run_id, chunk, value)
        live = dict.fromkeys(range(21), 1)
        pruned = asha.decide(live)
        assert not pruned & must_keep
        assert pruned <= set(live)
        must_keep.clear()


# Threshold and median --------------------------------------------------------------------------


def test_threshold_needs_patience_bad_chunks_in_a_row() -> None:
    rule = ThresholdPruner(bound=1.0, patience=2, mode="min")
    rule.record(1, 1, 2.0)
    assert rule.decide({1: 1}) == set()
    rule.record(1, 2, 0.5)
    rule.record(1, 3, 3.0)
    assert rule.decide({1: 3}) == set()
    rule.record(1, 4, None)  # missing: skipped, neither against the run nor breaking the streak
    assert rule.decide({1: 4}) == set()
    rule.record(1, 5, 3.0)
    assert rule.decide({1: 5}) == {1}
    assert rule.decide({1: 5}) == set()
    rule.record(1, 6, 4.0)  # resumed: the streak starts again
    assert rule.decide({1: 6}) == set()
    rule.record(1, 7, 4.0)
    assert rule.decide({1: 7}) == {1}


@pytest.mark.parametrize(("mode", "value", "pruned"), [("max", 0.4, {1}), ("max", 0.6, set())])
def test_threshold_max_mode(mode: str, value: float, pruned: set[int]) -> None:
    rule = ThresholdPruner(bound=0.5, mode=mode)
    rule.record(1, 1, value)
    assert rule.decide({1: 1}) == pruned


def test_median_stopping() -> None:
    rule = MedianStopping(min_chunks=2, mode="min")
    report_all(rule, 1, {1: 0.1, 2: 0.2, 3: 9.0})
    assert rule.decide({1: 1, 2: 1, 3: 1}) == set()  # before min_chunks
    live = report_all(rule, 2, {1: 0.1, 2: 0.2})
    assert rule.decide(live | {3: 1}) == set()  # run 3 not at chunk 2 yet; others need >= 2
    rule.record(3, 2, 5.0)
    live = {1: 2, 2: 2, 3: 2}
    assert rule.decide(live) == {3}
    assert rule.decide(live) == set()


def test_median_uses_the_runs_best_value_so_far() -> None:
    rule = MedianStopping(min_chunks=1, mode="max")
    report_all(rule, 1, {1: 0.9, 2: 0.1, 3: 0.1})
    live = report_all(rule, 2, {1: 0.2, 2: 0.3, 3: 0.6})
    # Run 1's latest value is the worst, but its best (0.9) beats the median (0.45) of the
    # others; run 2's best (0.3) is below the median (0.4) of 0.2 and 0.6.
    assert rule.decide(live) == {2}


# Common behaviour ------------------------------------------------------------------------------


def make_all(mode: str | None = "min") -> list[Pruner]:
    return [
        SuccessiveHalving(eta=2, mode=mode),
        ASHA(eta=3, min_chunks=2, mode=mode),
        NoPruning(mode=mode),
        ThresholdPruner(bound=0.5, patience=2, mode=mode),
        MedianStopping(min_chunks=1, mode=mode),
    ]


@given(
    st.lists(st.tuples(st.integers(0, 6), maybe_values), max_size=40),
    st.sampled_from(range(5)),
    modes,
)
def test_round_trip_preserves_decisions_and_pruned_within_live(
    reports: list[tuple[int, float | None]], which: int, mode: str
) -> None:
    pruner = make_all(mode)[which]
    twin = round_trip(pruner)
    done: dict[int, int] = {}
    for run_id, value in reports:
        done[run_id] = done.get(run_id, 0) + 1
        for p in (pruner, twin):
            p.record(run_id, done[run_id], value)
        live = {r: c for r, c in done.items() if r % 3}  # some runs have left
        expected = pruner.decide(live)
        assert expected <= set(live)
        assert twin.decide(live) == expected
        twin = round_trip(twin)
        assert pruner.decide(live) == set()  # idempotent
        assert twin.decide(live) == set()
        assert all(
            pruner.may_advance(r, c, live) == twin.may_advance(r, c, live) for r, c in live.items()
        )
    assert json.loads(json.dumps(twin.to_dict())) == pruner.to_dict()


@given(
    st.lists(st.tuples(st.integers(1, 6), maybe_values), max_size=40),
    st.sampled_from(range(5)),
    modes,
)
def test_no_pruner_prunes_a_run_on_a_missing_value(
    reports: list[tuple[int, float | None]], which: int, mode: str
) -> None:
    """Run 0 never reports the metric: whatever the others report, no pruner prunes it."""
    pruner = make_all(mode)[which]
    done: dict[int, int] = {0: 0}
    for run_id, value in reports:
        for rid, val in ((run_id, value), (0, None)):
            done[rid] = done.get(rid, 0) + 1
            pruner.record(rid, done[rid], val)
            assert 0 not in pruner.decide(dict(done))


def test_nan_counts_as_worst() -> None:
    sh = SuccessiveHalving(mode="max")
    assert sh.decide(report_all(sh, 1, {1: math.nan, 2: -1e9})) == {1}


def test_no_pruning_never_prunes_or_holds() -> None:
    rule = NoPruning()
    live = report_all(rule, 1, {1: None, 2: 5.0})
    assert rule.decide(live) == set()
    assert rule.may_advance(1, 1, {1: 1, 2: 0})


def test_with_defaults_fills_only_missing_fields() -> None:
    filled = SuccessiveHalving(eta=3).with_defaults("eval_loss", "min")
    assert isinstance(filled, SuccessiveHalving)
    assert (filled.metric, filled.mode, filled.eta) == ("eval_loss", "min", 3)
    kept = ASHA(metric="reward", mode="max").with_defaults("eval_loss", "min")
    assert (kept.metric, kept.mode) == ("reward", "max")


def test_recording_without_a_mode_asks_for_one() -> None:
    with pytest.raises(ConfigError, match="mode=None"):
        SuccessiveHalving().record(1, 1, 0.5)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SuccessiveHalving(eta=1), "eta=1"),
        (lambda: ASHA(eta=2.5), "eta=2.5"),
        (lambda: SuccessiveHalving(min_chunks=0), "min_chunks=0"),
        (lambda: ASHA(mode="best"), "mode='best'"),
        (lambda: ThresholdPruner(bound=1.0, patience=0), "patience=0"),
        (lambda: ThresholdPruner(bound=math.nan), "bound=nan"),
        (lambda: MedianStopping(min_chunks=0), "min_chunks=0"),
        (lambda: pruner_from_dict({"type": "hyperband"}), "type='hyperband'"),
        (lambda: SuccessiveHalving(mode="min").record(1, 0, 1.0), "chunk=0"),
        (lambda: SuccessiveHalving(mode="min").record(1, 1, "low"), "value='low'"),
        (lambda: SuccessiveHalving(mode="min").decide({1: -1}), "chunks_done of run 1"),
    ],
)
def test_bad_arguments_raise_config_error(make: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make()  # type: ignore[operator]
