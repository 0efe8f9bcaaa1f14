"""Argument checks shared by the policies modules; a failure is a ConfigError naming the field."""

from __future__ import annotations

from collections.abc import Mapping

from policies.errors import ConfigError


def check_int(name: str, value: object, minimum: int | None = None) -> None:
    """Raise ConfigError unless ``value`` is an int (not a bool) and ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {name}={value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {name}={value}")


def check_live(live: Mapping[int, int]) -> None:
    """Raise ConfigError unless ``live`` maps int run ids to chunk counts >= 0."""
    for run_id, done in live.items():
        check_int("run_id", run_id)
        check_int(f"chunks_done of run {run_id}", done, minimum=0)


def clean_value(value: object) -> float | None:
    """A metric value as a float (NaN stays NaN: a diverged run's value), or None (missing)."""
    if value is None:
        return None
    if isinstance(value, (bool, str, bytes)):
        raise ConfigError(f"value must be a number or None, got value={value!r}")
    try:
        return float(value)  # type: ignore[arg-type]  # also numpy/torch scalars
    except (TypeError, ValueError):
        raise ConfigError(f"value must be a number or None, got value={value!r}") from None
