"""Online aggregation: confidence intervals on metrics of the shards seen so far
(``policies.intervals``), checked against hand-computed values and by properties."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies import OnlineStrategy, add_intervals
from policies.errors import ConfigError
from policies.intervals import flat_metrics, mean_interval

NORMAL = OnlineStrategy("normal", 0.95, use_fpc=False)


def test_normal_interval_of_a_proportion_is_the_textbook_one() -> None:
    low, high = mean_interval(0.5, 100, (0.0, 1.0), NORMAL)
    # 1.959964 * sqrt(0.25 / 100)
    assert low == pytest.approx(0.5 - 0.0979982, abs=1e-6)
    assert high == pytest.approx(0.5 + 0.0979982, abs=1e-6)


def test_fpc_shrinks_and_closes_at_the_whole_set() -> None:
    fpc = OnlineStrategy("normal", 0.95, use_fpc=True)
    wide = mean_interval(0.5, 50, (0.0, 1.0), NORMAL)
    narrow = mean_interval(0.5, 50, (0.0, 1.0), fpc, population=100)
    assert narrow[1] - narrow[0] == pytest.approx((wide[1] - wide[0]) * math.sqrt(50 / 99))
    assert mean_interval(0.3, 100, (0.0, 1.0), fpc, population=100) == (0.3, 0.3)


def test_estimate_at_a_bound_has_no_spread_except_under_wilson() -> None:
    assert mean_interval(1.0, 3, (0.0, 1.0), NORMAL) == (1.0, 1.0)
    low, high = mean_interval(0.0, 12, (0.0, 1.0), OnlineStrategy("wilson", 0.95, False))
    z2 = 1.959964**2
    assert low == 0.0
    assert high == pytest.approx(z2 / (12 + z2), rel=1e-5)


def test_wilson_and_hoeffding_differ_from_normal_as_expected() -> None:
    n = 20
    normal = mean_interval(0.1, n, (0.0, 1.0), NORMAL)
    wilson = mean_interval(0.1, n, (0.0, 1.0), OnlineStrategy("wilson", 0.95, False))
    hoeff = mean_interval(0.1, n, (0.0, 1.0), OnlineStrategy("hoeffding", 0.95, False))
    assert normal[0] == 0.0  # clipped at the range
    assert wilson[0] > 0.0  # Wilson's interval stays inside (0, 1) without clipping
    assert hoeff[1] - hoeff[0] > normal[1] - normal[0]  # distribution-free: wider


def test_add_intervals_reports_as_rapidfire_and_scales_distributive_metrics() -> None:
    metrics = {
        "Total": {"value": 40},
        "Precision": {"value": 0.5, "is_algebraic": True, "value_range": (0, 1)},
        "Hits": {"value": 10, "is_distributive": True, "value_range": (0, 1)},
        "note": "kept",
    }
    out = add_intervals(metrics, n=40, strategy=NORMAL, population=200)
    assert out["Total"] == {"value": 40}
    assert out["note"] == "kept"
    p = out["Precision"]
    assert p["lower_bound"] < 0.5 < p["upper_bound"]
    assert p["margin_of_error"] == pytest.approx((p["upper_bound"] - p["lower_bound"]) / 2)
    assert p["ci_method"] == "normal"
    assert p["confidence_level"] == 0.95
    hits = out["Hits"]
    assert hits["value"] == pytest.approx(50.0)  # 10 of 40 seen -> 50 of 200
    assert hits["lower_bound"] < 50 < hits["upper_bound"] <= 200
    assert metrics["Precision"] == {"value": 0.5, "is_algebraic": True, "value_range": (0, 1)}
    flat = flat_metrics(out)
    assert flat["Precision/lower"] == p["lower_bound"]
    assert "note" not in flat


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy_name": "bayes"},
        {"confidence_level": 1.5},
        {"use_fpc": "yes"},
        {"confidence": 0.9},
    ],
)
def test_bad_strategy_settings_are_refused_by_name(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        OnlineStrategy.from_kwargs(kwargs)


def test_bad_value_range_names_the_metric() -> None:
    with pytest.raises(ConfigError, match="'F1'"):
        add_intervals(
            {"F1": {"value": 0.2, "is_algebraic": True, "value_range": (1, 0)}}, 5, NORMAL
        )


@given(
    st.sampled_from(["normal", "wilson", "hoeffding"]),
    st.floats(0.0, 1.0),
    st.integers(1, 500),
    st.booleans(),
)
def test_interval_holds_the_estimate_and_stays_in_range(
    name: str, p: float, n: int, fpc: bool
) -> None:
    strategy = OnlineStrategy(name, 0.9, fpc)
    low, high = mean_interval(p, n, (0.0, 1.0), strategy, population=1000)
    assert 0.0 <= low <= high <= 1.0
    assert low - 1e-12 <= p <= high + 1e-12 or name == "wilson"


def test_normal_interval_covers_the_true_mean_about_as_often_as_it_says() -> None:
    # 400 draws of a 30-sample mean of a Bernoulli(0.4): a 90 % interval should cover 0.4 in
    # roughly 90 % of them (binomial noise allowed).
    rng = random.Random(0)
    strategy = OnlineStrategy("wilson", 0.9, use_fpc=False)
    covered = 0
    for _ in range(400):
        mean = sum(rng.random() < 0.4 for _ in range(30)) / 30
        low, high = mean_interval(mean, 30, (0.0, 1.0), strategy)
        covered += low <= 0.4 <= high
    assert 0.83 <= covered / 400 <= 0.96
