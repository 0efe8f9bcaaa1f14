"""Online aggregation: a metric measured on the shards seen so far, with a confidence interval.

Evals mode scores each pipeline shard by shard. After ``n`` of the eval set's ``N`` examples a
metric is an estimate of its value on all ``N``; this module gives the interval around it, as
RapidFire AI's online aggregation reports it (``value``, ``lower_bound``, ``upper_bound``,
``margin_of_error``, ``confidence_level``, ``ci_method``). A metric says what it is in the dict
the user's ``accumulate_metrics_fn`` returns:

* ``{"value": v, "is_algebraic": True, "value_range": (a, b)}``: a mean of per-example values in
  ``[a, b]`` (precision, exact match). Its interval is around ``v``.
* ``{"value": v, "is_distributive": True, "value_range": (a, b)}``: a sum over the examples seen
  (a count of hits). Its estimate is scaled to the whole set, ``N * v / n``, and so is its
  interval.
* anything else (a count of samples, a string) is passed through untouched.

Strategies (``strategy=``):

* ``"normal"``: the normal approximation. Standard error ``sqrt(p (1 - p) / n)`` for a proportion
  (range ``(0, 1)``), else ``(b - a) / sqrt(12 n)`` (the spread of a uniform value in ``[a, b]``:
  a conservative guess when nothing else is known); times ``z`` of the confidence level.
* ``"wilson"``: Wilson's score interval for proportions (better than the normal one near 0 and
  1 and for small ``n``); other ranges fall back to ``"normal"``.
* ``"hoeffding"``: Hoeffding's bound ``(b - a) sqrt(ln(2 / alpha) / 2n)``: distribution-free, wider.

With ``use_fpc`` (the default) the finite-population correction ``sqrt((N - n) / (N - 1))``
shrinks the error as the shards cover the set; at ``n = N`` the interval is the point. An
estimate at a bound of its range (every answer right) has no spread to estimate: its interval
is the point too, as in RapidFire, except under ``"wilson"``: Wilson's interval is defined at 0
and 1 (``[0, z^2 / (n + z^2)]`` at 0), so 0 of 12 right is not taken as certainly 0 (RapidFire
collapses it to the point, which makes a pruner on intervals overconfident after one shard).
Intervals are clipped to the range.

Pure: no numpy or scipy (``statistics.NormalDist`` gives ``z``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from policies.errors import ConfigError

STRATEGIES = ("normal", "wilson", "hoeffding")


@dataclass(frozen=True)
class OnlineStrategy:
    """How intervals are computed: RapidFire's ``online_strategy_kwargs``
    (``{"strategy_name": "normal", "confidence_level": 0.95, "use_fpc": True}``)."""

    strategy_name: str = "normal"
    """One of ``"normal"``, ``"wilson"``, ``"hoeffding"``."""
    confidence_level: float = 0.95
    """Probability that the interval holds the metric's value on the whole set, in (0, 1)."""
    use_fpc: bool = True
    """Apply the finite-population correction (the eval set is finite and sampled without
    replacement)."""

    def __post_init__(self) -> None:
        if self.strategy_name not in STRATEGIES:
            raise ConfigError(
                f"online_strategy_kwargs strategy_name={self.strategy_name!r} is not one of "
                f"{', '.join(repr(s) for s in STRATEGIES)}"
            )
        level = self.confidence_level
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ConfigError(
                f"online_strategy_kwargs confidence_level={level!r} must be a number in (0, 1), "
                "e.g. 0.95"
            )
        if not isinstance(self.use_fpc, bool):
            raise ConfigError(f"online_strategy_kwargs use_fpc={self.use_fpc!r} must be a bool")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any] | None) -> OnlineStrategy:
        """From RapidFire's ``online_strategy_kwargs`` dict (None: the defaults)."""
        if kwargs is None:
            return cls()
        if not isinstance(kwargs, Mapping):
            raise ConfigError(
                f"online_strategy_kwargs must be a dict such as {{'strategy_name': 'normal', "
                f"'confidence_level': 0.95, 'use_fpc': True}}, got {kwargs!r}"
            )
        unknown = set(kwargs) - {"strategy_name", "confidence_level", "use_fpc"}
        if unknown:
            raise ConfigError(
                f"online_strategy_kwargs has unknown keys {sorted(unknown)}; the keys are "
                "strategy_name, confidence_level and use_fpc"
            )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy_name": self.strategy_name,
            "confidence_level": self.confidence_level,
            "use_fpc": self.use_fpc,
        }


def _range(value_range: Any, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ConfigError(
            f"metric {name!r}: value_range={value_range!r} must be a pair (min, max) of numbers"
        ) from None
    if not low < high:
        raise ConfigError(f"metric {name!r}: value_range={value_range!r} needs min < max")
    return low, high


def _fpc(n: int, population: int | None, use_fpc: bool) -> float:
    """The finite-population factor on a standard error (1: none)."""
    if not use_fpc or not population or population <= 1:
        return 1.0
    if n >= population:
        return 0.0
    return math.sqrt((population - n) / (population - 1))


def mean_interval(
    mean: float,
    n: int,
    value_range: tuple[float, float],
    strategy: OnlineStrategy,
    population: int | None = None,
) -> tuple[float, float]:
    """(lower, upper) of a mean of ``n`` values in ``value_range``, seen out of
    ``population``."""
    low, high = value_range
    if n <= 0:
        return low, high
    proportion = (low, high) == (0.0, 1.0)
    wilson = strategy.strategy_name == "wilson" and proportion
    if (mean <= low or mean >= high) and not wilson:
        return mean, mean  # no spread to estimate (RapidFire's rule)
    fpc = _fpc(n, population, strategy.use_fpc)
    alpha = 1 - strategy.confidence_level
    z = NormalDist().inv_cdf(1 - alpha / 2)
    if strategy.strategy_name == "hoeffding":
        margin = (high - low) * math.sqrt(math.log(2 / alpha) / (2 * n)) * fpc
        return max(low, mean - margin), min(high, mean + margin)
    if wilson:
        if fpc == 0.0:
            return mean, mean
        eff = n / fpc**2  # the corrected sample counts as this many draws with replacement
        denom = 1 + z * z / eff
        center = (mean + z * z / (2 * eff)) / denom
        half = z * math.sqrt(mean * (1 - mean) / eff + z * z / (4 * eff * eff)) / denom
        return max(0.0, center - half), min(1.0, center + half)
    stderr = math.sqrt(mean * (1 - mean) / n) if proportion else (high - low) / math.sqrt(12 * n)
    margin = z * stderr * fpc
    return max(low, mean - margin), min(high, mean + margin)


def add_intervals(
    metrics: Mapping[str, Any],
    n: int,
    strategy: OnlineStrategy,
    population: int | None = None,
) -> dict[str, Any]:
    """``metrics`` (``accumulate_metrics_fn``'s output after ``n`` examples) with an interval on
    each algebraic and distributive metric; the others as they were. New dicts: the input is
    not changed."""
    out: dict[str, Any] = {}
    for name, data in metrics.items():
        if not isinstance(data, Mapping):
            out[name] = data
            continue
        entry = dict(data)
        algebraic, distributive = (
            bool(entry.get("is_algebraic")),
            bool(entry.get("is_distributive")),
        )
        if not (algebraic or distributive) or n <= 0:
            out[name] = entry
            continue
        low, high = _range(entry.get("value_range", (0, 1)), name)
        value = float(entry.get("value", 0.0))
        scale = 1.0
        if distributive:
            scale = float(population) if population else float(n)
            value = value / n  # the per-example mean of the sum
        lower, upper = mean_interval(value, n, (low, high), strategy, population)
        entry.update(
            value=value * scale,
            lower_bound=lower * scale,
            upper_bound=upper * scale,
            margin_of_error=(upper - lower) * scale / 2,
            confidence_level=strategy.confidence_level,
            ci_method=strategy.strategy_name,
        )
        out[name] = entry
    return out


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numbers of ``add_intervals``'s output, flat for a store or MLflow: ``name`` (the value),
    ``name/lower``, ``name/upper``; non-numeric values are left out."""
    flat: dict[str, float] = {}
    for name, data in metrics.items():
        value = data.get("value") if isinstance(data, Mapping) else data
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        flat[name] = float(value)
        if isinstance(data, Mapping) and "lower_bound" in data:
            flat[f"{name}/lower"] = float(data["lower_bound"])
            flat[f"{name}/upper"] = float(data["upper_bound"])
    return flat


__all__ = ["STRATEGIES", "OnlineStrategy", "add_intervals", "flat_metrics", "mean_interval"]
